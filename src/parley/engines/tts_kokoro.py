"""Kokoro-82M text to speech, in process, through the `kokoro-onnx` package.

    tts = KokoroTTS("/models/kokoro-v1.0.onnx", "/models/voices-v1.0.bin")
    tts = KokoroTTS("/models/kokoro-v1.0.onnx", None)   # voices*.bin next to the model
    tts = KokoroTTS("fastrtc/kokoro-onnx:kokoro-v1.0.onnx", None)   # from the model hub

`model_path` (setting PARLEY_TTS_MODEL) is a kokoro-onnx model file (`kokoro-v1.0.onnx`, or
its fp16/int8 variants) or a hub id ``owner/repo:file.onnx``; `voices_path` (setting
PARLEY_TTS_VOICES) is the matching `voices-v1.0.bin` (an .npz of style tables), a hub id, or
None to take `voices*.bin` beside a local model / `voices-v1.0.bin` from the model's hub repo.
Hub files are fetched once with huggingface-hub into its cache (found there afterwards, also
with ``HF_HUB_OFFLINE=1``).  The model loads in the constructor, so a bad setting shows at start
as an `EngineError` that names it.

Text becomes phonemes with espeak-ng (kokoro-onnx uses `phonemizer` over the library that
`espeakng-loader` bundles: no network), then audio with onnxruntime, 24 kHz float32, which we
turn into PCM16.  Long texts are cut at sentence ends and each piece is synthesised by itself,
so the first audio comes early.  One model runs one piece at a time: a one-thread executor per
engine plus a lock, so the event loop never blocks.  Cancelling the consumer sets onnxruntime's
`RunOptions.terminate` for the run in flight, which stops it between graph nodes, and no
further piece starts.

Voices: the ten OpenAI names map to `KOKORO_VOICES` (override with PARLEY_TTS_VOICE_MAP); any
voice in the voices file may also be named directly.  Its first letter picks the espeak-ng
language (a: American English, b: British, e: Spanish, f: French, ...).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from parley.engines.errors import EngineError
from parley.engines.hub import hub_offline
from parley.engines.time_stretch import native_speed, stretch
from parley.engines.tts import VoiceMap, primary_language
from parley.engines.tts_espeak import split_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
MODEL_SETTING, VOICES_SETTING = "PARLEY_TTS_MODEL", "PARLEY_TTS_VOICES"
DEFAULT_HUB_MODEL = "fastrtc/kokoro-onnx:kokoro-v1.0.onnx"
DEFAULT_HUB_VOICES_FILE = "voices-v1.0.bin"
_SPEED_MIN, _SPEED_MAX = 0.5, 2.0  # what kokoro-onnx accepts

#: OpenAI voice -> Kokoro v1.0 voice, matching gender and accent where Kokoro has a good voice
#: (ballad is a British male voice; am_adam, graded lowest of Kokoro's voices, is not used).
KOKORO_VOICES: Mapping[str, str] = {
    "alloy": "af_heart",
    "ash": "am_michael",
    "ballad": "bm_fable",
    "coral": "af_bella",
    "echo": "am_fenrir",
    "sage": "af_nicole",
    "shimmer": "af_sky",
    "verse": "bm_george",
    "marin": "af_sarah",
    "cedar": "am_puck",
}

#: First letter of a Kokoro voice -> espeak-ng language for its phonemes.
_LANGUAGES: Mapping[str, str] = {
    "a": "en-us", "b": "en-gb", "e": "es", "f": "fr-fr", "h": "hi",
    "i": "it", "j": "ja", "p": "pt-br", "z": "cmn",
}  # fmt: skip

#: Kokoro v1.0's voices per language (female, male), for speaking another language than the
#: mapped voice's; a language it has no voice for is phonemized in that language with the voice.
_VOICES_BY_LANGUAGE: Mapping[str, tuple[str, str]] = {
    "en": ("af_heart", "am_michael"), "es": ("ef_dora", "em_alex"), "fr": ("ff_siwis", "ff_siwis"),
    "hi": ("hf_alpha", "hm_omega"), "it": ("if_sara", "im_nicola"), "ja": ("jf_alpha", "jm_kumo"),
    "pt": ("pf_dora", "pm_alex"), "zh": ("zf_xiaobei", "zm_yunjian"),
}  # fmt: skip
#: ISO 639-1 -> espeak-ng language for phonemes, for languages without a Kokoro voice prefix
_ESPEAK_LANGUAGES: Mapping[str, str] = {"en": "en-us", "fr": "fr-fr", "pt": "pt-br", "zh": "cmn"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _AbortableSession:
    """Forwards to an onnxruntime session, running with `run_options` when set, so that
    `RunOptions.terminate` can stop the run in flight from another thread."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.run_options: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, self.run_options or run_options)


class _Job:
    """One `synthesize` call as the worker sees it; `cancel` may be called from any thread."""

    def __init__(self, run_options: Any) -> None:
        self.cancelled = threading.Event()
        self.run_options = run_options

    def cancel(self) -> None:
        self.cancelled.set()
        self.run_options.terminate = True


class KokoroTTS:
    """TTSEngine over a Kokoro ONNX model.  `chunk_ms` is the size of the yielded chunks;
    `end_pause_s` of silence follows each piece (kokoro-onnx trims the model's own), so that
    consecutive sentences do not run together; `max_chars` bounds one piece."""

    name = "kokoro"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model_path: str,
        voices_path: str | None = None,
        *,
        voice_overrides: Mapping[str, str] | None = None,
        chunk_ms: int = 100,
        end_pause_s: float = 0.15,
        max_chars: int = 300,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.voices = VoiceMap(KOKORO_VOICES, voice_overrides or {})
        self._chunk_bytes = max(1, SAMPLE_RATE * chunk_ms // 1000) * 2
        self._end_pause = b"\0\0" * round(SAMPLE_RATE * end_pause_s)
        self._max_chars = max_chars
        self.model_file, self.voices_file = _resolve_files(model_path, voices_path, cache_dir)
        self._kokoro, self._session = _load(self.model_file, self.voices_file)
        self._voice_names = frozenset(self._kokoro.get_voices())
        if missing := sorted({v for v in KOKORO_VOICES.values() if v not in self._voice_names}):
            log.warning("the Kokoro voices file %s lacks %s; those OpenAI voices will fail",
                        self.voices_file, missing)  # fmt: skip
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kokoro")
        self._closed = False

    def __repr__(self) -> str:
        return f"KokoroTTS(model={str(self.model_file)!r}, voices={str(self.voices_file)!r})"

    def voice_for(self, voice: str, language: str | None) -> tuple[str, str]:
        """(Kokoro voice, espeak language of its phonemes) for an OpenAI or native `voice` speaking
        `language`: the mapped voice if it speaks it, else a voice of that language of the same
        gender, else the mapped voice with that language's phonemes."""
        native = self.voices.resolve(voice)
        wanted = primary_language(language)
        own = _LANGUAGES.get(native[:1], "en-us")
        if wanted is None or primary_language(own) == wanted or (wanted == "zh" and own == "cmn"):
            return native, own
        choices = _VOICES_BY_LANGUAGE.get(wanted)
        if choices is not None:
            pick = choices[1] if native[1:2] == "m" else choices[0]
            if pick in self._voice_names:
                return pick, _LANGUAGES[pick[:1]]
        return native, _ESPEAK_LANGUAGES.get(wanted, wanted)

    async def synthesize(self, text: str, *, voice: str, speed: float = 1.0,
                         language: str | None = None) -> AsyncIterator[bytes]:
        if self._closed:
            raise EngineError("the Kokoro engine is closed", code="engine_closed")
        native, language = self.voice_for(voice, language)
        if native not in self._voice_names:
            raise EngineError(f"Kokoro has no voice {native!r} (voices file {self.voices_file})",
                              code="invalid_voice")  # fmt: skip
        speed, rest = native_speed(speed, _SPEED_MIN, _SPEED_MAX)
        import onnxruntime

        job, loop = _Job(onnxruntime.RunOptions()), asyncio.get_running_loop()
        try:
            for piece in split_text(text, self._max_chars):
                if not any(c.isalnum() for c in piece):
                    continue  # punctuation alone: nothing to say
                try:
                    work = loop.run_in_executor(self._executor, self._synth, piece, native, speed, language, job)
                except RuntimeError as exc:  # the executor was shut down by aclose()
                    raise EngineError("the Kokoro engine is closed", code="engine_closed") from exc
                audio = await work
                if rest != 1.0:
                    audio = await asyncio.to_thread(stretch, audio, self.sample_rate, rest)
                for start in range(0, len(audio), self._chunk_bytes):
                    yield audio[start : start + self._chunk_bytes]
        finally:
            job.cancel()  # a run still in flight (we were cancelled) stops between graph nodes

    def _synth(self, text: str, voice: str, speed: float, language: str, job: _Job) -> bytes:
        """Speak `text` to PCM16 bytes (worker thread); b"" once the job is cancelled."""
        with self._lock:
            kokoro = self._kokoro
            if job.cancelled.is_set() or kokoro is None:
                return b""
            self._session.run_options = job.run_options
            try:
                audio, rate = kokoro.create(text, voice=voice, speed=speed, lang=language)
            except Exception as exc:
                if job.cancelled.is_set():
                    return b""  # onnxruntime's "terminate flag" error
                # kokoro-onnx's ValueErrors quote the text or its phonemes: keep them out of messages.
                detail = "no phonemes the model knows" if isinstance(exc, ValueError) else str(exc)
                raise EngineError(f"Kokoro could not synthesise a text ({type(exc).__name__}: {detail})",
                                  code="tts_error") from (None if isinstance(exc, ValueError) else exc)  # fmt: skip
            finally:
                self._session.run_options = None
        if rate != SAMPLE_RATE:
            raise EngineError(f"Kokoro produced {rate} Hz audio, expected {SAMPLE_RATE}", code="tts_error")
        pcm = np.clip(np.asarray(audio, dtype=np.float32).ravel(), -1.0, 1.0) * 32767.0
        return np.round(pcm).astype("<i2").tobytes() + self._end_pause

    async def aclose(self) -> None:
        """Stop taking work and drop the model; queued pieces finish at once with no audio."""
        self._closed = True
        self._kokoro = None  # a run in flight keeps its own reference until it ends
        self._executor.shutdown(wait=False)


# --- loading -------------------------------------------------------------------------------


def _load(model_file: Path, voices_file: Path) -> tuple[Any, _AbortableSession]:
    try:
        import kokoro_onnx
    except ImportError as exc:
        raise EngineError("Kokoro TTS needs the kokoro-onnx package: pip install kokoro-onnx",
                          code="dependency_missing") from exc  # fmt: skip
    # kokoro-onnx logs the phonemes of every text at DEBUG (LOG_LEVEL=DEBUG): keep text out of logs.
    kokoro_log = logging.getLogger("kokoro_onnx")
    kokoro_log.setLevel(max(kokoro_log.getEffectiveLevel(), logging.INFO))
    try:
        with np.load(voices_file, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile) or not archive.files:
                raise ValueError("not an .npz archive of voices")
    except Exception as exc:
        raise EngineError(f"{VOICES_SETTING}: {voices_file} is not a Kokoro voices file "
                          f"(an .npz such as voices-v1.0.bin): {exc}", code="model_load_failed") from exc  # fmt: skip
    try:
        kokoro = kokoro_onnx.Kokoro(str(model_file), str(voices_file))
    except Exception as exc:
        raise EngineError(f"kokoro-onnx could not load the model {model_file} ({type(exc).__name__}: "
                          f"{exc}). Check {MODEL_SETTING}: it should be a Kokoro v1.0 .onnx file "
                          f"(e.g. kokoro-v1.0.onnx) or a hub id such as {DEFAULT_HUB_MODEL!r}.",
                          code="model_load_failed") from exc  # fmt: skip
    session = _AbortableSession(kokoro.sess)
    kokoro.sess = session
    log.info("Kokoro loaded %s with voices %s", model_file, voices_file)
    return kokoro, session


def _resolve_files(model: str, voices: str | None, cache_dir: Any) -> tuple[Path, Path]:
    """(model file, voices file): local paths as given, hub ids downloaded (or cached)."""
    if not isinstance(model, str) or not model.strip():
        raise EngineError(f"{MODEL_SETTING} is not set: name a Kokoro .onnx file or a hub id such as "
                          f"{DEFAULT_HUB_MODEL!r}", code="model_not_found")  # fmt: skip
    model = model.strip()
    model_hub = _hub_spec(model, ".onnx")
    if model_hub is None:
        model_file = _local_file(model, MODEL_SETTING, "a Kokoro .onnx model file",
                                 f"or a hub id such as {DEFAULT_HUB_MODEL!r}")
    else:
        repo, name = model_hub
        model_file = _hub_download(repo, name or "kokoro-v1.0.onnx", MODEL_SETTING, cache_dir)
    if voices and voices.strip():
        voices_hub = _hub_spec(voices.strip(), (".bin", ".npz"))
        if voices_hub is None:
            what = "a Kokoro voices file (voices-v1.0.bin)"
            return model_file, _local_file(voices.strip(), VOICES_SETTING, what, "")
        repo, name = voices_hub
        return model_file, _hub_download(repo, name or DEFAULT_HUB_VOICES_FILE, VOICES_SETTING, cache_dir)
    if model_hub is not None:
        return model_file, _hub_download(model_hub[0], DEFAULT_HUB_VOICES_FILE, VOICES_SETTING, cache_dir)
    beside = sorted(p for p in model_file.parent.glob("voices*") if p.suffix in (".bin", ".npz") and p.is_file())
    if not beside:
        raise EngineError(f"{VOICES_SETTING} is not set and there is no voices*.bin beside {model_file}; "
                          "set it to the voices file (voices-v1.0.bin)", code="model_not_found")  # fmt: skip
    return model_file, beside[0]


def _hub_spec(spec: str, suffixes: str | tuple[str, ...]) -> tuple[str, str | None] | None:
    """("owner/repo", file or None) if `spec` is a hub id rather than a local path."""
    repo, _, name = spec.partition(":")
    looks_local = (
        Path(spec).expanduser().exists()
        or spec.startswith(("/", ".", "~", "\\"))
        or re.match(r"^[A-Za-z]:[\\/]", spec) is not None
        or (not name and spec.lower().endswith(suffixes))
        or not _HUB_ID.match(repo)
    )
    return None if looks_local else (repo, name or None)


def _local_file(spec: str, setting: str, what: str, alternative: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EngineError(f"{setting}={spec!r}: no such file; it should be {what} {alternative}".rstrip(),
                          code="model_not_found")  # fmt: skip
    return path


def _hub_download(repo: str, name: str, setting: str, cache_dir: Any) -> Path:
    """Download `name` from `repo` (or find it in huggingface-hub's cache)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise EngineError(f"{setting}={repo}:{name} looks like a model-hub id, and downloading needs "
                          "huggingface-hub (pip install huggingface-hub); or set it to a local file",
                          code="dependency_missing") from exc  # fmt: skip
    offline = hub_offline()
    try:
        return Path(hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=offline))
    except Exception as exc:
        why = ("HF_HUB_OFFLINE is set and the file is not in the local cache" if offline
               else "the download failed and the file is not in the local cache")  # fmt: skip
        raise EngineError(f"{setting}={repo}:{name}: could not get it from the model hub: {why} "
                          f"({type(exc).__name__}: {exc}). Set {setting} to a local file path instead.",
                          code="model_not_found", retryable=not offline) from exc  # fmt: skip
