"""Choosing and loading the speech engines (VAD, STT, TTS) from settings.

Embedded defaults, as the server logs at start:
* VAD: Silero (its ONNX model ships in Parley's package data; onnxruntime runs it).
* STT: faster-whisper when `PARLEY_STT_MODEL` can be loaded (a CTranslate2 directory, or a hub
  id fetched once), else pocketsphinx (offline, English).  `PARLEY_STT_BASE_URL` selects an
  OpenAI-compatible `/v1/audio/transcriptions` server instead.
* TTS: Kokoro when `PARLEY_TTS_MODEL` and `PARLEY_TTS_VOICES` can be loaded, else espeak-ng.
  `PARLEY_TTS_BASE_URL` selects an OpenAI-compatible `/v1/audio/speech` server instead.

A session picks an STT engine by name with `audio.input.transcription.model` (e.g.
"pocketsphinx"); any other model name (such as "whisper-1") uses the default engine.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from .errors import EngineError
from .stt import STTEngine
from .tts import TTSEngine
from .vad import VADEngine

log = logging.getLogger("parley.engines")

DEFAULT_STT_MODEL = "Systran/faster-whisper-small.en"


def voice_overrides(spec: str | None) -> dict[str, str]:
    """`alloy=af_heart,ash=am_michael` -> {"alloy": "af_heart", "ash": "am_michael"}."""
    out: dict[str, str] = {}
    for pair in (spec or "").split(","):
        if "=" in pair:
            name, voice = pair.split("=", 1)
            out[name.strip()] = voice.strip()
    return out


@dataclass
class SpeechEngines:
    vad: VADEngine | None = None
    stt: dict[str, STTEngine] = field(default_factory=dict)  # by name; "default" is the default
    tts: TTSEngine | None = None
    status: dict[str, str] = field(default_factory=dict)
    #: the stages the settings ask an engine for (STT and TTS can be turned off with "none")
    required: tuple[str, ...] = ("vad", "stt", "tts")

    def missing(self) -> list[str]:
        """Required stages without an engine, once loading is over: the server is not ready."""
        present = {"vad": self.vad is not None, "stt": "default" in self.stt, "tts": self.tts is not None}
        return [stage for stage in self.required if not present[stage] and self.status.get(stage) != "loading"]

    def stt_for(self, config: dict[str, Any] | None) -> STTEngine | None:
        name = (config or {}).get("model")
        if name and name in self.stt:
            return self.stt[name]
        return self.stt.get("default")

    async def aclose(self) -> None:
        seen: set[int] = set()
        for engine in [*self.stt.values(), self.tts]:
            if engine is not None and id(engine) not in seen:
                seen.add(id(engine))
                try:
                    await engine.aclose()
                except Exception:  # noqa: BLE001 - closing must not mask shutdown
                    log.debug("engine close failed", exc_info=True)


def _vad(settings: Any) -> tuple[VADEngine | None, str]:
    try:
        from .vad_silero import SileroVAD

        engine = SileroVAD(model_path=settings.vad_model) if settings.vad_model else SileroVAD()
        engine.stream()  # loads the model now, so a broken install shows at start
        return engine, "silero (onnxruntime)"
    except Exception as exc:  # noqa: BLE001
        return None, f"unavailable: {exc}"


async def _stt(settings: Any) -> tuple[dict[str, STTEngine], str]:
    engines: dict[str, STTEngine] = {}
    notes = []
    if settings.stt_base_url:
        from .stt_openai import OpenAICompatibleSTT

        key = settings.stt_api_key.get_secret_value() if settings.stt_api_key else None
        engines["openai"] = OpenAICompatibleSTT(settings.stt_base_url, settings.stt_model or "whisper-1", key,
                                                timeout_s=settings.stt_timeout_s)
        notes.append(f"openai-compatible {settings.stt_base_url}")
    choice = settings.stt_engine
    if choice in ("auto", "faster-whisper") and not (choice == "auto" and settings.stt_base_url):
        try:
            from .stt_whisper import FasterWhisperSTT

            whisper = FasterWhisperSTT(settings.stt_model or DEFAULT_STT_MODEL, threads=settings.stt_threads)
            await whisper.load()
            engines["faster-whisper"] = whisper
            notes.append(f"faster-whisper {settings.stt_model or DEFAULT_STT_MODEL}")
        except (EngineError, ImportError) as exc:
            notes.append(f"faster-whisper not available ({getattr(exc, 'message', exc)})")
    if choice in ("auto", "pocketsphinx") or (choice == "faster-whisper" and "faster-whisper" not in engines):
        try:
            from .stt_pocketsphinx import PocketSphinxSTT

            # its worker processes load their decoders (~0.3 s) off the event loop
            engines["pocketsphinx"] = await asyncio.to_thread(PocketSphinxSTT, workers=settings.stt_workers)
            notes.append(f"pocketsphinx (offline, English; worker processes: {settings.stt_workers})")
        except (EngineError, ImportError) as exc:
            notes.append(f"pocketsphinx not available ({getattr(exc, 'message', exc)})")
    order = ("openai", "faster-whisper", "pocketsphinx")  # auto's preference
    for name in ([choice] if choice in order else []) + list(order):  # the chosen one, else the first loaded
        if name in engines:
            engines["default"] = engines[name]
            break
    if "faster-whisper" in engines:
        engines.setdefault("whisper", engines["faster-whisper"])
    default = next((n for n, e in engines.items() if n != "default" and e is engines.get("default")), "none")
    return engines, f"default {default}; " + "; ".join(notes)


def _tts(settings: Any) -> tuple[TTSEngine | None, str]:
    choice = settings.tts_engine
    overrides = voice_overrides(settings.tts_voice_map)
    if choice == "none":
        return None, "disabled (PARLEY_TTS_ENGINE=none)"
    notes = []
    if settings.tts_base_url and choice in ("auto", "openai"):
        from .tts_openai import OpenAICompatibleTTS

        key = settings.tts_api_key.get_secret_value() if settings.tts_api_key else None
        return (OpenAICompatibleTTS(settings.tts_base_url, settings.tts_model or "tts-1", key,
                                    timeout_s=settings.tts_timeout_s, voice_overrides=overrides or None),
                f"openai-compatible {settings.tts_base_url}")
    if choice in ("auto", "kokoro") and settings.tts_model:
        try:
            from .tts_kokoro import KokoroTTS

            return (KokoroTTS(settings.tts_model, settings.tts_voices, voice_overrides=overrides or None),
                    f"kokoro {settings.tts_model}")
        except (EngineError, ImportError) as exc:
            notes.append(f"kokoro not available ({getattr(exc, 'message', exc)})")
    elif choice in ("auto", "kokoro"):
        notes.append("kokoro not configured (PARLEY_TTS_MODEL)")
    try:
        from .tts_espeak import EspeakTTS

        return EspeakTTS(voice_overrides=overrides or None), "; ".join(notes + ["espeak-ng (embedded)"])
    except Exception as exc:  # noqa: BLE001
        return None, "; ".join(notes + [f"espeak-ng not available: {exc}"])


def build_speech(settings: Any) -> SpeechEngines:
    """VAD now (milliseconds); TTS and STT come from `load_stt` in the background."""
    required = ("vad",) + tuple(stage for stage, choice in (("stt", settings.stt_engine), ("tts", settings.tts_engine))
                                if choice != "none")
    speech = SpeechEngines(required=required)
    speech.vad, speech.status["vad"] = _vad(settings)
    speech.status["stt"] = speech.status["tts"] = "loading"
    _log_stage("vad", speech)
    return speech


def _log_stage(stage: str, speech: SpeechEngines) -> None:
    """One line per stage; a required stage without an engine is an error (the server is not ready)."""
    if stage in speech.missing():
        log.error("%s engine: %s; the server is not ready until it loads", stage, speech.status[stage],
                  extra={"stage": stage})
    else:
        log.info("%s engine: %s", stage, speech.status[stage], extra={"stage": stage})


async def load_stt(settings: Any, speech: SpeechEngines) -> None:
    """Load TTS (a Kokoro model may take a second, a hub download longer) and the STT engines
    (faster-whisper likewise) into `speech`, off the event loop."""
    speech.tts, speech.status["tts"] = await asyncio.to_thread(_tts, settings)
    _log_stage("tts", speech)
    stt, speech.status["stt"] = await _stt(settings)
    speech.stt.update(stt)
    _log_stage("stt", speech)
