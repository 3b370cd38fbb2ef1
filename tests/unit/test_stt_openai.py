"""OpenAICompatibleSTT against a real scripted `/v1/audio/transcriptions` server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from parley.engines.errors import EngineError
from parley.engines.stt import STTEngine, Transcript, TranscriptDelta
from parley.engines.stt_openai import OpenAICompatibleSTT
from tests.support.scripted_stt import CutMidStream, Hang, HTTPError, Malformed, ScriptedSTTServer, Text

MODEL = "whisper-test"


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedSTTServer]:
    with ScriptedSTTServer() as srv:
        yield srv


@pytest.fixture
def stt_server(server: ScriptedSTTServer) -> ScriptedSTTServer:
    server.clear()
    server.streaming = "openai"
    return server


async def make(stt_server: ScriptedSTTServer, **kwargs: object) -> OpenAICompatibleSTT:
    options: dict = {"api_key": "sk-secret-123", "timeout_s": 5, "max_retries": 0, **kwargs}
    return OpenAICompatibleSTT(stt_server.base_url, MODEL, **options)


@pytest.fixture
async def engine(stt_server: ScriptedSTTServer) -> AsyncIterator[OpenAICompatibleSTT]:
    eng = await make(stt_server)
    yield eng
    await eng.aclose()


async def collect(engine: OpenAICompatibleSTT, pcm: np.ndarray, **kwargs: Any) -> tuple[list[str], Transcript]:
    events = [ev async for ev in engine.transcribe(pcm, **kwargs)]
    assert isinstance(events[-1], Transcript) and sum(isinstance(e, Transcript) for e in events) == 1
    deltas = [e.text for e in events[:-1] if isinstance(e, TranscriptDelta)]
    assert len(deltas) == len(events) - 1
    return deltas, events[-1]


def test_satisfies_the_interface(engine: OpenAICompatibleSTT) -> None:
    assert isinstance(engine, STTEngine)
    assert engine.sample_rate == 16000 and engine.streams_partials and engine.takes_any_rate
    assert "sk-secret" not in repr(engine)


async def test_plain_request_sends_wav_model_language_prompt(stt_server: ScriptedSTTServer) -> None:
    engine = await make(stt_server, stream=False)
    stt_server.enqueue(Text("Turn off the lights.", usage="tokens"))
    deltas, final = await collect(engine, tone(1.5), language="en", prompt="kitchen, lights")
    await engine.aclose()

    assert deltas == []
    assert final.text == "Turn off the lights."
    assert final.language == "en" and final.audio_seconds == pytest.approx(1.5)
    assert (final.input_tokens, final.output_tokens) == (15, 4)
    [req] = stt_server.requests
    assert (req["model"], req["language"], req["prompt"], req["stream"]) == (MODEL, "en", "kitchen, lights", None)
    assert (req["sample_rate"], req["channels"], req["sample_width"]) == (16000, 1, 2)
    assert req["audio_seconds"] == pytest.approx(1.5)
    assert req["filename"].endswith(".wav")


@pytest.mark.parametrize("rate", [24000, 8000])
async def test_audio_at_another_rate_is_sent_at_that_rate(stt_server: ScriptedSTTServer, rate: int) -> None:
    """The session's own rate (24 kHz PCM, 8 kHz G.711) goes out as it is: the WAV header says
    it, so nothing is resampled on the way."""
    engine = await make(stt_server, stream=False)
    stt_server.enqueue(Text("Hello."))
    _, final = await collect(engine, tone(1.5, rate), sample_rate=rate)
    await engine.aclose()
    [req] = stt_server.requests
    assert req["sample_rate"] == rate and req["audio_seconds"] == pytest.approx(1.5)
    assert final.audio_seconds == pytest.approx(1.5)


async def test_streams_openai_deltas(engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer) -> None:
    stt_server.enqueue(Text("what is the weather in Paris", chunk_size=5))
    deltas, final = await collect(engine, tone(1.0))
    assert len(deltas) > 3 and "".join(deltas) == final.text == "what is the weather in Paris"
    assert final.input_tokens == 10 and final.output_tokens == 6
    [req] = stt_server.requests
    assert req["stream"] == "true" and req["language"] is None and req["prompt"] is None


@pytest.mark.parametrize("style", ["vllm", "speaches"])
async def test_streams_other_dialects(engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer, style: str) -> None:
    stt_server.streaming = style
    stt_server.enqueue(Text("Hello there. How are you today?", chunk_size=6))
    deltas, final = await collect(engine, tone(1.0), language="en")
    assert final.text == "Hello there. How are you today?" == "".join(deltas)
    assert len(deltas) == (2 if style == "speaches" else 6)
    if style == "vllm":
        assert (final.input_tokens, final.output_tokens) == (10, 6)


async def test_server_that_ignores_stream_is_used_plainly_from_then_on(
    engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer
) -> None:
    stt_server.streaming = "ignore"  # like whisper-1: stream=true, JSON answer
    stt_server.enqueue(Text("first", usage="duration"), Text("second"))
    assert (await collect(engine, tone(0.5)))[1].text == "first"
    assert not engine.streams_partials
    deltas, final = await collect(engine, tone(0.5))
    assert deltas == [] and final.text == "second"
    assert [r["stream"] for r in stt_server.requests] == ["true", None]


async def test_server_that_refuses_stream_gets_a_plain_retry(
    engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer
) -> None:
    stt_server.streaming = "refuse"
    stt_server.enqueue(Text("plain answer"))
    deltas, final = await collect(engine, tone(0.5))
    assert deltas == [] and final.text == "plain answer"
    assert [r["stream"] for r in stt_server.requests] == ["true", None]
    assert not engine.streams_partials


async def test_http_500_is_a_retryable_engine_error(engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer) -> None:
    stt_server.enqueue(HTTPError(500, {"error": {"message": "model crashed"}}))
    with pytest.raises(EngineError) as info:
        await collect(engine, tone(0.5))
    assert info.value.retryable and info.value.code == "stt_http_500"
    assert "model crashed" in info.value.message and "sk-secret" not in info.value.message


async def test_http_400_is_not_retryable(stt_server: ScriptedSTTServer) -> None:
    engine = await make(stt_server, stream=False)
    stt_server.enqueue(HTTPError(400, {"error": {"message": "Audio file is too short"}}))
    with pytest.raises(EngineError) as info:
        await collect(engine, tone(0.05))
    await engine.aclose()
    assert not info.value.retryable and "too short" in info.value.message


async def test_client_retries_a_503(stt_server: ScriptedSTTServer) -> None:
    engine = await make(stt_server, max_retries=1)
    stt_server.enqueue(HTTPError(503, headers={"retry-after-ms": "10"}), Text("after retry"))
    _, final = await collect(engine, tone(0.5))
    await engine.aclose()
    assert final.text == "after retry" and len(stt_server.requests) == 2


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here
    engine = OpenAICompatibleSTT(f"http://127.0.0.1:{port}/v1", MODEL, timeout_s=2, max_retries=0)
    with pytest.raises(EngineError) as info:
        await collect(engine, tone(0.5))
    await engine.aclose()
    assert info.value.retryable and info.value.code == "stt_unavailable"


async def test_hang_times_out(stt_server: ScriptedSTTServer) -> None:
    engine = await make(stt_server, timeout_s=0.3, stream=False)
    stt_server.enqueue(Hang(5))
    with pytest.raises(EngineError) as info:
        await collect(engine, tone(0.5))
    await engine.aclose()
    assert info.value.retryable and info.value.code == "stt_timeout"


async def test_stream_cut_midway_is_retryable(engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer) -> None:
    stt_server.enqueue(CutMidStream("this will not finish"))
    got: list[object] = []
    with pytest.raises(EngineError) as info:
        async for ev in engine.transcribe(tone(0.5)):
            got.append(ev)
    assert got and all(isinstance(e, TranscriptDelta) for e in got)
    assert info.value.retryable and info.value.code == "stt_stream_interrupted"


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_answer(stt_server: ScriptedSTTServer, stream: bool) -> None:
    engine = await make(stt_server, stream=stream)
    stt_server.enqueue(Malformed())
    with pytest.raises(EngineError) as info:
        await collect(engine, tone(0.5))
    await engine.aclose()
    assert not info.value.retryable and info.value.code == "stt_bad_response"


async def test_cancelling_the_consumer_closes_the_stream(
    engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer
) -> None:
    stt_server.enqueue(Text("a long and slow transcript " * 4, chunk_size=4, delay_s=0.05))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ev in engine.transcribe(tone(0.5)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if stt_server.disconnects:
            break
        await asyncio.sleep(0.02)
    assert stt_server.disconnects == 1


async def test_empty_audio_needs_no_request(engine: OpenAICompatibleSTT, stt_server: ScriptedSTTServer) -> None:
    _, final = await collect(engine, np.zeros(0, np.int16))
    assert final.text == "" and stt_server.requests == []
