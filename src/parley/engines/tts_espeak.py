"""espeak-ng text to speech, in process through ctypes.

The library comes from the `espeakng-loader` package (which bundles libespeak-ng and its data)
or, failing that, from Debian's `libespeak-ng1` (`apt-get install espeak-ng`).  espeak-ng is a
formant synthesiser: robotic, but small, dependency-free and fast (a few milliseconds per
sentence), which makes it the default that needs nothing else and the voice of the tests.

libespeak-ng keeps its state in globals and is not thread-safe, so one process-wide `_Espeak`
owns it: every call runs under its lock, in its own worker thread (a one-thread executor, so
sessions waiting for espeak never tie up the loop's default executor), and the event loop never
blocks.  Long texts are cut at sentence ends and each piece is synthesised by itself,
which bounds the memory of one call, gives the first audio early, and lets concurrent sessions
take turns on the lock.  Cancelling the consumer sets an abort flag that the synthesis callback
returns to espeak, which stops within one buffer (60 ms of audio).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import re
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from parley.engines.errors import EngineError
from parley.engines.time_stretch import native_speed, stretch
from parley.engines.tts import VoiceMap, primary_language

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data directory calls exit()
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_POS_CHARACTER = 1
_PARAM_RATE = 1
_RATE_MIN, _RATE_NORMAL, _RATE_MAX = 80, 175, 450
_EE_OK, _EE_BUFFER_FULL = 0, 1

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

#: OpenAI voice -> espeak-ng voice ("language+variant"; variants f1-f5 are female, m1-m7 male).
ESPEAK_VOICES: Mapping[str, str] = {
    "alloy": "en-us+f3",
    "ash": "en-us+m3",
    "ballad": "en-gb-x-rp+m2",
    "coral": "en-us+f4",
    "echo": "en-us+m1",
    "sage": "en+f2",
    "shimmer": "en-us+f5",
    "verse": "en-us+m4",
    "marin": "en-us+f1",
    "cedar": "en-us+m7",
}


def _find_library() -> tuple[str, bytes | None]:
    """(path of libespeak-ng, its data directory or None for the library's default)."""
    try:
        import espeakng_loader
    except ImportError:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        return name, None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path().encode()


class _Espeak:
    """The process-wide libespeak-ng.  Use `_Espeak.get()`; call `synth` from worker threads."""

    _instance: _Espeak | None = None
    _init_lock = threading.Lock()

    def __init__(self) -> None:
        path, data = _find_library()
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise EngineError(
                f"libespeak-ng not found ({exc}); pip install espeakng-loader, "
                "or apt-get install espeak-ng",
                code="engine_unavailable",
            ) from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineError(
                f"espeak_Initialize failed ({rate}); is espeak-ng-data installed?",
                code="engine_unavailable",
            )
        if lib.espeak_SetVoiceByName(b"en-us") != _EE_OK:
            raise EngineError(
                "espeak-ng has no en-us voice; is its data complete?", code="engine_unavailable"
            )
        self.lib = lib
        self.sample_rate: int = rate
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._chunks: list[bytes] = []
        self._abort: threading.Event | None = None
        self._voice: str | None = "en-us"
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: C holds a pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Espeak:
        with cls._init_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav: Any, numsamples: int, events: Any) -> int:
        if wav and numsamples > 0:
            self._chunks.append(ctypes.string_at(wav, numsamples * 2))
        abort = self._abort
        return 1 if abort is not None and abort.is_set() else 0

    def synth(
        self, text: str, voice: str, rate: int, end_pause: bool, abort: threading.Event
    ) -> bytes:
        """Speak `text` to PCM16 bytes; blocking, returns early (partial audio) on `abort`."""
        encoded = text.replace("\0", " ").encode("utf-8") + b"\0"
        with self.lock:
            if abort.is_set():
                return b""
            if voice != self._voice:
                if self.lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
                    self._voice = None
                    raise EngineError(f"espeak-ng has no voice {voice!r}", code="invalid_voice")
                self._voice = voice
            self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            self._chunks, self._abort = [], abort
            flags = _CHARS_UTF8 | (_ENDPAUSE if end_pause else 0)
            try:
                err = self.lib.espeak_Synth(
                    encoded, len(encoded), 0, _POS_CHARACTER, 0, flags, None, None
                )
                audio = b"".join(self._chunks)
            finally:
                self._chunks, self._abort = [], None
        if err != _EE_OK and not abort.is_set():
            raise EngineError(
                f"espeak_Synth failed ({err})", code="tts_error", retryable=err == _EE_BUFFER_FULL
            )
        return audio


_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？])\s+")


def split_text(text: str, max_chars: int = 300) -> list[str]:
    """Cut `text` at sentence ends into pieces of at most `max_chars`, joining short sentences.
    A longer sentence is cut at the last space before the limit (or, in a word longer than
    the limit, at the first space after it: words are never cut)."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else sentence.find(" ", max_chars)
            if cut <= 0:
                break
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if pieces and len(pieces[-1]) + 1 + len(sentence) <= max_chars:
            pieces[-1] = f"{pieces[-1]} {sentence}"
        elif sentence:
            pieces.append(sentence)
    return pieces


#: language tags whose espeak-ng voice has another name (others: the primary subtag, "de-AT" -> "de")
_ESPEAK_LANGUAGE_NAMES: Mapping[str, str] = {"zh": "cmn", "pt-br": "pt-br", "en-gb": "en-gb-x-rp", "en-us": "en-us"}


def voice_in_language(voice: str, language: str | None) -> str:
    """The espeak-ng voice for `language` with `voice`'s variant: ("en-us+f3", "es") -> "es+f3".
    A voice already in that language (or no language) is kept as it is."""
    wanted = primary_language(language)
    base, plus, variant = voice.partition("+")
    if wanted is None or primary_language(base) == wanted:
        return voice
    tag = (language or "").replace("_", "-").lower()
    name = _ESPEAK_LANGUAGE_NAMES.get(tag) or _ESPEAK_LANGUAGE_NAMES.get(wanted, wanted)
    return name + plus + variant


def speed_to_rate(speed: float) -> tuple[int, float]:
    """The Realtime API's speed factor -> (espeak words per minute, the factor left to stretch):
    175 * speed within espeak's 80-450; the API's minimum 0.25 is 80 wpm (about 0.46x) stretched
    by 0.55 more (engines/time_stretch.py)."""
    native, rest = native_speed(speed, _RATE_MIN / _RATE_NORMAL, _RATE_MAX / _RATE_NORMAL)
    return max(_RATE_MIN, min(_RATE_MAX, round(_RATE_NORMAL * native))), rest


class EspeakTTS:
    """TTSEngine over libespeak-ng.  Voices: OpenAI names through `voices` (defaults
    `ESPEAK_VOICES`, plus `voice_overrides`), or any espeak-ng voice name such as `"en-us+f2"`.

    `chunk_ms` is the size of the yielded chunks; `end_pause` keeps espeak's sentence pause
    (about 300 ms of silence) at the end of each text, so consecutive sentences do not run on.
    """

    name = "espeak"

    def __init__(
        self,
        *,
        voice_overrides: Mapping[str, str] | None = None,
        chunk_ms: int = 100,
        end_pause: bool = True,
        max_chars: int = 300,
    ) -> None:
        self._native = _Espeak.get()
        self.sample_rate: int = self._native.sample_rate
        self.voices = VoiceMap(ESPEAK_VOICES, voice_overrides or {})
        self._chunk_bytes = max(1, self.sample_rate * chunk_ms // 1000) * 2
        self._end_pause = end_pause
        self._max_chars = max_chars
        self._closed = False

    async def synthesize(
        self, text: str, *, voice: str, speed: float = 1.0, language: str | None = None
    ) -> AsyncIterator[bytes]:
        if self._closed:
            raise EngineError("the espeak engine is closed", code="engine_closed")
        native_voice = voice_in_language(self.voices.resolve(voice), language)
        rate, rest = speed_to_rate(speed)
        native, end_pause, abort = self._native, self._end_pause, threading.Event()
        loop = asyncio.get_running_loop()
        try:
            for piece in split_text(text, self._max_chars):
                audio = await loop.run_in_executor(
                    native.executor, native.synth, piece, native_voice, rate, end_pause, abort
                )
                if rest != 1.0:
                    audio = await asyncio.to_thread(stretch, audio, self.sample_rate, rest)
                for start in range(0, len(audio), self._chunk_bytes):
                    yield audio[start : start + self._chunk_bytes]
        finally:
            abort.set()  # a worker still running (we were cancelled) stops at its next buffer

    async def aclose(self) -> None:
        # The library is shared by the whole process and stays loaded; this instance is done.
        self._closed = True
