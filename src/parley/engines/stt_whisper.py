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
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from parley.engines.errors import EngineError
from parley.engines.stt import Transcript, TranscriptDelta

log = logging.getLogger(__name__)

SETTING = "PARLEY_STT_MODEL"


class FasterWhisperSTT:
    """`threads`: CPU threads per transcription (None: CTranslate2's default, 4 or
    OMP_NUM_THREADS).  `cache_dir`: the hub cache to use instead of Hugging Face's.
    `local_files_only` (or HF_HUB_OFFLINE=1 in the environment when `load()` runs): use the hub
    cache only, never the network.  Other keyword arguments go to `WhisperModel.transcribe` as
    they are (e.g. `temperature=0.0`, `condition_on_previous_text=False`)."""

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
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        **options: Any,
    ) -> None:
        self.model = model
        self.threads = threads
        self.device = device
        self.compute_type = compute_type
        self.workers = max(1, workers)
        self.beam_size = beam_size
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.local_files_only = local_files_only
        self.options = options
        self.model_path: Path | None = None  # the local directory, once loaded
        self._whisper: Any = None
        self._load_lock = threading.Lock()  # not asyncio's: the engine may serve several loops
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=self.workers,
                                                                       thread_name_prefix="whisper")

    def __repr__(self) -> str:
        return f"FasterWhisperSTT(model={self.model!r})"

    @property
    def loaded(self) -> bool:
        return self._whisper is not None

    async def load(self) -> None:
        """Load the model (fetching it from the hub first if need be); does nothing once loaded."""
        if self._whisper is None:
            await asyncio.get_running_loop().run_in_executor(self._running_executor(), self._load_once)

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # running turns finish, then the model is freed
            self._executor = None
        self._whisper = None

    # --- loading ---------------------------------------------------------------------------

    def _load_once(self) -> None:
        with self._load_lock:
            if self._whisper is not None:
                return
            try:
                from faster_whisper import WhisperModel
            except ImportError as exc:
                raise EngineError("faster-whisper is not installed (pip install faster-whisper)",
                                  code="engine_unavailable") from exc  # fmt: skip
            path = self._model_dir()
            start = time.perf_counter()
            try:
                whisper = WhisperModel(path, device=self.device, compute_type=self.compute_type,
                                       cpu_threads=self.threads or 0, num_workers=self.workers)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - ctranslate2 raises RuntimeError/ValueError
                raise EngineError(f"{SETTING}={self.model!r}: faster-whisper could not load {path}: {exc}",
                                  code="model_load_failed") from exc  # fmt: skip
            log.info("faster-whisper model loaded",
                     extra={"model": self.model, "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip
            self.model_path, self._whisper = Path(path), whisper

    def _model_dir(self) -> str:
        """The local directory of the model, fetched from the hub if `model` is not one."""
        model = os.path.expanduser(self.model)
        if os.path.isdir(model):
            for needed in ("model.bin", "tokenizer.json"):
                if not os.path.isfile(os.path.join(model, needed)):
                    hint = " (convert with --copy_files tokenizer.json)" if needed == "tokenizer.json" else ""
                    raise EngineError(f"{SETTING}={self.model!r} is a directory without {needed}{hint}; "
                                      "it must hold a CTranslate2 Whisper model", code="model_not_found")  # fmt: skip
            return model
        if _looks_like_path(self.model):
            raise EngineError(f"{SETTING}={self.model!r}: no such directory (expected a CTranslate2 Whisper "
                              "model directory, a size such as 'small.en', or a hub id)", code="model_not_found")  # fmt: skip
        return self._download()

    def _download(self) -> str:
        from faster_whisper.utils import available_models, download_model

        if "/" not in self.model and self.model not in available_models():
            raise EngineError(f"{SETTING}={self.model!r} is not a directory, a hub id or a Whisper size "
                              f"({', '.join(available_models())})", code="model_not_found")  # fmt: skip
        offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        cache_only = self.local_files_only or offline_env
        log.info("fetching the STT model from the model hub (once; it is cached)",
                 extra={"model": self.model, "cache_only": cache_only})  # fmt: skip
        try:
            return download_model(self.model, local_files_only=cache_only, cache_dir=self.cache_dir)
        except Exception as exc:  # noqa: BLE001 - huggingface_hub's many errors, and httpx's
            unreachable = not cache_only and _caused_by(exc, {"TransportError", "ConnectionError", "TimeoutException"})
            if unreachable:
                why = "the hub could not be reached"
            elif cache_only:
                flag = "HF_HUB_OFFLINE" if offline_env else "local_files_only"
                why = f"{flag} is set and it is not in the hub cache"
            else:
                why = "the hub could not provide it"
            detail = " ".join(str(exc).split())[:300] or repr(exc)
            raise EngineError(
                f"{SETTING}={self.model!r}: cannot load it from the model hub: {why} ({type(exc).__name__}: "
                f"{detail}). Where the hub cannot be reached, set {SETTING} to a local CTranslate2 directory "
                "(fetch one elsewhere, e.g. `huggingface-cli download Systran/faster-whisper-small.en "
                "--local-dir DIR`)",
                code="model_unavailable" if unreachable else "model_not_found",
                retryable=unreachable,
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
            raise EngineError(f"expected mono int16 samples, got {pcm.dtype} {pcm.shape}", code="invalid_audio")
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
                options = {"beam_size": self.beam_size, "vad_filter": False, **self.options}
                segments, info = whisper.transcribe(pcm.astype(np.float32) / 32768.0, language=lang,
                                                    initial_prompt=prompt or None, **options)  # fmt: skip
                put("info", info)
                for segment in segments:  # lazy: each step decodes (part of) a 30 s window
                    if abort.is_set():
                        return
                    put("segment", segment.text)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put("error", exc)
            else:
                put("end", None)

        try:
            loop.run_in_executor(executor, work)  # reports through `queue`, never raises
        except RuntimeError as exc:  # shut down by aclose() meanwhile
            raise EngineError("the faster-whisper engine is closed", code="stt_unavailable") from exc
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
            abort.set()  # closed or cancelled early: the worker stops after the current window
        yield Transcript("".join(parts).strip(), language=detected or lang, audio_seconds=seconds)


def _looks_like_path(model: str) -> bool:
    """A filesystem path rather than a size or an "owner/name" hub id."""
    return (model.startswith(("/", "./", "../", "~", "\\")) or model.count("/") > 1
            or os.sep != "/" and os.sep in model)  # fmt: skip


def _caused_by(exc: BaseException, class_names: set[str]) -> bool:
    """Whether `exc` or an exception in its chain is (a subclass of) one of these classes, by
    name: huggingface_hub wraps httpx's (or httpx2's, or requests') errors in its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if {cls.__name__ for cls in type(current).__mro__} & class_names:
            return True
        current = current.__cause__ or current.__context__
    return False


def _transcribe_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, ValueError) and "language" in str(exc):
        return EngineError(f"faster-whisper: {str(exc).splitlines()[0][:300]}", code="invalid_language")
    if isinstance(exc, MemoryError):
        return EngineError("faster-whisper ran out of memory", code="stt_error", retryable=True)
    return EngineError(f"faster-whisper failed: {exc!r}"[:500], code="stt_error")
