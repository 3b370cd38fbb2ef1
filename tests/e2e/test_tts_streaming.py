"""Spoken responses from a TTS server that streams: a Parley process on a scripted
OpenAI-compatible speech server that sends a clause's PCM in pieces with a pause between them,
and the `openai` SDK as the client over a real socket.

The first `response.output_audio.delta` must reach the client while the TTS server is still
synthesising the clause (time to first audio ≈ its first piece, not the whole clause), the
audio and transcript must still add up to the clause, and a cancel mid-clause must stop the
audio at once and close the TTS stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import Checked, types
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import ScriptedLLMServer, Text
from tests.support.scripted_tts import ScriptedTTSServer, Tone, tone_pcm

CLAUSE = "This one sentence comes from a speech server that streams slowly."  # 66 chars: 3.96 s of audio
SLOW = Tone(chunk_ms=250, delay_s=0.15)  # 16 pieces, 15 pauses: ≈ 2.25 s to synthesise the clause
MIN_DELTA_BYTES = 24 * 2 * 40  # 40 ms of PCM16 at 24 kHz


@pytest.fixture(scope="module")
def tts_server() -> Iterator[ScriptedTTSServer]:
    with ScriptedTTSServer() as server:
        yield server


@pytest.fixture(scope="module")
def streaming(scripted_llm: ScriptedLLMServer, tts_server: ScriptedTTSServer) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_TTS_ENGINE": "openai", "PARLEY_TTS_BASE_URL": tts_server.base_url, "PARLEY_STT_ENGINE": "none"}
    with ParleyServer(env, name="tts-streaming") as server:
        yield server


@pytest.fixture
def tts(tts_server: ScriptedTTSServer) -> ScriptedTTSServer:
    tts_server.clear()
    return tts_server


@contextlib.asynccontextmanager
async def voice_session(server: ParleyServer) -> AsyncIterator[Checked]:
    client = AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, websocket_base_url=server.ws_base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rt = Checked(conn, "ga")
        await rt.until("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await rt.until("session.updated")
        yield rt


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")


async def test_first_audio_leaves_before_the_tts_has_finished_the_clause(streaming: ParleyServer, llm: ScriptedLLMServer,
                                                                           tts: ScriptedTTSServer) -> None:
    tts.enqueue(SLOW)
    llm.enqueue(Text(CLAUSE))
    async with voice_session(streaming) as rt:
        start = time.monotonic()
        await rt.response.create()
        events = await asyncio.wait_for(rt.until("response.output_audio.delta"), 10)
        first_audio = time.monotonic()
        assert tts.completed == 0  # the server is still speaking the clause
        events += await asyncio.wait_for(rt.until("response.done"), 20)
        done = time.monotonic()
    tts_finished = tts.completed_at[0]
    print(f"\nstreaming TTS ({SLOW.chunk_ms} ms pieces, {SLOW.delay_s * 1000:.0f} ms apart): first audio delta "
          f"{(first_audio - start) * 1000:.0f} ms after response.create; the TTS finished the clause at "
          f"{(tts_finished - start) * 1000:.0f} ms; response.done at {(done - start) * 1000:.0f} ms")
    assert first_audio < tts_finished - 1.0  # ≈ the first piece, not the whole clause (≈ 2.25 s)
    assert events[-1]["response"]["status"] == "completed"
    assert audio_of(events) == tone_pcm(CLAUSE)
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert all(len(base64.b64decode(e["delta"])) >= MIN_DELTA_BYTES for e in deltas)
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta") == CLAUSE
    # the clause's last words come with its last audio, not after it (truncation pairs them)
    kinds = types(events)
    last_words = max(i for i, t in enumerate(kinds) if t == "response.output_audio_transcript.delta")
    assert kinds[last_words + 1] == "response.output_audio.delta"
    assert "response.output_audio.delta" not in kinds[last_words + 2:]


async def test_cancel_mid_clause_stops_the_audio_and_the_tts_stream(streaming: ParleyServer, llm: ScriptedLLMServer,
                                                                     tts: ScriptedTTSServer) -> None:
    tts.enqueue(SLOW)
    llm.enqueue(Text(CLAUSE))
    async with voice_session(streaming) as rt:
        await rt.response.create()
        first_piece = (SLOW.chunk_ms - 40) * 48  # all of the first piece but what waits for the next
        got = b""
        while len(got) < first_piece:
            got += audio_of(await asyncio.wait_for(rt.until("response.output_audio.delta"), 10))
        assert len(got) == first_piece
        await rt.response.cancel()  # the next piece comes 150 ms later
        after = await asyncio.wait_for(rt.until("response.done"), 5)
        assert after[-1]["response"]["status"] == "cancelled"
        assert "response.output_audio.delta" not in types(after)
        await asyncio.to_thread(tts.wait_for, lambda s: s.disconnects == 1)
        assert tts.completed == 0
        # the session goes on; nothing more of the cancelled response arrives
        cancelled = after[-1]["response"]["id"]
        llm.enqueue(Text("Okay."))
        await rt.response.create()
        events = await asyncio.wait_for(rt.until("response.done"), 10)
    assert not any(e.get("response_id") == cancelled for e in events)
    assert events[-1]["response"]["status"] == "completed" and audio_of(events) == tone_pcm("Okay.")
