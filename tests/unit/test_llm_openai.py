"""OpenAICompatibleLLM against a real scripted chat-completions server on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from parley.engines.errors import EngineError
from parley.core.chat import ChatRequest
from parley.engines.llm import Finished, LLMEngine, LLMEvent, TextDelta, ToolCallDelta
from parley.engines.llm_openai import OpenAICompatibleLLM
from tests.support.scripted_llm import (
    CutMidStream,
    Hang,
    HTTPError,
    Malformed,
    ScriptedLLMServer,
    Text,
    ToolCall,
    ToolCalls,
)

MODEL = "test-model"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def user(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as srv:
        yield srv


@pytest.fixture
def llm_server(server: ScriptedLLMServer) -> ScriptedLLMServer:
    server.clear()
    return server


@pytest.fixture
async def engine(llm_server: ScriptedLLMServer) -> AsyncIterator[OpenAICompatibleLLM]:
    eng = OpenAICompatibleLLM(llm_server.base_url, MODEL, api_key="sk-secret-123", timeout_s=5, max_retries=0)
    yield eng
    await eng.aclose()


async def collect(engine: OpenAICompatibleLLM, request: ChatRequest) -> list[LLMEvent]:
    return [event async for event in engine.stream(request)]


async def collect_until_error(engine: OpenAICompatibleLLM, request: ChatRequest) -> tuple[list[LLMEvent], EngineError]:
    events: list[LLMEvent] = []
    with pytest.raises(EngineError) as info:
        async for event in engine.stream(request):
            events.append(event)
    return events, info.value


def text_of(events: list[LLMEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def tool_calls_of(events: list[LLMEvent]) -> dict[int, dict[str, str | None]]:
    calls: dict[int, dict[str, str | None]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            slot = calls.setdefault(e.index, {"id": None, "name": None, "arguments": ""})
            slot["id"] = slot["id"] or e.id
            slot["name"] = slot["name"] or e.name
            slot["arguments"] = (slot["arguments"] or "") + e.arguments
    return calls


# --- happy paths -----------------------------------------------------------------------------


async def test_implements_the_engine_protocol(engine: OpenAICompatibleLLM) -> None:
    assert isinstance(engine, LLMEngine)
    assert engine.name == "openai"
    assert "sk-secret-123" not in repr(engine)


async def test_streams_text_in_deltas(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(Text("Hello there, how are you today?", chunk_size=3))
    events = await collect(engine, ChatRequest(messages=[{"role": "user", "content": "hi"}], model="gpt-realtime"))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 5
    assert text_of(events) == "Hello there, how are you today?"
    assert events[-1] == Finished(reason="stop", usage=events[-1].usage)
    assert sum(isinstance(e, Finished) for e in events) == 1

    (body,) = llm_server.requests
    assert body["model"] == MODEL  # the realtime alias in the request is ignored
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    for absent in ("tools", "tool_choice", "max_tokens", "temperature"):
        assert absent not in body


async def test_default_reply_echoes_last_user_message(engine: OpenAICompatibleLLM) -> None:
    request = ChatRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "what time is it"}]},
        ]
    )
    assert text_of(await collect(engine, request)) == "You said: what time is it"


async def test_usage_is_reported(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(Text("one two three four"))
    events = await collect(engine, user("count for me please"))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.usage is not None
    assert finished.usage.input_tokens == 4
    assert finished.usage.output_tokens == 4


async def test_max_tokens_finishes_with_length(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(Text("one two three four five six seven"))
    request = ChatRequest(messages=[{"role": "user", "content": "count"}], max_tokens=3, temperature=0.2)
    events = await collect(engine, request)
    assert text_of(events) == "one two three"
    assert isinstance(events[-1], Finished) and events[-1].reason == "length"
    assert events[-1].usage is not None and events[-1].usage.output_tokens == 3
    body = llm_server.requests[-1]
    assert body["max_tokens"] == 3
    assert body["temperature"] == 0.2


async def test_tool_call_with_streamed_arguments(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, call_id="call_abc", chunk_size=5))
    request = ChatRequest(messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], tool_choice="auto")
    events = await collect(engine, request)

    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].id == "call_abc" and deltas[0].name == "get_weather"
    assert len(deltas) > 3  # arguments arrive in fragments
    assert all(d.name is None for d in deltas[1:])
    (call,) = tool_calls_of(events).values()
    assert json.loads(call["arguments"] or "") == {"city": "Paris", "unit": "celsius"}
    assert isinstance(events[-1], Finished) and events[-1].reason == "tool_calls"

    body = llm_server.requests[-1]
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == "auto"


async def test_tool_choice_is_omitted_without_tools(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    await collect(engine, ChatRequest(messages=[{"role": "user", "content": "x"}], tool_choice="required"))
    assert "tool_choice" not in llm_server.requests[-1]
    assert "tools" not in llm_server.requests[-1]


async def test_multiple_tool_calls(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(
        ToolCalls(
            [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", '{"city": "Oslo"}', call_id="c2")],
            text="Let me check.",
        )
    )
    request = ChatRequest(messages=[{"role": "user", "content": "two cities"}], tools=[WEATHER_TOOL])
    events = await collect(engine, request)
    assert text_of(events) == "Let me check."
    calls = tool_calls_of(events)
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] and calls[0]["id"].startswith("call_")
    assert calls[1]["id"] == "c2"
    assert [json.loads(calls[i]["arguments"] or "") for i in (0, 1)] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert isinstance(events[-1], Finished) and events[-1].reason == "tool_calls"


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (404, False)])
async def test_http_errors(
    engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer, status: int, retryable: bool
) -> None:
    llm_server.enqueue(HTTPError(status, {"error": {"message": "scripted failure", "type": "x"}}))
    events, error = await collect_until_error(engine, user("hi"))
    assert events == []
    assert error.code == f"llm_http_{status}"
    assert error.retryable is retryable
    assert "scripted failure" in error.message
    assert llm_server.base_url in error.message and MODEL in error.message
    assert "sk-secret-123" not in error.message


async def test_http_error_with_plain_text_body(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(HTTPError(502, "Bad Gateway"))
    _, error = await collect_until_error(engine, user("hi"))
    assert error.code == "llm_http_502" and error.retryable


async def test_client_retries_5xx_before_the_stream(llm_server: ScriptedLLMServer) -> None:
    engine = OpenAICompatibleLLM(llm_server.base_url, MODEL, timeout_s=5, max_retries=1)
    try:
        llm_server.enqueue(HTTPError(503, headers={"retry-after-ms": "10"}), Text("recovered"))
        assert text_of(await collect(engine, user("hi"))) == "recovered"
        assert len(llm_server.requests) == 2
    finally:
        await engine.aclose()


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:  # find a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = OpenAICompatibleLLM(f"http://127.0.0.1:{port}/v1", MODEL, timeout_s=2, max_retries=0)
    try:
        _, error = await collect_until_error(engine, user("hi"))
    finally:
        await engine.aclose()
    assert error.code == "llm_unavailable"
    assert error.retryable
    assert f"127.0.0.1:{port}" in error.message


async def test_malformed_stream(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(Malformed())
    _, error = await collect_until_error(engine, user("hi"))
    assert error.code == "llm_bad_stream"
    assert not error.retryable


async def test_cut_mid_stream(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(CutMidStream("these words arrive and then nothing"))
    events, error = await collect_until_error(engine, user("hi"))
    assert text_of(events) == "these words arrive and then nothing"
    assert not any(isinstance(e, Finished) for e in events)
    assert error.code == "llm_stream_interrupted"
    assert error.retryable


async def test_stream_without_finish_reason(engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer) -> None:
    llm_server.enqueue(Text("no ending", finish_reason=None))
    events, error = await collect_until_error(engine, user("hi"))
    assert text_of(events) == "no ending"
    assert error.code == "llm_stream_incomplete"


async def test_hang_before_headers_times_out(llm_server: ScriptedLLMServer) -> None:
    engine = OpenAICompatibleLLM(llm_server.base_url, MODEL, timeout_s=0.3, max_retries=0)
    llm_server.enqueue(Hang(5))
    started = time.monotonic()
    try:
        _, error = await collect_until_error(engine, user("hi"))
    finally:
        await engine.aclose()
    assert time.monotonic() - started < 2
    assert error.code == "llm_timeout"
    assert error.retryable


async def test_hang_mid_stream_times_out(llm_server: ScriptedLLMServer) -> None:
    engine = OpenAICompatibleLLM(llm_server.base_url, MODEL, timeout_s=0.3, max_retries=0)
    llm_server.enqueue(Hang(5, after_text="partial answer"))
    try:
        events, error = await collect_until_error(engine, user("hi"))
    finally:
        await engine.aclose()
    assert text_of(events) == "partial answer"
    assert error.code == "llm_timeout"


# --- cancellation ----------------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_stream(
    engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer
) -> None:
    llm_server.enqueue(Text("word " * 200, chunk_size=5, delay_s=0.02))
    first_delta = asyncio.Event()
    received: list[LLMEvent] = []

    async def consume() -> None:
        async for event in engine.stream(user("talk a lot")):
            received.append(event)
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(isinstance(e, Finished) for e in received)

    deadline = time.monotonic() + 2
    while llm_server.disconnects < 1:
        assert time.monotonic() < deadline, "server never saw the client go away"
        await asyncio.sleep(0.02)

    events = await collect(engine, user("still there?"))
    assert text_of(events) == "You said: still there?"
    assert isinstance(events[-1], Finished)


async def test_closing_the_generator_early_closes_the_stream(
    engine: OpenAICompatibleLLM, llm_server: ScriptedLLMServer
) -> None:
    llm_server.enqueue(Text("word " * 200, chunk_size=5, delay_s=0.02))
    stream = engine.stream(user("talk"))
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()

    deadline = time.monotonic() + 2
    while llm_server.disconnects < 1:
        assert time.monotonic() < deadline, "server never saw the client go away"
        await asyncio.sleep(0.02)
