"""A plain `pip install` of the package, as a user or a Dockerfile does it (no scripts, no side
installs), gives a server whose default engines all work: Silero VAD included.

The project is installed (as a built wheel, so its package data is what ships) into a fresh venv;
that venv's `parley serve` runs with no engine settings but a remote LLM (the scripted
chat-completions server: the embedded llama.cpp model needs a hub download), and a spoken turn
made with flite goes through server VAD, pocketsphinx and espeak-ng to `response.done`, over
PCM16 and over G.711 mu-law (a Twilio-style media bridge).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from tests.support.parley_server import ROOT, ParleyServer
from tests.support.scripted_llm import ScriptedLLMServer, Text
from tests.support.speech import make_speech, to_g711

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("plain-install") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], env=env,
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def test_the_install_has_the_vad_model_and_no_torch(fresh_venv: Path) -> None:
    probe = ("import importlib.util, json; from parley.engines.vad_silero import default_model_path; "
             "print(json.dumps({'model': str(default_model_path()), 'torch': importlib.util.find_spec('torch') is not None,"
             " 'silero_vad': importlib.util.find_spec('silero_vad') is not None}))")
    out = json.loads(subprocess.run([str(fresh_venv / "bin" / "python"), "-c", probe], check=True,
                                    capture_output=True, text=True, cwd="/").stdout)
    assert out["model"].startswith(str(fresh_venv)) and out["model"].endswith("silero_vad.onnx")
    assert not out["torch"] and not out["silero_vad"]


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(fresh_venv: Path, llm: ScriptedLLMServer) -> Iterator[ParleyServer]:
    # nothing but the LLM: every speech engine is the package's default
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PARLEY_LLM_BASE_URL": llm.base_url, "PARLEY_LLM_MODEL": llm.model, "HF_HUB_OFFLINE": "1"})
    parley = ParleyServer({}, name="plain-install", command=[str(fresh_venv / "bin" / "parley")])
    parley.env = {**env, "PARLEY_API_KEYS": parley.api_key or ""}  # not the test process's environment
    parley.start(timeout_s=60)
    try:
        yield parley
    finally:
        parley.stop()


def test_readyz_reports_every_default_engine(server: ParleyServer) -> None:
    ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
    body = ready.json()
    assert ready.status_code == 200, body
    assert body["status"] == "ready" and body["missing_engines"] == []
    assert body["engines"]["vad"].startswith("silero")
    assert "pocketsphinx" in body["engines"]["stt"] and "espeak" in body["engines"]["tts"]


@pytest.mark.parametrize("audio_format", ["audio/pcm", "audio/pcmu"])
async def test_a_spoken_turn_through_server_vad(server: ParleyServer, llm: ScriptedLLMServer, audio_format: str) -> None:
    speech = make_speech("turn off the lights in the kitchen", lead_ms=600, tail_ms=1200)
    if audio_format == "audio/pcm":
        fmt: dict[str, object] = {"type": "audio/pcm", "rate": 24000}
        audio, chunk_bytes = speech.pcm_bytes(), 24000 * 2 // 25  # 40 ms
    else:
        fmt = {"type": "audio/pcmu"}
        audio, chunk_bytes = to_g711(speech.pcm, "ulaw"), 8000 // 25
    llm.clear()
    llm.enqueue(Text("The kitchen lights are off."))
    client = AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, websocket_base_url=server.ws_base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"], "audio": {
            "input": {"format": fmt, "transcription": {"model": "whisper-1"},
                      "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
            "output": {"format": fmt}}})
        seen: list[str] = []
        audio_bytes = 0

        async def send() -> None:
            for i in range(0, len(audio), chunk_bytes):
                await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + chunk_bytes]).decode())
                await asyncio.sleep(0.04)

        sender = asyncio.create_task(send())

        async def receive() -> dict:
            nonlocal audio_bytes
            transcript = ""
            async for event in conn:
                seen.append(event.type)
                if event.type == "response.output_audio.delta":
                    audio_bytes += len(base64.b64decode(event.delta))
                if event.type == "conversation.item.input_audio_transcription.completed":
                    transcript = event.transcript
                if event.type == "response.done":
                    return {"status": event.response.status, "transcript": transcript}
            raise AssertionError(f"connection closed after {seen}")

        done = await asyncio.wait_for(receive(), 60)
        await sender
    assert "input_audio_buffer.speech_started" in seen and "input_audio_buffer.speech_stopped" in seen
    assert "input_audio_buffer.committed" in seen
    assert done["status"] == "completed"
    if audio_format == "audio/pcm":
        assert "kitchen" in done["transcript"].lower()
    else:  # pocketsphinx's wideband model hears 8 kHz telephone audio poorly (README: Known limits)
        assert done["transcript"].strip()
    assert audio_bytes > 0.5 * (24000 * 2 if audio_format == "audio/pcm" else 8000)  # over half a second spoken
