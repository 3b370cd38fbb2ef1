"""LlamaCppLLM against a real llama.cpp with a tiny random-weight GGUF (tests/support/tiny_gguf)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from parley.engines.errors import EngineError  # noqa: E402
from parley.engines.llm import (  # noqa: E402
    ChatRequest,
    Finished,
    LLMEngine,
    TextDelta,
    ToolCallDelta,
)
from parley.engines.llm_llamacpp import LlamaCppLLM  # noqa: E402
from tests.support.tiny_gguf import write_tiny_gguf  # noqa: E402

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
async def engine(tiny_model: Path):
    llm = LlamaCppLLM(str(tiny_model), n_ctx=512, n_threads=1)
    await llm.load()
    yield llm
    await llm.aclose()


async def collect(llm: LlamaCppLLM, request: ChatRequest) -> list:
    return [event async for event in llm.stream(request)]


def test_module_imports_without_llama_cpp() -> None:
    code = (
        "import sys; import parley.engines.llm_llamacpp; "
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_load_properties(engine: LlamaCppLLM, tiny_model: Path) -> None:
    assert isinstance(engine, LLMEngine)
    assert engine.name == "llama.cpp"
    assert engine.loaded and engine.model_path == tiny_model
    assert engine.context_tokens == 512
    assert engine.count_tokens("") == 0
    assert engine.count_tokens(" hello world") == 2  # "▁hello" "▁world"
    assert engine.count_tokens("<|im_start|>") == 1
    await engine.load()  # idempotent


async def test_stream_hits_max_tokens(engine: LlamaCppLLM) -> None:
    events = await collect(engine, ChatRequest(messages=HELLO, max_tokens=8, temperature=0))
    texts = [e for e in events if isinstance(e, TextDelta)]
    assert texts and all(t.text for t in texts)
    assert sum(isinstance(e, Finished) for e in events) == 1
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.reason == "length"
    assert finished.usage is not None
    prompt = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert finished.usage.input_tokens == engine.count_tokens(prompt) > 0
    assert finished.usage.output_tokens == 8


async def test_stream_is_deterministic_and_reuses_prefix(engine: LlamaCppLLM) -> None:
    request = ChatRequest(messages=HELLO, max_tokens=6, temperature=0)
    first = await collect(engine, request)
    second = await collect(engine, request)
    text = lambda events: "".join(e.text for e in events if isinstance(e, TextDelta))  # noqa: E731
    assert text(first) == text(second) != ""
    assert second[-1].usage.cached_tokens > 0


async def test_stream_loads_on_demand(tiny_model: Path) -> None:
    llm = LlamaCppLLM(str(tiny_model), n_ctx=256, n_threads=1)
    try:
        assert not llm.loaded and llm.context_tokens == 256
        events = await collect(llm, ChatRequest(messages=HELLO, max_tokens=2, temperature=0))
        assert isinstance(events[-1], Finished) and llm.loaded
    finally:
        await llm.aclose()
    await llm.aclose()  # idempotent
    with pytest.raises(EngineError):
        await collect(llm, ChatRequest(messages=HELLO, max_tokens=2))


async def test_messages_with_none_and_list_content(engine: LlamaCppLLM) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "what time"},
    ]
    events = await collect(engine, ChatRequest(messages=messages, max_tokens=3, temperature=0))
    assert isinstance(events[-1], Finished)


async def test_missing_path_names_the_setting(tmp_path: Path) -> None:
    llm = LlamaCppLLM(str(tmp_path / "nope.gguf"))
    with pytest.raises(EngineError) as info:
        await llm.load()
    assert "PARLEY_LLM_MODEL" in info.value.message
    assert ".gguf" in info.value.message and "owner/repo:file.gguf" in info.value.message
    assert info.value.code == "model_not_found"
    await llm.aclose()


async def test_bad_file_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    llm = LlamaCppLLM(str(bad))
    with pytest.raises(EngineError) as info:
        await llm.load()
    assert "PARLEY_LLM_MODEL" in info.value.message and info.value.code == "model_load_failed"
    await llm.aclose()


@pytest.mark.parametrize(
    ("model", "filename"),
    [
        ("parley-test/nonexistent-GGUF:model-q4_k_m.gguf", None),
        ("parley-test/nonexistent-GGUF", "*q4_k_m.gguf"),
        ("parley-test/nonexistent-GGUF:Q4_K_M", None),
    ],
)
async def test_hub_id_offline_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, filename: str | None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llm = LlamaCppLLM(model, filename=filename, cache_dir=tmp_path / "hub")
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        await asyncio.wait_for(llm.load(), timeout=30)
    assert time.monotonic() - started < 10
    assert "PARLEY_LLM_MODEL" in info.value.message
    assert "HF_HUB_OFFLINE" in info.value.message
    await llm.aclose()


def _fake_hub_cache(cache: Path, repo_id: str, tiny_model: Path, filename: str) -> None:
    """huggingface-hub's cache layout: models--owner--name/{refs/main, snapshots/<sha>/file}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(tiny_model.read_bytes())


@pytest.mark.parametrize(
    ("model", "filename"),
    [
        ("parley-test/tiny-GGUF:tiny-Q8_0.gguf", None),
        ("parley-test/tiny-GGUF", "*q8_0.gguf"),
        ("parley-test/tiny-GGUF:Q8_0", None),
    ],
)
async def test_hub_id_found_in_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path, model: str, filename: str | None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "parley-test/tiny-GGUF", tiny_model, "tiny-Q8_0.gguf")
    llm = LlamaCppLLM(model, filename=filename, cache_dir=cache, n_ctx=256, n_threads=1)
    try:
        await asyncio.wait_for(llm.load(), timeout=30)
        assert llm.model_path is not None and llm.model_path.name == "tiny-Q8_0.gguf"
        events = await collect(llm, ChatRequest(messages=HELLO, max_tokens=2, temperature=0))
        assert isinstance(events[-1], Finished)
    finally:
        await llm.aclose()


async def test_cancel_mid_stream_is_prompt_and_next_request_works(tiny_model: Path) -> None:
    llm = LlamaCppLLM(str(tiny_model), n_ctx=8192, n_threads=1)
    await llm.load()
    try:
        first_text = asyncio.Event()
        seen: list = []

        async def consume() -> None:
            async for event in llm.stream(ChatRequest(messages=HELLO, max_tokens=8000, temperature=0)):
                seen.append(event)
                if isinstance(event, TextDelta):
                    first_text.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_text.wait(), timeout=10)
        generation = llm._active  # the worker's shared state (8000 tokens take ~50 s here)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5
        assert not any(isinstance(e, Finished) for e in seen)

        # The worker stops between tokens: the next request gets the model at once.
        started = time.monotonic()
        events = await asyncio.wait_for(
            collect(llm, ChatRequest(messages=HELLO, max_tokens=4, temperature=0)), timeout=10
        )
        assert time.monotonic() - started < 2
        assert isinstance(events[-1], Finished) and events[-1].reason == "length"
        assert events[-1].usage.output_tokens == 4
        assert generation is not None and generation.completion_tokens < 100
    finally:
        await llm.aclose()


async def test_cancel_during_prompt_evaluation_stops_within_a_chunk(tiny_model: Path) -> None:
    llm = LlamaCppLLM(str(tiny_model), n_ctx=8192, n_threads=1, prompt_chunk_tokens=64)
    await llm.load()
    try:
        long = [{"role": "user", "content": " hello world" * 3500}]  # ~7000 tokens: ~1 s here
        task = asyncio.create_task(collect(llm, ChatRequest(messages=long, max_tokens=1)))
        while llm._active is None or llm._active.prompt_tokens is None:
            await asyncio.sleep(0.001)
        prompt_tokens = llm._active.prompt_tokens
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        async with llm._lock:  # free once the worker has stopped
            evaluated = llm._llama.n_tokens
        assert time.monotonic() - started < 0.3
        assert 0 < evaluated < prompt_tokens
        events = await collect(llm, ChatRequest(messages=HELLO, max_tokens=2, temperature=0))
        assert events[-1].usage.output_tokens == 2
    finally:
        await llm.aclose()


async def test_aclose_mid_stream_ends_the_stream_with_an_error(tiny_model: Path) -> None:
    llm = LlamaCppLLM(str(tiny_model), n_ctx=8192, n_threads=1)
    stream = llm.stream(ChatRequest(messages=HELLO, max_tokens=8000, temperature=0))
    assert isinstance(await stream.__anext__(), TextDelta)
    closing = asyncio.create_task(llm.aclose())
    with pytest.raises(EngineError) as info:
        async for _ in stream:
            pass
    assert info.value.code == "engine_closed"
    await asyncio.wait_for(closing, timeout=5)
    assert not llm.loaded


async def test_consumer_breaking_early_frees_the_model(engine: LlamaCppLLM) -> None:
    stream = engine.stream(ChatRequest(messages=HELLO, max_tokens=400, temperature=0))
    async for event in stream:
        assert isinstance(event, TextDelta)
        break
    await stream.aclose()
    events = await asyncio.wait_for(
        collect(engine, ChatRequest(messages=HELLO, max_tokens=3, temperature=0)), timeout=10
    )
    assert events[-1].usage.output_tokens == 3


async def test_concurrent_requests_take_turns(engine: LlamaCppLLM) -> None:
    requests = [ChatRequest(messages=HELLO, max_tokens=5, temperature=0) for _ in range(3)]
    results = await asyncio.gather(*(collect(engine, r) for r in requests))
    for events in results:
        assert sum(isinstance(e, Finished) for e in events) == 1
        assert events[-1].reason == "length" and events[-1].usage.output_tokens == 5


async def test_context_overflow_is_an_engine_error(tiny_model: Path) -> None:
    llm = LlamaCppLLM(str(tiny_model), n_ctx=64, n_threads=1)
    try:
        long = " hello world" * 200  # 400 tokens; llama.cpp rounds n_ctx up to 256
        with pytest.raises(EngineError) as info:
            await collect(llm, ChatRequest(messages=[{"role": "user", "content": long}]))
        assert info.value.code == "context_length_exceeded", info.value
        # and the engine still works afterwards
        events = await collect(llm, ChatRequest(messages=HELLO, max_tokens=2, temperature=0))
        assert isinstance(events[-1], Finished)
    finally:
        await llm.aclose()


async def test_forced_tool_choice_streams_tool_call_deltas(engine: LlamaCppLLM) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                    "required": ["city"],
                },
            },
        }
    ]
    request = ChatRequest(
        messages=[{"role": "user", "content": "what is the weather in paris"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        temperature=0,
    )
    events = await collect(engine, request)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls and calls[0].name == "get_weather" and calls[0].id
    assert all(c.name is None and c.id is None for c in calls[1:])
    assert isinstance(events[-1], Finished) and events[-1].reason == "tool_calls"
