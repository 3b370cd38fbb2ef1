"""OpenAICompatibleTTS against a real scripted /v1/audio/speech server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from parley.engines.errors import EngineError
from parley.engines.speech_registry import _tts
from parley.engines.tts import OPENAI_VOICES, TTSEngine
from parley.engines.tts_openai import OpenAICompatibleTTS
from tests.support.scripted_tts import Hang, HTTPError, ScriptedTTSServer, Tone, tone_pcm, tone_samples

MODEL = "tts-test"
TEXT = "Hello there, how are you?"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedTTSServer]:
    with ScriptedTTSServer() as srv:
        yield srv


@pytest.fixture
def tts_server(server: ScriptedTTSServer) -> ScriptedTTSServer:
    server.clear()
    return server


@pytest.fixture
async def engine(tts_server: ScriptedTTSServer) -> AsyncIterator[OpenAICompatibleTTS]:
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, api_key="sk-secret-123", timeout_s=5, max_retries=0)
    yield eng
    await eng.aclose()


async def speak(engine: OpenAICompatibleTTS, text: str = TEXT, voice: str = "alloy", speed: float = 1.0) -> list[bytes]:
    return [chunk async for chunk in engine.synthesize(text, voice=voice, speed=speed)]


async def failure(engine: OpenAICompatibleTTS, text: str = TEXT, **kwargs: object) -> EngineError:
    with pytest.raises(EngineError) as err:
        await speak(engine, text, **kwargs)  # type: ignore[arg-type]
    return err.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the happy path ----------------------------------------------------------------------


async def test_is_a_tts_engine(engine: OpenAICompatibleTTS) -> None:
    assert isinstance(engine, TTSEngine)
    assert engine.name == "openai"
    assert engine.sample_rate == 24_000
    assert "sk-secret-123" not in repr(engine)


async def test_streams_the_whole_body_as_pcm16(engine: OpenAICompatibleTTS) -> None:
    chunks = await speak(engine)
    assert len(chunks) > 1
    assert all(len(c) % 2 == 0 and c for c in chunks)
    audio = b"".join(chunks)
    assert audio == tone_pcm(TEXT)
    samples = np.frombuffer(audio, dtype="<i2")
    assert len(samples) == tone_samples(TEXT) and np.abs(samples).max() > 9000


async def test_sends_model_voice_input_speed_and_pcm_format(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    await speak(engine, "Short one.", voice="coral", speed=1.25)
    (request,) = tts_server.requests
    assert request["model"] == MODEL
    assert request["voice"] == "coral"  # OpenAI names pass through by default
    assert request["input"] == "Short one."
    assert request["speed"] == 1.25
    assert request["response_format"] == "pcm"
    assert request["authorization"] == "Bearer sk-secret-123"


async def test_speed_shortens_the_audio(engine: OpenAICompatibleTTS) -> None:
    normal = b"".join(await speak(engine, speed=1.0))
    fast = b"".join(await speak(engine, speed=1.5))
    assert len(fast) < len(normal)
    assert fast == tone_pcm(TEXT, 1.5)


async def test_voice_overrides_and_native_names(tts_server: ScriptedTTSServer) -> None:
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, voice_overrides={"alloy": "af_heart"}, max_retries=0)
    try:
        await speak(eng, "One.", voice="alloy")
        await speak(eng, "Two.", voice="ash")
        await speak(eng, "Three.", voice="bm_george")
    finally:
        await eng.aclose()
    assert [r["voice"] for r in tts_server.requests] == ["af_heart", "ash", "bm_george"]
    assert all(eng.voices.resolve(v) == v for v in OPENAI_VOICES if v != "alloy")
    assert tts_server.requests[0]["authorization"] == "Bearer not-needed"


async def test_chunks_are_whole_samples_when_the_network_splits_them(
    engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer
) -> None:
    tts_server.enqueue(Tone(chunk_bytes=999, delay_s=0.002))  # odd sizes: samples split in two
    chunks = await speak(engine)
    assert all(len(c) % 2 == 0 for c in chunks)
    assert b"".join(chunks) == tone_pcm(TEXT)


async def test_big_reads_are_cut_to_chunk_ms(tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(Tone(chunk_ms=500))
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, max_retries=0, chunk_ms=20)
    try:
        chunks = await speak(eng)
    finally:
        await eng.aclose()
    assert max(len(c) for c in chunks) <= 960
    assert b"".join(chunks) == tone_pcm(TEXT)


async def test_chunks_arrive_before_the_whole_body(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    # The server sends 100 ms of audio, then stalls for 5 s before the rest.
    tts_server.enqueue(Hang(seconds=5, after_ms=100))
    stream = engine.synthesize(TEXT, voice="alloy")
    started = time.monotonic()
    first = await asyncio.wait_for(anext(stream), timeout=2)
    assert time.monotonic() - started < 2
    assert first and tone_pcm(TEXT).startswith(first)
    assert tts_server.completed == 0  # the body is not finished: we got audio while it streams
    await stream.aclose()  # closing the iterator closes the HTTP stream
    await asyncio.to_thread(tts_server.wait_for, lambda s: s.disconnects == 1, 3)
    assert tts_server.completed == 0


async def test_empty_text_sends_nothing(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    assert await speak(engine, "   ") == []
    assert tts_server.requests == []


# --- cancellation ----------------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_http_stream(
    engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer
) -> None:
    tts_server.enqueue(Hang(seconds=5, after_ms=60))
    got: list[bytes] = []

    async def consume() -> None:
        async for chunk in engine.synthesize(TEXT, voice="alloy"):
            got.append(chunk)

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 2
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got, "no audio before the stall"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(tts_server.wait_for, lambda s: s.disconnects == 1, 3)
    assert tts_server.completed == 0
    # and the engine still works afterwards
    assert b"".join(await speak(engine, "Again.")) == tone_pcm("Again.")


async def test_cancelling_before_the_headers(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(Hang(seconds=5))
    task = asyncio.create_task(speak(engine))
    await asyncio.to_thread(tts_server.wait_for, lambda s: len(s.requests) == 1, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- errors ----------------------------------------------------------------------------------


async def test_http_500_is_a_retryable_engine_error(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(HTTPError(500, {"error": {"message": "synthesis crashed"}}))
    err = await failure(engine)
    assert err.retryable
    assert err.code == "tts_http_500"
    assert "synthesis crashed" in err.message and "sk-secret" not in err.message


async def test_http_429_is_retryable_and_400_is_not(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(HTTPError(429), HTTPError(400, {"detail": "voice 'nope' not found"}))
    assert (await failure(engine)).retryable
    err = await failure(engine)
    assert not err.retryable and err.code == "tts_http_400"
    assert "voice 'nope' not found" in err.message


async def test_client_retries_a_500_before_the_body(tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(HTTPError(503))
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, max_retries=1)
    try:
        audio = b"".join(await speak(eng))
    finally:
        await eng.aclose()
    assert audio == tone_pcm(TEXT)
    assert len(tts_server.requests) == 2


async def test_connection_refused() -> None:
    eng = OpenAICompatibleTTS(f"http://127.0.0.1:{free_port()}/v1", MODEL, max_retries=0, timeout_s=2)
    try:
        err = await failure(eng)
    finally:
        await eng.aclose()
    assert err.retryable
    assert err.code == "tts_unavailable"
    assert "cannot reach" in err.message


async def test_silent_server_times_out(tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(Hang(seconds=5))
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, max_retries=0, timeout_s=0.3)
    try:
        err = await failure(eng)
    finally:
        await eng.aclose()
    assert err.retryable and err.code == "tts_timeout"
    assert "did not answer" in err.message


async def test_stall_mid_stream_times_out(tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(Hang(seconds=5, after_ms=100))
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, max_retries=0, timeout_s=0.3)
    got: list[bytes] = []
    try:
        with pytest.raises(EngineError) as err:
            async for chunk in eng.synthesize(TEXT, voice="alloy"):
                got.append(chunk)
    finally:
        await eng.aclose()
    assert got  # the audio before the stall was delivered
    assert err.value.retryable and err.value.code == "tts_timeout"
    assert "mid-stream" in err.value.message


async def test_encoded_audio_instead_of_pcm_is_refused(engine: OpenAICompatibleTTS, tts_server: ScriptedTTSServer) -> None:
    tts_server.enqueue(HTTPError(200, "ID3\x04not really mp3", headers={"content-type": "audio/mpeg"}))
    err = await failure(engine)
    assert err.code == "tts_bad_format" and not err.retryable


async def test_invalid_speed_and_closed_engine(tts_server: ScriptedTTSServer) -> None:
    eng = OpenAICompatibleTTS(tts_server.base_url, MODEL, max_retries=0)
    for bad in (0, -1.0, float("nan")):
        assert (await failure(eng, speed=bad)).code == "invalid_speed"
    await eng.aclose()
    assert (await failure(eng)).code == "engine_closed"
    assert tts_server.requests == []


# --- wiring ----------------------------------------------------------------------------------


async def test_registry_builds_it_from_settings(tts_server: ScriptedTTSServer) -> None:
    settings = SimpleNamespace(tts_engine="auto", tts_voice_map="alloy=af_heart", tts_base_url=tts_server.base_url,
                               tts_api_key=None, tts_model="kokoro", tts_timeout_s=5.0, tts_voices=None)  # fmt: skip
    eng, status = _tts(settings)
    assert isinstance(eng, OpenAICompatibleTTS) and "openai-compatible" in status
    try:
        await speak(eng, "Hi.")
    finally:
        await eng.aclose()
    assert tts_server.requests[0]["voice"] == "af_heart"
    assert tts_server.requests[0]["model"] == "kokoro"

