"""PocketSphinx speech to text: embedded, offline, English, small.

The `pocketsphinx` package ships CMU's US English model (acoustic model, a 3-gram language
model and a pronouncing dictionary, 37 MB), so this engine needs no download and no other
server: the fallback when no Whisper model can be loaded.  It is far less accurate than Whisper
(about 9% word errors on clear synthetic speech, much worse on noisy or accented speech) but
fast (real-time factor ~0.2 on one core).

Decoding runs in worker processes (`workers`, default 1; `PARLEY_STT_WORKERS`), each with its
own decoder, started when the engine is built (each loads its model, ~0.25 s, in parallel) and
stopped by `aclose()`.  Not in a thread of the server: the decoder holds the GIL inside
`process_raw`, which stalled the server's event loop, and so every live session, for 0.1-0.35 s
per transcription.  Concurrent turns take the next idle worker, or wait for one.

Why `subprocess` and a framed protocol on pipes (`stt_pocketsphinx_worker`) rather than
`multiprocessing`: the worker is `python -m` one small module, not a re-import of the server's
`__main__` (what the spawn and forkserver start methods do); nothing is pickled; and a worker
that dies is an end of file on its pipe.  Not `asyncio.create_subprocess_exec`: the engine is
built outside any event loop (by the server's loader thread, by test fixtures, benchmarks) and
used from several loops in tests, and asyncio's pipes belong to one loop.  Instead each turn
waits for its reply in one thread of a small executor (`stt_pocketsphinx_pool`), without the GIL.

Audio is fed to the decoder in one-second slices; cancelling the consumer stops waiting at once
and tells the worker (on a separate abort pipe) to stop at its next slice, so abandoned work
stops within a fraction of a second and the worker is ready for the next turn.  A worker that
dies (killed, crashed) fails its one transcription with a retryable `EngineError` and is
replaced at once.  PocketSphinx has no useful partial results (its hypothesis changes until
the end), so the transcript comes at the end: one delta per word (when `word_deltas` is on),
then the whole `Transcript`.  Each decoder adapts its cepstral mean normalisation across turns,
so a result can depend a little on the audio its worker decoded before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np

from parley.engines.errors import EngineError
from parley.engines.stt import Transcript, TranscriptDelta
from parley.engines.stt_pocketsphinx_pool import SphinxPool


class PocketSphinxSTT:
    """`hmm`, `lm` and `dictionary` override the packaged model's acoustic model directory,
    language model and pronouncing dictionary (paths); the defaults are the package's US English
    model.  `options` are further decoder settings, by pocketsphinx's names without the dash
    (`{"topn": 2}` decodes ~1.5x faster on the test speech with the same error rate).  `workers`
    is the number of decoder processes.  Building the engine blocks until they have loaded."""

    name = "pocketsphinx"
    sample_rate = 16000
    streams_partials = False

    def __init__(
        self,
        *,
        hmm: str | None = None,
        lm: str | None = None,
        dictionary: str | None = None,
        word_deltas: bool = True,
        options: Mapping[str, Any] | None = None,
        workers: int = 1,
    ) -> None:
        self.word_deltas = word_deltas
        config = {"paths": {"hmm": hmm, "lm": lm, "dict": dictionary}, "options": dict(options or {})}
        self._pool: SphinxPool | None = SphinxPool(config, workers)

    def __repr__(self) -> str:
        return "PocketSphinxSTT()"

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids (for monitoring and tests)."""
        return self._pool.pids if self._pool is not None else []

    async def aclose(self) -> None:
        """Stop the workers (turns still running fail) and reap them."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)

    async def transcribe(
        self, pcm: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> AsyncIterator[TranscriptDelta | Transcript]:
        """English only: a `language` other than English ("en", "en-US", ...) is an error.
        `prompt` is ignored (PocketSphinx cannot use one)."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise EngineError(f"expected mono int16 samples, got {pcm.dtype} {pcm.shape}", code="invalid_audio")
        if language and language.lower().split("-")[0].split("_")[0] not in ("en", "english"):
            raise EngineError(
                f"pocketsphinx transcribes English only, not {language!r}; configure a Whisper model "
                "(PARLEY_STT_MODEL) or an STT server (PARLEY_STT_BASE_URL) for other languages",
                code="unsupported_language",
            )
        pool = self._pool
        if pool is None:
            raise EngineError("the pocketsphinx engine is closed", code="stt_unavailable")
        seconds = pcm.size / self.sample_rate
        if pcm.size == 0:
            yield Transcript("", language="en", audio_seconds=0.0)
            return
        text = await pool.transcribe(pcm.astype("<i2", copy=False).tobytes())
        if self.word_deltas:
            for i, word in enumerate(text.split()):
                yield TranscriptDelta(word if i == 0 else " " + word)
        yield Transcript(text, language="en", audio_seconds=seconds)
