"""Response pipelines: run the model (and, for audio, text-to-speech) for one response and feed
the results back to the session's inbox as core inputs.

Text responses stream LLM deltas straight through.  Audio responses run two tasks: the LLM
reader cuts the text into clauses (`SentenceChunker`) and queues them; the speaker synthesises
each clause as soon as it is queued, so the first audio waits for one clause, not the reply.
Tool calls pass through at once.  Everything stops when the response's task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..audio.formats import AudioFormat
from ..audio.resample import resample
from ..core.io import ModelAudio, ModelDone, ModelFailed, ModelText, ModelToolCall, ResponsePlan
from ..engines.errors import EngineError
from ..engines.llm import Finished, LLMEngine, TextDelta, ToolCallDelta
from ..engines.tts import TTSEngine
from . import metrics
from .chunker import SentenceChunker

log = logging.getLogger("parley.pipeline")

Put = Callable[[Any], Awaitable[None]]
AUDIO_DELTA_MS = 200  # longest audio delta; a clause's words are spread over its deltas
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
    first = True
    while True:
        clause = await clauses.get()
        if clause is _END:
            return
        chunks: list[bytes] = []
        began = time.monotonic()
        async with contextlib.aclosing(tts.synthesize(clause, voice=plan.voice, speed=plan.speed)) as audio:  # type: ignore[type-var]
            async for chunk in audio:
                if not chunks:
                    metrics.TTS_FIRST_AUDIO.observe(time.monotonic() - began)
                chunks.append(chunk)
        pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
        if pcm.size == 0:
            await put(ModelAudio(response_id, b"", clause if first else " " + clause, 0.0))
        else:
            for audio_bytes, words, ms in split_clause(pcm, tts.sample_rate, fmt, clause, leading_space=not first):
                await put(ModelAudio(response_id, audio_bytes, words, ms))
        first = False


def _first_token(began: float | None) -> None:
    if began is not None:
        metrics.LLM_TTFT.observe(time.monotonic() - began)
    return None


def split_clause(pcm: np.ndarray, rate: int, fmt: AudioFormat, text: str, *, leading_space: bool) -> list[tuple[bytes, str, float]]:
    """Resample a clause's audio to the wire format and cut it into deltas of at most
    AUDIO_DELTA_MS, spreading the clause's words over them in proportion to time."""
    wire = resample(pcm, rate, fmt.rate) if rate != fmt.rate else pcm
    per_delta = max(1, fmt.rate * AUDIO_DELTA_MS // 1000)
    n = max(1, -(-len(wire) // per_delta))
    words = text.split(" ")
    out = []
    for i in range(n):
        part = wire[i * per_delta:(i + 1) * per_delta]
        lo, hi = len(words) * i // n, len(words) * (i + 1) // n
        piece = " ".join(words[lo:hi])
        if piece and (lo > 0 or leading_space):
            piece = " " + piece
        out.append((fmt.encode(part), piece, len(part) * 1000.0 / fmt.rate))
    return out
