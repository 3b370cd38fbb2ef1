"""The runtime half of listening: runs VAD inline on appended audio and speech-to-text in tasks.

VAD inference is ~50-130 µs per 32 ms window, so it runs right after the append that produced
the audio, in the event loop, and its probabilities go straight back into the core before the
session's next input: turn decisions keep audio order.  The windows of all sessions that arrive
together share one model call (`vad_batch.VadBatcher`).  Transcription takes longer and runs as a
task whose results come back through the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..audio.formats import AudioFormat
from ..audio.resample import StreamResampler, resample
from ..core.io import Transcribe, TranscriptDelta, TranscriptDone, TranscriptFailed, TurnTranscript, VadResult
from ..engines import stt as stt_api
from ..engines.errors import EngineError
from ..engines.vad import MultiRateVADEngine, VADEngine, VADStream
from .vad_batch import VadBatcher, shared_batcher

log = logging.getLogger("parley.listening")

Put = Callable[[Any], Awaitable[None]]

#: soxr quality of the resampler in front of the VAD: "QQ" has no filter delay, so speech reaches
#: the VAD (and barge-in fires) ~20 ms sooner than with "HQ"
VAD_RESAMPLE_QUALITY = "QQ"


class VadRunner:
    """One session's VAD stream, fed with wire audio, returning core `VadResult`s.

    Made inside the event loop: with an engine that batches, its windows go through the loop's
    shared `VadBatcher` (or `batcher`); otherwise the stream decides them inline."""

    _UNSET: Any = object()

    def __init__(self, engine: VADEngine, batcher: VadBatcher | None = _UNSET) -> None:
        self.engine = engine
        self.stream: VADStream = engine.stream()
        self._default_rate = self.stream.sample_rate
        self._batcher = shared_batcher(engine) if batcher is VadRunner._UNSET else batcher
        self._fmt: dict[str, Any] | None = None
        self._resampler: StreamResampler | None = None

    @property
    def window_ms(self) -> float:
        """The current stream's decision window (32 ms for Silero at either rate)."""
        return 1000.0 * self.stream.window_samples / self.stream.sample_rate

    def _use_format(self, fmt: dict[str, Any]) -> None:
        """Decode the wire format; decide at its rate when the model runs at it natively
        (8 kHz telephone audio: no upsampling, half the model's work), else resample to the
        stream's rate.  A change of rate starts a new stream (the old one's state is of the
        other rate)."""
        self._fmt = dict(fmt)
        wire = AudioFormat.from_session(fmt)
        self._decode = wire.decode
        native = isinstance(self.engine, MultiRateVADEngine) and wire.rate in self.engine.rates
        rate = wire.rate if native else self._default_rate
        if rate != self.stream.sample_rate:
            self.stream = self.engine.stream(rate) if native else self.engine.stream()
        self._resampler = (StreamResampler(wire.rate, self.stream.sample_rate, quality=VAD_RESAMPLE_QUALITY)
                           if wire.rate != self.stream.sample_rate else None)

    async def process(self, audio: bytes, fmt: dict[str, Any]) -> VadResult:
        if fmt != self._fmt:
            self._use_format(fmt)
        pcm = self._decode(audio)
        if self._resampler is not None:
            pcm = self._resampler.push(pcm)
        if self._batcher is None:
            return VadResult(self.stream.process(pcm), self.window_ms)
        return VadResult(await self._batcher.process(self.stream, pcm), self.window_ms)  # type: ignore[arg-type]


def for_engine(audio: bytes, fmt: dict[str, Any], engine: stt_api.STTEngine) -> tuple[np.ndarray, dict[str, Any]]:
    """The user's audio as `engine` takes it, and the arguments that say its rate: as it arrived
    for an engine that takes any rate (no resampling, no invented bandwidth for 8 kHz calls),
    else resampled to the engine's rate."""
    wire = AudioFormat.from_session(fmt)
    pcm = wire.decode(audio)
    if getattr(engine, "takes_any_rate", False):  # stt_api.AnyRateSTTEngine
        return pcm, {"sample_rate": wire.rate}
    rate = engine.sample_rate
    return (resample(pcm, wire.rate, rate) if wire.rate != rate else pcm), {}


async def run_transcription(job: Transcribe, engine: stt_api.STTEngine | None, put: Put) -> None:
    """Transcribe one committed item (or a turn so far, for semantic VAD); never raises except
    on cancellation."""
    cfg = job.config or {}
    try:
        if engine is None:
            raise EngineError("No speech-to-text engine is available. Configure one with PARLEY_STT_ENGINE.",
                              code="stt_unavailable")
        pcm, rate = for_engine(job.audio, job.fmt, engine)
        final: stt_api.Transcript | None = None
        stream = engine.transcribe(pcm, language=cfg.get("language"), prompt=cfg.get("prompt"), **rate)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for ev in stream:
                if isinstance(ev, stt_api.TranscriptDelta) and job.item_id is not None:
                    await put(TranscriptDelta(job.item_id, ev.text))
                elif isinstance(ev, stt_api.Transcript):
                    final = ev
        if final is None:
            raise EngineError("The speech-to-text engine returned no transcript.", code="transcription_error")
        if job.turn is not None:
            await put(TurnTranscript(job.turn, final.text))
        elif job.item_id is not None:
            usage = None
            if final.input_tokens is not None and final.output_tokens is not None:
                usage = {"type": "tokens", "input_tokens": final.input_tokens, "output_tokens": final.output_tokens,
                         "total_tokens": final.input_tokens + final.output_tokens,
                         "input_token_details": {"text_tokens": 0, "audio_tokens": final.input_tokens}}
            await put(TranscriptDone(job.item_id, final.text, usage, language=final.language))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed transcript must not end the session
        if not isinstance(exc, EngineError):
            log.exception("transcription crashed")
        message = exc.message if isinstance(exc, EngineError) else "The server had an error while transcribing."
        code = exc.code if isinstance(exc, EngineError) else "server_error"
        if job.turn is not None:
            await put(TurnTranscript(job.turn, ""))
        elif job.item_id is not None:
            await put(TranscriptFailed(job.item_id, message, code))
