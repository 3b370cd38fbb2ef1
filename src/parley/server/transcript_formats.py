"""A finished transcript in the hosted API's `response_format`s: json, text, srt, vtt and
verbose_json, and its usage.  The engines give text without timings, so the timed formats have
one segment spanning the whole file and `words` is left out (see the README)."""

from __future__ import annotations

import math
from typing import Any

from ..core.context import INPUT_AUDIO_TOKENS_PER_S, estimate_tokens
from ..engines.stt import Transcript

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

# verbose_json names the language in English, as Whisper does
_LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese",
              "nl": "dutch", "ja": "japanese", "zh": "chinese", "ru": "russian", "ko": "korean", "pl": "polish"}


def usage(final: Transcript, seconds: float) -> dict[str, Any]:
    """Token usage as gpt-4o-transcribe reports it: the engine's counts, else estimates (10 audio
    tokens a second, as the realtime sessions count them)."""
    audio = final.input_tokens if final.input_tokens is not None else math.ceil(seconds * INPUT_AUDIO_TOKENS_PER_S)
    out = final.output_tokens if final.output_tokens is not None else estimate_tokens(final.text)
    return {"type": "tokens", "input_tokens": audio, "output_tokens": out, "total_tokens": audio + out,
            "input_token_details": {"audio_tokens": audio, "text_tokens": 0}}


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(final: Transcript, fmt: str, *, seconds: float, task: str = "transcribe",
           granularities: list[str] | None = None) -> tuple[Any, str]:
    """(body, media type): a dict for the JSON formats, a string for the others."""
    text = final.text.strip()
    if fmt == "json":
        return {"text": text, "usage": usage(final, seconds)}, "application/json"
    if fmt == "text":
        return text + "\n", "text/plain"
    if fmt == "srt":
        body = f"1\n{_stamp(0, ',')} --> {_stamp(seconds, ',')}\n{text}\n\n" if text else ""
        return body, "text/plain"
    if fmt == "vtt":
        body = "WEBVTT\n\n" + (f"{_stamp(0, '.')} --> {_stamp(seconds, '.')}\n{text}\n\n" if text else "")
        return body, "text/vtt"
    language = (final.language or "en").lower().split("-")[0]
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text, "tokens": [],
               "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
    body: dict[str, Any] = {"task": task, "language": "english" if task == "translate" else _LANGUAGES.get(language, language),
                            "duration": round(seconds, 3), "text": text,
                            "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
    if not granularities or "segment" in granularities:
        body["segments"] = [segment] if text else []
    return body, "application/json"
