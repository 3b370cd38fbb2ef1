"""The audio response pipeline (`runtime/pipeline.py`) with scripted engines in process: a
clause's audio leaves as the engine produces it, in deltas of MIN_DELTA_MS..AUDIO_DELTA_MS,
resampled and encoded chunk by chunk, with the clause's words spread over its deltas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from parley.audio.formats import PCM16, PCMU, AudioFormat
from parley.audio.g711 import ulaw_encode
from parley.audio.resample import StreamResampler, resample
from parley.core.io import ModelAudio, ModelDone, ModelFailed, ResponsePlan
from parley.engines.errors import EngineError
from parley.core.chat import ChatRequest
from parley.engines.llm import Finished, TextDelta
from parley.runtime.pipeline import AUDIO_DELTA_MS, MIN_DELTA_MS, ClauseAudio, run_response

RATE = 24_000


def tone(ms: float, rate: int = RATE) -> bytes:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def pieces(data: bytes, ms: float, rate: int = RATE) -> list[bytes]:
    size = int(rate * ms / 1000) * 2
    return [data[i:i + size] for i in range(0, len(data), size)]


class ScriptedLLM:
    name = "scripted"

    def __init__(self, *texts: str) -> None:
        self.texts = texts

    async def stream(self, request: ChatRequest) -> AsyncIterator[Any]:
        for text in self.texts:
            yield TextDelta(text)
        yield Finished("stop")

    async def aclose(self) -> None:
        pass


class ScriptedTTS:
    """Speaks `ms_per_char` of tone per character in chunks of `chunk_ms`.  With `gated`, each
    chunk after the first waits for `release()`, so a test sees what leaves in between."""

    name = "scripted"

    def __init__(self, *, rate: int = RATE, ms_per_char: float = 60, chunk_ms: float = 100, gated: bool = False,
                 fail_after: int | None = None) -> None:
        self.sample_rate = rate
        self.ms_per_char, self.chunk_ms = ms_per_char, chunk_ms
        self.gate = asyncio.Semaphore(0) if gated else None
        self.fail_after = fail_after
        self.chunks_sent = 0
        self.closed = 0

    def audio(self, text: str) -> bytes:
        return tone(self.ms_per_char * len(text), self.sample_rate)

    def release(self, n: int = 1) -> None:
        assert self.gate is not None
        for _ in range(n):
            self.gate.release()

    async def synthesize(self, text: str, *, voice: str, speed: float = 1.0,
                         language: str | None = None) -> AsyncIterator[bytes]:
        try:
            for i, chunk in enumerate(pieces(self.audio(text), self.chunk_ms, self.sample_rate)):
                if i and self.gate is not None:
                    await self.gate.acquire()
                if self.fail_after is not None and i == self.fail_after:
                    raise EngineError("the scripted TTS broke", code="tts_broken")
                self.chunks_sent += 1
                yield chunk
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        pass


def plan(fmt: AudioFormat = PCM16) -> ResponsePlan:
    return ResponsePlan(ChatRequest(messages=[]), "audio", "alloy", 1.0, fmt.to_session())


class Inbox:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.changed = asyncio.Event()

    async def put(self, item: Any) -> None:
        self.items.append(item)
        self.changed.set()

    @property
    def audio(self) -> list[ModelAudio]:
        return [i for i in self.items if isinstance(i, ModelAudio)]

    async def wait(self, predicate: Any) -> None:
        async with asyncio.timeout(5):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


def transcript(deltas: list[ModelAudio]) -> str:
    return "".join(d.transcript for d in deltas)


async def test_a_clause_produced_at_once_leaves_in_deltas_of_at_most_200ms() -> None:
    tts, inbox = ScriptedTTS(), Inbox()
    reply = "Sure thing. The kitchen lights are off now."
    await run_response("r", plan(), ScriptedLLM(reply), tts, inbox.put)
    assert isinstance(inbox.items[-1], ModelDone)
    deltas = inbox.audio
    assert transcript(deltas) == reply
    assert deltas[0].transcript == ""  # a word goes with the delta in which it ends
    assert deltas[-1].audio and deltas[-1].transcript == " now."  # and the last with the last audio
    sizes = [len(d.audio) // 2 for d in deltas]
    assert all(RATE * MIN_DELTA_MS // 1000 <= n <= RATE * AUDIO_DELTA_MS // 1000 for n in sizes)
    assert b"".join(d.audio for d in deltas) == tts.audio("Sure thing.") + tts.audio("The kitchen lights are off now.")
    assert sum(d.duration_ms for d in deltas) == pytest.approx(60 * (len(reply) - 1))


async def test_the_first_audio_leaves_before_the_engine_finishes_the_clause() -> None:
    tts, inbox = ScriptedTTS(gated=True, chunk_ms=100), Inbox()
    clause = "This one sentence takes the engine a while to say."  # 3 s: 30 chunks
    task = asyncio.create_task(run_response("r", plan(), ScriptedLLM(clause), tts, inbox.put))
    try:
        await inbox.wait(lambda i: i.audio)
        assert tts.chunks_sent == 1 and len(inbox.audio) == 1
        first = inbox.audio[0]
        assert first.duration_ms == 100 - MIN_DELTA_MS  # the first chunk, less what waits for the clause's end
        tts.release(9)
        await inbox.wait(lambda i: sum(d.duration_ms for d in i.audio) >= 1000 - MIN_DELTA_MS)
        words = transcript(inbox.audio).split()
        assert 0 < len(words) < len(clause.split())  # the words so far, at the expected pace
        tts.release(30)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
    deltas = inbox.audio
    assert transcript(deltas) == clause and deltas[-1].audio and deltas[-1].transcript.endswith("say.")
    assert b"".join(d.audio for d in deltas) == tts.audio(clause)
    assert all(len(d.audio) // 2 >= RATE * MIN_DELTA_MS // 1000 for d in deltas)


async def test_small_chunks_are_coalesced() -> None:
    tts, inbox = ScriptedTTS(gated=True, chunk_ms=5), Inbox()
    task = asyncio.create_task(run_response("r", plan(), ScriptedLLM("Short."), tts, inbox.put))
    for _ in range(100):  # one 5 ms chunk at a time, each in a batch of its own
        await asyncio.sleep(0)
        tts.release()
    await asyncio.wait_for(task, 5)
    sizes = [d.duration_ms for d in inbox.audio]
    assert sizes and all(ms >= MIN_DELTA_MS for ms in sizes) and sum(sizes) == pytest.approx(360)


def streamed(text: str, audio: bytes, chunk_ms: float, rate: int, fmt: AudioFormat) -> list[tuple[bytes, str, float]]:
    clause = ClauseAudio(text, fmt, StreamResampler(rate, fmt.rate), leading_space=False, expected_ms=1000)
    out = []
    for chunk in pieces(audio, chunk_ms, rate):
        clause.push(chunk)
        out += clause.deltas(ended=False)
    return out + clause.deltas(ended=True)


def test_streamed_resampling_matches_the_whole_buffer_without_clicks() -> None:
    audio = tone(1500, 22050)
    out = streamed("one two three four", audio, 37, 22050, PCM16)
    got = np.frombuffer(b"".join(d for d, _, _ in out), dtype="<i2").astype(np.int32)
    whole = resample(np.frombuffer(audio, dtype="<i2"), 22050, RATE).astype(np.int32)
    assert abs(got.size - whole.size) <= 2
    n = min(got.size, whole.size)
    assert np.max(np.abs(got[:n] - whole[:n])) <= 2
    # a 440 Hz tone of amplitude 8000 moves at most ~920 per sample at 24 kHz: no jump at chunk edges
    assert np.max(np.abs(np.diff(got[100:-100]))) < 1000


def test_g711_is_encoded_chunk_by_chunk() -> None:
    audio = tone(800)
    out = streamed("hello there", audio, 100, RATE, PCMU)
    ulaw = b"".join(d for d, _, _ in out)
    expected = ulaw_encode(resample(np.frombuffer(audio, dtype="<i2"), RATE, 8000))
    assert abs(len(ulaw) - len(expected)) <= 2
    assert sum(ms for _, _, ms in out) == pytest.approx(len(ulaw) / 8)
    assert "".join(w for _, w, _ in out) == "hello there"


def test_words_follow_the_audio_and_the_last_waits_for_the_end() -> None:
    words = "a b c d e f g h i j"
    clause = ClauseAudio(words, PCM16, StreamResampler(RATE, RATE), leading_space=True, expected_ms=1000)
    clause.push(tone(540))
    first = clause.deltas(ended=False)
    assert [ms for _, _, ms in first] == pytest.approx([500 / 3] * 3)  # 500 ms ready, 40 ms kept back
    assert "".join(w for _, w, _ in first) == " a b c d e"  # half the expected time: half the words
    clause.push(tone(1000))
    more = clause.deltas(ended=False)
    assert "".join(w for _, w, _ in more) == " f g h i"  # past the expectation: all but the last
    rest = clause.deltas(ended=True)
    assert [w for _, w, _ in rest] == [" j"] and rest[0][2] == MIN_DELTA_MS


def test_a_clause_without_audio_still_sends_its_words() -> None:
    clause = ClauseAudio("Hm.", PCM16, StreamResampler(RATE, RATE), leading_space=True, expected_ms=200)
    assert clause.deltas(ended=True) == [(b"", " Hm.", 0.0)]


async def test_cancelling_mid_clause_stops_at_once_and_closes_the_engine_stream() -> None:
    tts, inbox = ScriptedTTS(gated=True), Inbox()
    task = asyncio.create_task(run_response("r", plan(), ScriptedLLM("A long clause that is never finished."), tts,
                                            inbox.put))
    await inbox.wait(lambda i: i.audio)
    sent = len(inbox.items)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tts.release(50)
    await asyncio.sleep(0.05)
    assert len(inbox.items) == sent and tts.closed == 1 and tts.chunks_sent == 1


async def test_an_engine_error_mid_clause_fails_the_response() -> None:
    tts, inbox = ScriptedTTS(fail_after=3), Inbox()
    await run_response("r", plan(), ScriptedLLM("This clause breaks halfway through."), tts, inbox.put)
    assert isinstance(inbox.items[-1], ModelFailed) and inbox.items[-1].code == "tts_broken"
    assert tts.closed == 1
