"""Speech in and out through the `openai` SDK: test speech (flite) streamed at real-time pace,
Silero VAD, pocketsphinx transcripts, espeak-ng responses, barge-in and truncation, G.711."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from parley.audio.g711 import alaw_decode, ulaw_encode
from parley.audio.resample import resample
from tests.e2e.conftest import Checked
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import Text
from tests.support.speech import Speech, make_speech

pytest.importorskip("pocketsphinx")

SENTENCE = "turn off the lights in the kitchen"


@pytest.fixture(scope="module")
def speech_server(scripted_llm) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak"}
    with ParleyServer(env, name="speech") as server:
        yield server


@pytest.fixture
def sclient(speech_server) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=speech_server.api_key, base_url=speech_server.base_url,
                       websocket_base_url=speech_server.ws_base_url)


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    d = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=int)
    d[:, 0], d[0, :] = range(len(ref) + 1), range(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[len(ref), len(hyp)] / max(len(ref), 1)


async def stream_audio(conn: Any, chunks: Iterator[bytes], chunk_ms: float) -> None:
    """Send audio at real-time pace, as a microphone would."""
    start = time.monotonic()
    for i, chunk in enumerate(chunks):
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        delay = start + (i + 1) * chunk_ms / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def decode_pcm(events: list[dict[str, Any]], response_id: str | None = None) -> np.ndarray:
    data = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
                    and (response_id is None or e["response_id"] == response_id))
    return np.frombuffer(data, dtype="<i2")


async def connect_voice(client: AsyncOpenAI, session: dict[str, Any]) -> Any:
    manager = client.realtime.connect(model="gpt-realtime")
    conn = await manager.__aenter__()
    rt = Checked(conn, "ga")
    await rt.until("session.created")
    await conn.session.update(session={"type": "realtime", **session})
    await rt.until("session.updated")
    return manager, rt


async def test_vad_turn_transcript_and_automatic_response(sclient, llm) -> None:
    speech = make_speech(SENTENCE, lead_ms=700, tail_ms=1200)
    manager, rt = await connect_voice(sclient, {
        "output_modalities": ["text"],
        "audio": {"input": {"transcription": {"model": "pocketsphinx"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}}},
    })
    try:
        llm.enqueue(Text("Done, the kitchen lights are off."))
        sender = asyncio.create_task(stream_audio(rt, speech.chunks(40), 40))
        events = await asyncio.wait_for(rt.until("response.done"), 20)
        await sender
    finally:
        await manager.__aexit__(None, None, None)
    by_type = {e["type"]: e for e in events}
    started, stopped = by_type["input_audio_buffer.speech_started"], by_type["input_audio_buffer.speech_stopped"]
    onset = started["audio_start_ms"] + 300
    print(f"\nspeech: true {speech.speech_start_ms:.0f}-{speech.speech_end_ms:.0f} ms; "
          f"detected onset {onset} ms, end {stopped['audio_end_ms']} ms (incl. 500 ms silence)")
    assert abs(onset - speech.speech_start_ms) <= 100
    assert abs(stopped["audio_end_ms"] - (speech.speech_end_ms + 500)) <= 100
    assert by_type["input_audio_buffer.committed"]["item_id"] == started["item_id"] == stopped["item_id"]
    transcript = by_type["conversation.item.input_audio_transcription.completed"]["transcript"]
    error_rate = wer(SENTENCE, transcript)
    print(f"pocketsphinx heard {transcript!r}: word error rate {error_rate:.0%}")
    assert error_rate <= 0.4
    assert by_type["response.done"]["response"]["status"] == "completed"
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": transcript}


async def test_spoken_response_audio_and_transcript(sclient, llm) -> None:
    manager, rt = await connect_voice(sclient, {"audio": {"input": {"turn_detection": None}}})
    try:
        reply = "Sure. The kitchen lights are off now, and the door is locked."
        llm.enqueue(Text(reply, chunk_size=6))
        await rt.response.create()
        events = await asyncio.wait_for(rt.until("response.done"), 20)
    finally:
        await manager.__aexit__(None, None, None)
    pcm = decode_pcm(events)
    seconds = pcm.size / 24000
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    print(f"\nspoken reply: {seconds:.2f} s of audio, rms {rms:.0f}")
    assert 2.0 < seconds < 10.0 and rms > 300
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert transcript == reply
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta") == reply
    # the first audio is sent before the model has finished talking: speech is per clause
    first_audio = next(i for i, e in enumerate(events) if e["type"] == "response.output_audio.delta")
    last_transcript = max(i for i, e in enumerate(events) if e["type"] == "response.output_audio_transcript.delta")
    assert first_audio < last_transcript


async def test_barge_in_cancels_and_truncate_keeps_what_was_heard(sclient, llm) -> None:
    manager, rt = await connect_voice(sclient, {"audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400, "create_response": False,
                           "interrupt_response": True}}}})
    try:
        # a long answer, produced slowly, so it is still going when the user speaks
        long_reply = " ".join(f"This is sentence number {i} of a long answer." for i in range(1, 40))
        llm.enqueue(Text(long_reply, chunk_size=8, delay_s=0.05))
        await rt.response.create()
        await rt.until("response.output_audio.delta")
        speech = make_speech("stop please", lead_ms=300, tail_ms=900)
        sender = asyncio.create_task(stream_audio(rt, speech.chunks(20), 20))
        events = await asyncio.wait_for(rt.until("input_audio_buffer.speech_started"), 20)
        response_id = next(e for e in rt.events if e["type"] == "response.created")["response"]["id"]
        after = await asyncio.wait_for(rt.until("response.done"), 5)
        done = after[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        # the cancel came with the speech_started: nothing of the response in between but its closing events
        assert all(e["type"] != "response.output_audio.delta" for e in after)
        later = await asyncio.wait_for(rt.until("input_audio_buffer.committed"), 10)
        await sender
        assert not any(e.get("response_id") == response_id for e in later)
        item = done["output"][0]
        full = item["content"][0]["transcript"]
        heard_ms = 600
        await rt.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=heard_ms)
        truncated = await asyncio.wait_for(rt.until("conversation.item.truncated"), 5)
        assert truncated[-1]["audio_end_ms"] == heard_ms
        await rt.conversation.item.retrieve(item_id=item["id"])
        got = (await rt.until("conversation.item.retrieved"))[-1]["item"]
        heard = got["content"][0]["transcript"]
        audio = base64.b64decode(got["content"][0]["audio"])
        print(f"\nbarge-in: {len(full)} chars were sent before the cancel; truncated at {heard_ms} ms to {heard!r}")
        assert 0 < len(heard) < len(full) and full.startswith(heard)
        assert len(audio) == heard_ms * 48
        await rt.conversation.item.truncate(item_id=item["id"], content_index=0, audio_end_ms=60_000, event_id="too_far")
        err = (await rt.until("error"))[-1]
        assert err["error"]["event_id"] == "too_far"
        llm.enqueue(Text("Okay, stopping."))
        await rt.response.create(response={"output_modalities": ["text"]})
        await asyncio.wait_for(rt.until("response.done"), 10)
        assistant = [m for m in llm.requests[-1]["messages"] if m["role"] == "assistant"]
        assert assistant[-1]["content"] == heard
    finally:
        await manager.__aexit__(None, None, None)
    del events


async def test_g711_in_and_out(sclient, llm) -> None:
    """µ-law in (with server VAD on it), A-law out.  The audio clock makes VAD independent of
    pace, so the audio is sent as fast as it goes."""
    speech = make_speech(SENTENCE, lead_ms=500, tail_ms=1000)
    ulaw = ulaw_encode(resample(speech.pcm, 24000, 8000))
    manager, rt = await connect_voice(sclient, {"audio": {
        "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "pocketsphinx"},
                  "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "create_response": False}},
        "output": {"format": {"type": "audio/pcma"}}}})
    try:
        for i in range(0, len(ulaw), 160):  # 20 ms Twilio-style frames
            await rt.input_audio_buffer.append(audio=base64.b64encode(ulaw[i:i + 160]).decode())
        events = await asyncio.wait_for(rt.until("conversation.item.input_audio_transcription.completed"), 15)
        started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
        stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
        assert abs(started["audio_start_ms"] + 300 - speech.speech_start_ms) <= 100
        assert abs(stopped["audio_end_ms"] - (speech.speech_end_ms + 500)) <= 100
        # the committed item keeps the caller's µ-law bytes exactly
        await rt.conversation.item.retrieve(item_id=started["item_id"])
        item = (await rt.until("conversation.item.retrieved"))[-1]["item"]
        kept = base64.b64decode(item["content"][0]["audio"])
        begin = int(started["audio_start_ms"] * 8)
        assert kept == ulaw[begin:begin + len(kept)] and len(kept) == (stopped["audio_end_ms"] - started["audio_start_ms"]) * 8
        print(f"\npocketsphinx on 8 kHz telephone audio heard {events[-1]['transcript']!r} "
              "(its model is wideband; use faster-whisper for calls)")
        llm.enqueue(Text("The lights are off."))
        await rt.response.create()
        events = await asyncio.wait_for(rt.until("response.done"), 15)
    finally:
        await manager.__aexit__(None, None, None)
    alaw = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    pcm = alaw_decode(alaw)
    assert 0.7 < len(alaw) / 8000 < 5 and np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300
    assert events[-1]["response"]["audio"]["output"]["format"] == {"type": "audio/pcma"}


async def test_transcription_only_session(sclient) -> None:
    speech: Speech = make_speech(SENTENCE, lead_ms=200, tail_ms=200)
    async with sclient.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        rt = Checked(conn, "ga")
        created = (await rt.until("session.created"))[-1]["session"]
        assert created["type"] == "transcription"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "transcription": {"model": "pocketsphinx", "language": "en"}, "turn_detection": None}}})
        await rt.until("session.updated")
        await conn.input_audio_buffer.append(audio=base64.b64encode(speech.pcm_bytes()).decode())
        await conn.input_audio_buffer.commit()
        events = await asyncio.wait_for(rt.until("conversation.item.input_audio_transcription.completed"), 15)
    names = [e["type"] for e in events]
    assert names[:3] == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    done = events[-1]
    assert wer(SENTENCE, done["transcript"]) <= 0.4 and done["usage"]["type"] == "duration"
