"""What the REST audio routes share: auth and the hosted API's error shape (from rest.py),
speech synthesis of a text as 24 kHz PCM pieces, decoding an upload off the event loop, engine
errors as HTTP errors, and the routes' Prometheus metrics."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram

from ..audio.codec import AudioDecodeError, decode
from ..audio.resample import StreamResampler
from ..engines.errors import EngineError
from ..engines.tts import TTSEngine
from ..runtime.chunker import SentenceChunker
from .rest import _require_api_key as require_api_key
from .rest import _state as app_state
from .rest import api_error

__all__ = ["OUT_RATE", "api_error", "app_state", "count_request", "decode_upload", "engine_error", "observe_first_audio",
           "require_api_key", "speak", "speech_voice"]

OUT_RATE = 24000  # the hosted API's speech is 24 kHz mono
PIECE_SAMPLES = OUT_RATE // 10  # audio goes out in pieces of at most 100 ms, so the first leaves early

REST_REQUESTS = Counter("parley_rest_requests_total", "REST audio and chat requests answered, by route and status",
                        ["route", "status"])
REST_FIRST_AUDIO = Histogram("parley_rest_first_audio_seconds",
                             "Request received to the first audio byte sent, streamed audio routes, by route",
                             ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
REST_AUDIO_SECONDS = Counter("parley_rest_audio_seconds_total", "Seconds of audio decoded (in) and synthesized (out)",
                             ["route", "direction"])

# tts-1's voices that the Realtime API (and so the engines' voice maps) do not have
_TTS1_VOICES = {"fable": "verse", "onyx": "ash", "nova": "shimmer"}


@functools.cache
def _child(route: str, status: str) -> Any:
    return REST_REQUESTS.labels(route, status)


def count_request(route: str, status: int) -> None:
    _child(route, str(status)).inc()


def observe_first_audio(route: str, seconds: float) -> None:
    REST_FIRST_AUDIO.labels(route).observe(seconds)


def count_audio(route: str, direction: str, seconds: float) -> None:
    REST_AUDIO_SECONDS.labels(route, direction).inc(seconds)


def speech_voice(voice: Any) -> str | None:
    """A request's `voice` (a name, or `{"id": ...}`) as a name the TTS engine resolves."""
    if isinstance(voice, dict):
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice:
        return None
    return _TTS1_VOICES.get(voice, voice)


def engine_error(err: EngineError) -> JSONResponse:
    """Refusals (a bad voice, language, speed) are the caller's 400; the rest are ours (500)."""
    if err.retryable or err.code in ("engine_closed", "stt_unavailable", "engine_error", "llm_unavailable"):
        return api_error(500, err.message, code=err.code, kind="server_error")
    return api_error(400, err.message, code=err.code)


async def decode_upload(data: bytes, rate: int) -> np.ndarray:
    """An uploaded file as int16 mono at `rate`, decoded in a thread (a long file takes a while)."""
    return await asyncio.to_thread(decode, data, rate)


def sentences(text: str) -> list[str]:
    """`text` in the pieces the realtime pipeline speaks (runtime/chunker.py)."""
    chunker = SentenceChunker()
    return [p for p in chunker.push(text) + chunker.flush() if p.strip()]


async def speak(tts: TTSEngine, text: str, *, voice: str, speed: float = 1.0) -> AsyncIterator[np.ndarray]:
    """`text` spoken, piece by piece, as int16 chunks at 24 kHz as soon as the engine makes them."""
    resampler = StreamResampler(tts.sample_rate, OUT_RATE)
    for piece in sentences(text):
        async for chunk in tts.synthesize(piece, voice=voice, speed=speed):
            out = resampler.push(np.frombuffer(chunk, dtype="<i2").astype(np.int16))
            for start in range(0, out.size, PIECE_SAMPLES):  # an engine may send a whole clause at once
                yield out[start:start + PIECE_SAMPLES]
    tail = resampler.flush()
    if tail.size:
        yield tail


__all__ += ["AudioDecodeError", "count_audio", "sentences"]
