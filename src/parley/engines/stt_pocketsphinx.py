"""PocketSphinx speech to text: embedded, offline, English, small.

The `pocketsphinx` package ships CMU's US English model (acoustic model, a 3-gram language
model and a pronouncing dictionary, 37 MB), so this engine needs no download and no other
server: the fallback when no Whisper model can be loaded.  It is far less accurate than Whisper
(about 9% word errors on clear synthetic speech, much worse on noisy or accented speech) but
fast (real-time factor ~0.2 on one core).

One decoder is created up front (~0.25 s) and shared: decoding runs in the engine's own
one-thread executor under a lock, so concurrent sessions take turns and the event loop never
blocks.  Audio is fed in one-second slices, and cancelling the consumer sets a flag checked
between slices, so abandoned work stops within a fraction of a second.  PocketSphinx has no
useful partial results (its hypothesis changes until the end), so the transcript comes at the
end: one delta per word (when `word_deltas` is on), then the whole `Transcript`.  The decoder
adapts its cepstral mean normalisation across turns, so a result can depend a little on the
audio decoded before it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from parley.engines.errors import EngineError
from parley.engines.stt import Transcript, TranscriptDelta

_SLICE = 16000  # samples fed to the decoder between checks of the abort flag


class PocketSphinxSTT:
    """`hmm`, `lm` and `dictionary` override the packaged model's acoustic model directory,
    language model and pronouncing dictionary (paths); the defaults are the package's US English
    model.  `options` are further decoder settings, by pocketsphinx's names without the dash
    (`{"topn": 2}` decodes ~1.5x faster on the test speech with the same error rate)."""

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
    ) -> None:
        self.word_deltas = word_deltas
        self._lock = threading.Lock()
        self._decoder = _make_decoder({"hmm": hmm, "lm": lm, "dict": dictionary}, dict(options or {}))
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1,
                                                                       thread_name_prefix="pocketsphinx")

    def __repr__(self) -> str:
        return "PocketSphinxSTT()"

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # queued turns still finish
            self._executor = None

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
        executor = self._executor
        if executor is None:
            raise EngineError("the pocketsphinx engine is closed", code="stt_unavailable")
        seconds = pcm.size / self.sample_rate
        if pcm.size == 0:
            yield Transcript("", language="en", audio_seconds=0.0)
            return
        abort = threading.Event()
        try:
            text = await asyncio.get_running_loop().run_in_executor(executor, self._decode, pcm, abort)
        except RuntimeError as exc:  # executor shut down, or a decoder failure
            raise EngineError(f"pocketsphinx failed: {exc}", code="stt_error") from exc
        finally:
            abort.set()  # cancelled: the worker stops at its next slice
        if self.word_deltas:
            for i, word in enumerate(text.split()):
                yield TranscriptDelta(word if i == 0 else " " + word)
        yield Transcript(text, language="en", audio_seconds=seconds)

    def _decode(self, pcm: np.ndarray, abort: threading.Event) -> str:
        """Blocking: the hypothesis for `pcm` ("" for silence or when aborted)."""
        data = pcm.astype("<i2", copy=False)
        with self._lock:
            if abort.is_set():
                return ""
            decoder = self._decoder
            decoder.start_utt()
            try:
                for start in range(0, data.size, _SLICE):
                    if abort.is_set():
                        break
                    decoder.process_raw(data[start : start + _SLICE].tobytes(), full_utt=False)
            finally:
                decoder.end_utt()
            if abort.is_set():
                return ""
            hyp = decoder.hyp()
        return " ".join((hyp.hypstr if hyp is not None else "").split())


def _make_decoder(paths: dict[str, str | None], options: dict[str, Any]) -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise EngineError("pocketsphinx is not installed (pip install pocketsphinx)",
                          code="engine_unavailable") from exc  # fmt: skip
    missing = [f"{key}={path}" for key, path in paths.items() if path and not os.path.exists(path)]
    if missing:
        raise EngineError(f"pocketsphinx model files not found: {', '.join(missing)}", code="model_not_found")
    options = {"loglevel": "FATAL", **options, **{key: path for key, path in paths.items() if path}}
    try:
        return pocketsphinx.Decoder(**options)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise EngineError(f"pocketsphinx could not load its model: {exc}", code="engine_unavailable") from exc
