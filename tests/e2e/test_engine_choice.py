"""Engines chosen by settings, in a real server: remote OpenAI-compatible STT and TTS servers
(scripted), and the embedded faster-whisper and Kokoro engines on tiny fixtures."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import Checked
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import Text
from tests.support.scripted_stt import ScriptedSTTServer
from tests.support.scripted_stt import Text as SpokenText
from tests.support.scripted_tts import ScriptedTTSServer, tone_samples
from tests.support.speech import make_speech

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _wait_ready(server: ParleyServer) -> dict:
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        if r.status_code == 200:
            return r.json()
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


async def _voice_turn(server: ParleyServer, llm, reply: str, transcription: dict) -> list[dict]:
    client = AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, websocket_base_url=server.ws_base_url)
    speech = make_speech("what is the weather like today", lead_ms=200, tail_ms=200)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rt = Checked(conn, "ga")
        await rt.until("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": None, "transcription": transcription}}})
        await rt.until("session.updated")
        await conn.input_audio_buffer.append(audio=base64.b64encode(speech.pcm_bytes()).decode())
        await conn.input_audio_buffer.commit()
        llm.enqueue(Text(reply))
        await conn.response.create()
        return await asyncio.wait_for(rt.until("response.done"), 20)


async def test_remote_stt_and_tts_servers(scripted_llm, llm) -> None:
    with ScriptedSTTServer() as stt, ScriptedTTSServer() as tts:
        stt.enqueue(SpokenText("what is the weather like today"))
        env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_BASE_URL": stt.base_url,
               "PARLEY_STT_MODEL": "whisper-large", "PARLEY_TTS_BASE_URL": tts.base_url, "PARLEY_TTS_MODEL": "tts-x"}
        with ParleyServer(env, name="remote-speech") as server:
            status = _wait_ready(server)["engines"]
            assert "openai-compatible" in status["stt"] and "openai-compatible" in status["tts"]
            reply = "It is sunny."
            events = await _voice_turn(server, llm, reply, {"model": "gpt-4o-transcribe", "language": "en"})
    deltas = [e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    done = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert done["transcript"] == "what is the weather like today" and "".join(deltas) == done["transcript"]
    assert done["usage"]["type"] == "tokens"
    assert stt.requests[0]["model"] == "whisper-large" and stt.requests[0]["language"] == "en"
    assert stt.requests[0]["sample_rate"] == 24000  # the session's audio as it arrived, not resampled
    assert llm.requests[-1]["messages"][-1]["content"] == "what is the weather like today"
    assert tts.requests[0]["input"] == reply and tts.requests[0]["model"] == "tts-x"
    assert tts.requests[0]["voice"] == "alloy" and tts.requests[0]["response_format"] == "pcm"
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert len(audio) // 2 == tone_samples(reply)


async def test_embedded_whisper_and_kokoro_on_tiny_models(scripted_llm, llm, tmp_path) -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("kokoro_onnx")
    from tests.support.tiny_kokoro import write_fixture

    model, voices = write_fixture(tmp_path)
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_ENGINE": "faster-whisper",
           "PARLEY_STT_MODEL": str(FIXTURES / "tiny-whisper-ct2"), "PARLEY_TTS_MODEL": str(model),
           "PARLEY_TTS_VOICES": str(voices)}
    with ParleyServer(env, name="tiny-engines") as server:
        status = _wait_ready(server)["engines"]
        assert status["stt"].startswith("default faster-whisper") and status["tts"].startswith("kokoro")
        events = await _voice_turn(server, llm, "Hello there.", {"model": "whisper-1"})
    # random weights: the words are nonsense, but they came from the model through the real code
    assert any(e["type"] == "conversation.item.input_audio_transcription.completed" for e in events)
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    pcm = np.frombuffer(audio, dtype="<i2")
    assert pcm.size > 2400 and np.abs(pcm).max() > 1000


def test_a_server_without_its_vad_is_not_ready_and_says_what_to_fix(scripted_llm, tmp_path) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_VAD_MODEL": str(tmp_path / "missing.onnx"), "PARLEY_STT_ENGINE": "pocketsphinx",
           "PARLEY_TTS_ENGINE": "espeak"}
    with ParleyServer(env, name="novad") as server:
        ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        log = server.log()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not_ready" and body["missing_engines"] == ["vad"]
    assert "missing.onnx" in body["engines"]["vad"] and "PARLEY_VAD_MODEL" in body["engines"]["vad"]
    assert "vad engine: unavailable" in log and "not ready" in log


def test_engines_turned_off_are_not_missing(scripted_llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "none"}
    with ParleyServer(env, name="nospeech") as server:
        body = _wait_ready(server)
    assert body["status"] == "ready" and body["missing_engines"] == []


async def _espeak_reference(text: str, voice: str, language: str | None) -> np.ndarray:
    """What the embedded espeak engine says for `text`, at the session's 24 kHz."""
    from parley.audio.resample import resample
    from parley.engines.tts_espeak import EspeakTTS

    tts = EspeakTTS()
    pcm = np.frombuffer(b"".join([c async for c in tts.synthesize(text, voice=voice, language=language)]), dtype=np.int16)
    return resample(pcm, tts.sample_rate, 24000).astype(np.float64)


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised cross-correlation of two signals' envelopes (10 ms RMS), in [0, 1]."""
    def env(x: np.ndarray) -> np.ndarray:
        x = x[: len(x) // 240 * 240].reshape(-1, 240)
        e = np.sqrt((x ** 2).mean(axis=1))
        return (e - e.mean()) / (e.std() or 1.0)
    ea, eb = env(a), env(b)
    n = max(len(ea), len(eb))
    return float(np.max(np.correlate(np.pad(ea, (0, n - len(ea))), np.pad(eb, (0, n - len(eb))), "full")) / n)


async def test_the_language_the_stt_detects_is_the_language_espeak_speaks(scripted_llm, llm) -> None:
    """No language configured: the STT server says the turn was Spanish, so the answer is spoken
    with espeak-ng's Spanish voice (the voice's variant kept), not with the English one."""
    reply = "Muy bien gracias"
    with ScriptedSTTServer() as stt:
        stt.streaming = "ignore"  # a JSON answer that names the language, as Whisper servers give
        stt.enqueue(SpokenText("hola que tal", language="es"))
        env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_BASE_URL": stt.base_url,
               "PARLEY_TTS_ENGINE": "espeak"}
        with ParleyServer(env, name="detected-language") as server:
            _wait_ready(server)
            events = await _voice_turn(server, llm, reply, {"model": "gpt-4o-transcribe"})
    assert "language" not in stt.requests[0] or stt.requests[0]["language"] in (None, "")
    assert next(e for e in events if e["type"] == "response.done")["response"]["status"] == "completed"
    audio = np.frombuffer(b"".join(base64.b64decode(e["delta"]) for e in events
                                   if e["type"] == "response.output_audio.delta"), dtype=np.int16).astype(np.float64)
    spanish = _similarity(audio, await _espeak_reference(reply, "alloy", "es"))
    english = _similarity(audio, await _espeak_reference(reply, "alloy", None))
    assert spanish > 0.9 and spanish > english + 0.1, (spanish, english)
