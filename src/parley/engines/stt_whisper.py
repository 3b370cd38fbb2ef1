"""faster-whisper speech to text (Whisper on CTranslate2), in process, on the CPU.

`model` (the `PARLEY_STT_MODEL` setting) is either a local CTranslate2 directory (what
`ct2-transformers-converter --copy_files tokenizer.json ...` writes, or a snapshot of a hub
repository such as `Systran/faster-whisper-small.en`), or a name to fetch once from the model
hub into its cache: a size ("tiny.en", "small.en", "large-v3", ...) or a hub id
("Systran/faster-whisper-small").  A local directory must hold `tokenizer.json`: without it
faster-whisper would quietly go to the hub for one, which fails offline.

`load()` reads the model in a worker thread (a few seconds for "small", longer the first time,
when it is downloaded); every failure becomes an `EngineError` that names `PARLEY_STT_MODEL`.
Transcription runs in the engine's own executor (`workers` threads, each able to run the model
at once); faster-whisper decodes in 30-second windows and yields segments as it goes, and each
segment is passed on as a `TranscriptDelta` at once.  Cancelling the consumer stops the work
after the current window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from parley.engines.errors import EngineError
from parley.engines.stt import Transcript, TranscriptDelta

log = logging.getLogger(__name__)

SETTING = "PARLEY_STT_MODEL"


class FasterWhisperSTT:
    """`threads`: CPU threads per transcription (None: CTranslate2's default, 4 or
    OMP_NUM_THREADS).  `download_root`: the hub cache to use instead of Hugging Face's.
    `options` go to `WhisperModel.transcribe` as they are (e.g. `{"temperature": 0.0}`)."""

    name = "faster-whisper"
    sample_rate = 16000
    streams_partials = True

    def __init__(
        self,
        model: str,
        *,
        threads: int | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        workers: int = 1,
        beam_size: int = 5,
        download_root: str | None = None,
        local_files_only: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.threads = threads
        self.device = device
        self.compute_type = compute_type
        self.workers = max(1, workers)
        self.beam_size = beam_size
        self.download_root = download_root
        self.local_files_only = local_files_only
        self.options = dict(options or {})
        self._whisper: Any = None
        self._load_lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=self.workers,
                                                                       thread_name_prefix="whisper")

    def __repr__(self) -> str:
        return f"FasterWhisperSTT(model={self.model!r})"

    @property
    def loaded(self) -> bool:
        return self._whisper is not None

    async def load(self) -> None:
        """Load (downloading first if need be) the model; does nothing once loaded."""
        async with self._load_lock:
            if self._whisper is None:
                executor = self._running_executor()
                self._whisper = await asyncio.get_running_loop().run_in_executor(executor, self._load_blocking)

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # running turns finish, then the model is freed
            self._executor = None
        self._whisper = None

    # --- loading ---------------------------------------------------------------------------

    def _load_blocking(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineError("faster-whisper is not installed (pip install faster-whisper)",
                              code="engine_unavailable") from exc  # fmt: skip
        path = self._model_dir()
        try:
            whisper = WhisperModel(path, device=self.device, compute_type=self.compute_type,
                                   cpu_threads=self.threads or 0, num_workers=self.workers)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - ctranslate2 raises RuntimeError/ValueError, the hub its own
            raise EngineError(f"{SETTING}={self.model!r}: faster-whisper could not load {path}: {exc}",
                              code="model_load_failed") from exc  # fmt: skip
        log.info("faster-whisper model loaded", extra={"model": self.model, "path": path})
        return whisper

    def _model_dir(self) -> str:
        """The local directory of the model, fetched from the hub if `model` is not one."""
        model = os.path.expanduser(self.model)
        if os.path.isdir(model):
            for needed in ("model.bin", "tokenizer.json"):
                if not os.path.isfile(os.path.join(model, needed)):
                    hint = " (convert with --copy_files tokenizer.json)" if needed == "tokenizer.json" else ""
                    raise EngineError(f"{SETTING}={self.model!r} is a directory without {needed}{hint}; "
                                      "it must be a CTranslate2 Whisper model", code="model_not_found")  # fmt: skip
            return model
        if _looks_like_path(self.model):
            raise EngineError(f"{SETTING}={self.model!r}: no such directory (a CTranslate2 Whisper model "
                              "directory, a size such as 'small.en' or a hub id)", code="model_not_found")  # fmt: skip
        return self._download()

    def _download(self) -> str:
        from faster_whisper.utils import available_models, download_model

        if "/" not in self.model and self.model not in available_models():
            raise EngineError(f"{SETTING}={self.model!r} is not a directory, a hub id or a Whisper size "
                              f"({', '.join(available_models())})", code="model_not_found")  # fmt: skip
        log.info("fetching the STT model from the model hub (once; it is cached)", extra={"model": self.model})
        try:
            return download_model(self.model, local_files_only=self.local_files_only, cache_dir=self.download_root)
        except Exception as exc:  # noqa: BLE001 - huggingface_hub's many errors, and httpx's
            offline = _hub_offline(exc) or self.local_files_only
            raise EngineError(
                f"{SETTING}={self.model!r}: could not fetch it from the model hub "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
                f"; where the hub cannot be reached, set {SETTING} to a local CTranslate2 directory "
                "(e.g. `huggingface-cli download Systran/faster-whisper-small.en --local-dir DIR` elsewhere)",
                code="model_not_found",
                retryable=not offline,
            ) from exc

    def _running_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            raise EngineError("the faster-whisper engine is closed", code="stt_unavailable")
        return self._executor

    # --- transcription ---------------------------------------------------------------------

    async def transcribe(
        self, pcm: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> AsyncIterator[TranscriptDelta | Transcript]:
        """One delta per segment as it is decoded, then the whole `Transcript`.  `language` is
        an ISO-639-1 code ("en"; "en-US" is read as "en"); None detects it (multilingual models)."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise TypeError(f"expected mono int16 samples, got {pcm.dtype} with shape {pcm.shape}")
        seconds = pcm.size / self.sample_rate
        if pcm.size == 0:
            yield Transcript("", language=language, audio_seconds=0.0)
            return
        await self.load()
        whisper, executor = self._whisper, self._running_executor()
        lang = language.replace("_", "-").split("-")[0].lower() if language else None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        abort = threading.Event()

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is gone: nobody is listening any more
                abort.set()

        def work() -> None:
            try:
                segments, info = whisper.transcribe(
                    pcm.astype(np.float32) / 32768.0, language=lang, initial_prompt=prompt or None,
                    beam_size=self.beam_size, vad_filter=False, **self.options,
                )  # fmt: skip
                put("info", info)
                for segment in segments:  # lazy: each step decodes (part of) a 30 s window
                    if abort.is_set():
                        return
                    put("segment", segment.text)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put("error", exc)
            else:
                put("end", None)

        future = loop.run_in_executor(executor, work)
        detected: str | None = None
        parts: list[str] = []
        try:
            while True:
                kind, value = await queue.get()
                if kind == "segment":
                    text = value if parts else value.lstrip()
                    if text:
                        parts.append(text)
                        yield TranscriptDelta(text)
                elif kind == "info":
                    detected = getattr(value, "language", None)
                elif kind == "error":
                    raise _transcribe_error(value) from value
                else:
                    break
        finally:
            abort.set()
            if not future.done():
                future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        yield Transcript("".join(parts).strip(), language=detected or lang, audio_seconds=seconds)


def _looks_like_path(model: str) -> bool:
    """A filesystem path rather than a size or an "owner/name" hub id."""
    return (model.startswith(("/", "./", "../", "~", "\\")) or model.count("/") > 1
            or os.sep != "/" and os.sep in model)  # fmt: skip


def _hub_offline(exc: BaseException) -> bool:
    """The hub was not even asked: offline mode, or a cache-only lookup that found nothing."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError"})


def _transcribe_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, ValueError) and "language" in str(exc):
        return EngineError(f"faster-whisper: {str(exc).splitlines()[0][:300]}", code="invalid_language")
    if isinstance(exc, MemoryError):
        return EngineError("faster-whisper ran out of memory", code="stt_error", retryable=True)
    return EngineError(f"faster-whisper failed: {exc!r}"[:500], code="stt_error")
