"""Response pipelines: run the model (and, for audio, text-to-speech) for one response and feed
the results back to the session's inbox as core inputs.

Text responses stream LLM deltas straight through.  Audio responses run two tasks: the LLM
reader cuts the text into clauses (`SentenceChunker`) and queues them; the speaker synthesises
each clause as soon as it is queued and sends its audio as the engine produces it (`ClauseAudio`:
resampled and encoded chunk by chunk, in deltas of MIN_DELTA_MS to AUDIO_DELTA_MS, the clause's
words spread over them), so the first audio waits for the first chunk of one clause, not for the
clause or the reply.  Tool calls pass through at once.  Everything stops when the response's task
is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from ..audio.formats import AudioFormat
from ..audio.resample import StreamResampler
from ..core.io import ModelAudio, ModelDone, ModelFailed, ModelText, ModelToolCall, ResponsePlan
from ..engines.errors import EngineError
from ..engines.llm import Finished, LLMEngine, TextDelta, ToolCallDelta
from ..engines.tts import TTSEngine
from . import metrics
from .chunker import SentenceChunker

log = logging.getLogger("parley.pipeline")

Put = Callable[[Any], Awaitable[None]]
AUDIO_DELTA_MS = 200  # longest audio delta; a clause's words are spread over its deltas
MIN_DELTA_MS = 40  # shortest audio delta, but for a clause shorter than this
MS_PER_CHAR = 65.0  # a first guess at how long speech takes per character of text, at speed 1
_END = object()


async def run_response(response_id: str, plan: ResponsePlan, llm: LLMEngine, tts: TTSEngine | None, put: Put) -> None:
    """The task body for one response; never raises except on cancellation."""
    try:
        if plan.modality == "audio":
            if tts is None:
                raise EngineError(
                    "No text-to-speech engine is available for audio responses. Configure one with "
                    "PARLEY_TTS_ENGINE, or ask for output_modalities [\"text\"].", code="tts_unavailable")
            await _audio_response(response_id, plan, llm, tts, put)
        else:
            await _text_response(response_id, plan, llm, put)
    except asyncio.CancelledError:
        raise
    except EngineError as err:
        await put(ModelFailed(response_id, err.message, err.code))
    except Exception:  # a bug in an engine or here: fail this response, not the session
        log.exception("response pipeline crashed", extra={"response_id": response_id})
        await put(ModelFailed(response_id, "The server had an error while processing your request.", "server_error"))


async def _text_response(response_id: str, plan: ResponsePlan, llm: LLMEngine, put: Put) -> None:
    began: float | None = time.monotonic()
    async with contextlib.aclosing(llm.stream(plan.request)) as stream:  # type: ignore[type-var]
        async for ev in stream:
            began = _first_token(began)
            if isinstance(ev, TextDelta):
                await put(ModelText(response_id, ev.text))
            elif isinstance(ev, ToolCallDelta):
                await put(ModelToolCall(response_id, ev.index, ev.arguments, ev.name))
            elif isinstance(ev, Finished):
                await put(ModelDone(response_id, ev.reason, ev.usage))
                return
    raise EngineError("The model stream ended without finishing.", code="llm_bad_stream", retryable=True)


async def _audio_response(response_id: str, plan: ResponsePlan, llm: LLMEngine, tts: TTSEngine, put: Put) -> None:
    clauses: asyncio.Queue[Any] = asyncio.Queue()
    fmt = AudioFormat.from_session(plan.output_format)
    speaker = asyncio.create_task(_speak(response_id, clauses, tts, plan, fmt, put))
    finished: Finished | None = None
    began: float | None = time.monotonic()
    try:
        chunker = SentenceChunker()
        async with contextlib.aclosing(llm.stream(plan.request)) as stream:  # type: ignore[type-var]
            async for ev in stream:
                began = _first_token(began)
                if isinstance(ev, TextDelta):
                    for piece in chunker.push(ev.text):
                        clauses.put_nowait(piece)
                elif isinstance(ev, ToolCallDelta):
                    await put(ModelToolCall(response_id, ev.index, ev.arguments, ev.name))
                elif isinstance(ev, Finished):
                    finished = ev
                    break
        if finished is None:
            raise EngineError("The model stream ended without finishing.", code="llm_bad_stream", retryable=True)
        for piece in chunker.flush():
            clauses.put_nowait(piece)
        clauses.put_nowait(_END)
        await speaker
        await put(ModelDone(response_id, finished.reason, finished.usage))
    finally:
        if not speaker.done():
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await speaker


async def _speak(response_id: str, clauses: asyncio.Queue[Any], tts: TTSEngine, plan: ResponsePlan,
                 fmt: AudioFormat, put: Put) -> None:
    resampler = StreamResampler(tts.sample_rate, fmt.rate)  # flushed at each clause's end
    pace = SpeechPace(plan.speed)
    first = True
    while (clause := await clauses.get()) is not _END:
        audio = ClauseAudio(clause, fmt, resampler, leading_space=not first, expected_ms=pace.expected_ms(clause))
        await _speak_clause(response_id, clause, audio, tts, plan, put)
        pace.learn(clause, audio.sent_ms)
        first = False


async def _speak_clause(response_id: str, clause: str, audio: ClauseAudio, tts: TTSEngine, plan: ResponsePlan,
                        put: Put) -> None:
    """Send one clause's audio as the engine produces it, in whatever batches have arrived."""
    reader = ChunkReader(tts.synthesize(clause, voice=plan.voice, speed=plan.speed, language=plan.language))
    try:
        ended = False
        while not ended:
            chunks, ended = await reader.batch()
            for chunk in chunks:
                audio.push(chunk)
            for data, words, ms in audio.deltas(ended=ended):
                await put(ModelAudio(response_id, data, words, ms))
    finally:
        await reader.aclose()


def _first_token(began: float | None) -> None:
    if began is not None:
        metrics.LLM_TTFT.observe(time.monotonic() - began)
    return None


class ChunkReader:
    """Reads an engine's audio stream in a task of its own, so that the speaker can take every
    chunk that has already arrived in one go (fewer, larger deltas when an engine produces a
    clause at once) and never waits for one that has not (the first audio leaves early when it
    streams).  Closing the reader cancels the task, which closes the engine's stream."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(stream, time.monotonic()))

    async def _read(self, stream: AsyncIterator[bytes], began: float) -> None:
        first = True
        try:
            async with contextlib.aclosing(stream) as audio:  # type: ignore[type-var]
                async for chunk in audio:
                    if first:
                        metrics.TTS_FIRST_AUDIO.observe(time.monotonic() - began)
                        first = False
                    self._queue.put_nowait(chunk)
        except Exception as exc:  # handed to the speaker, which fails the response with it
            self._queue.put_nowait(exc)
            return
        self._queue.put_nowait(_END)

    async def batch(self) -> tuple[list[bytes], bool]:
        """The chunks that have arrived (waiting for at least one, or the end), and whether the
        stream has ended.  Raises what the engine raised."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        if isinstance(items[-1], Exception):
            raise items[-1]
        ended = items[-1] is _END
        return (items[:-1] if ended else items), ended

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class SpeechPace:
    """How long a clause will take to say, for spreading its words over its audio before the
    engine has finished it: MS_PER_CHAR / speed at first, then the response's own pace."""

    def __init__(self, speed: float) -> None:
        self._default = MS_PER_CHAR / (speed or 1.0)
        self._chars = 0
        self._ms = 0.0

    def expected_ms(self, text: str) -> float:
        per_char = self._ms / self._chars if self._chars else self._default
        return per_char * max(1, len(text))

    def learn(self, text: str, ms: float) -> None:
        if ms > 0 and text:
            self._chars += len(text)
            self._ms += ms


class ClauseAudio:
    """One clause's audio on its way to the wire: resampled (by the response's streaming
    resampler, so chunk boundaries leave no clicks) and encoded as it arrives, cut into deltas
    of MIN_DELTA_MS to AUDIO_DELTA_MS, with the clause's words spread over them in proportion
    to time.

    The core records, after each delta, how much audio and text have been sent; a truncation
    keeps the words of the deltas heard.  While the clause may go on its length is unknown, so
    words are spread over `expected_ms`, the last one always kept back, and the last
    MIN_DELTA_MS of audio stay buffered: the clause's remaining words then leave with audio.
    Once the end is known, the remaining words are spread over the remaining audio."""

    def __init__(self, text: str, fmt: AudioFormat, resampler: StreamResampler, *, leading_space: bool,
                 expected_ms: float) -> None:
        self._fmt = fmt
        self._resampler = resampler
        self._words = text.split(" ") if text else []
        self._leading_space = leading_space
        self._given = 0  # words sent
        self._pending: list[np.ndarray] = []  # wire samples not sent yet
        self._pending_samples = 0
        self._sent = 0  # wire samples sent
        self._expected = max(1, round(expected_ms * fmt.rate / 1000))
        self._rest: tuple[int, int, int] | None = None  # (sent, words given, total) once the end is known
        self._min_samples = max(1, fmt.rate * MIN_DELTA_MS // 1000)
        self._max_samples = max(1, fmt.rate * AUDIO_DELTA_MS // 1000)

    @property
    def sent_ms(self) -> float:
        return self._sent * 1000 / self._fmt.rate

    def push(self, chunk: bytes) -> None:
        """Take a chunk of engine PCM16."""
        self._add(self._resampler.push(np.frombuffer(chunk, dtype="<i2")))

    def deltas(self, *, ended: bool) -> list[tuple[bytes, str, float]]:
        """The deltas (wire bytes, words, milliseconds) ready to send; with `ended`, all the
        rest, the words included even if there was no audio."""
        if ended:
            self._add(self._resampler.flush())
            self._rest = (self._sent, self._given, self._sent + self._pending_samples)
            ready = self._pending_samples
        else:
            ready = self._pending_samples - self._min_samples
            if ready < self._min_samples:
                return []
        out = [self._delta(part) for part in self._take(ready)]
        if ended and self._given < len(self._words):
            out.append((b"", self._words_until(len(self._words)), 0.0))
        return out

    def _add(self, wire: np.ndarray) -> None:
        if wire.size:
            self._pending.append(wire)
            self._pending_samples += wire.size

    def _take(self, n: int) -> list[np.ndarray]:
        """The first `n` pending samples, in even parts of at most AUDIO_DELTA_MS."""
        if n <= 0:
            return []
        pending = np.concatenate(self._pending)
        rest = pending[n:]
        self._pending = [rest] if rest.size else []
        self._pending_samples = rest.size
        return np.array_split(pending[:n], -(-n // self._max_samples))

    def _delta(self, part: np.ndarray) -> tuple[bytes, str, float]:
        self._sent += part.size
        return self._fmt.encode(part), self._words_until(self._words_due()), part.size * 1000 / self._fmt.rate

    def _words_due(self) -> int:
        n = len(self._words)
        if self._rest is not None:
            sent0, given0, total = self._rest
            return given0 + (n - given0) * (self._sent - sent0) // max(1, total - sent0)
        return min(n - 1, n * self._sent // self._expected)

    def _words_until(self, due: int) -> str:
        if due <= self._given:
            return ""
        piece = " ".join(self._words[self._given:due])
        if self._given > 0 or self._leading_space:
            piece = " " + piece
        self._given = due
        return piece
