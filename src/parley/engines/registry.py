"""Builds the engines the settings ask for, importing each implementation lazily.

The LLM is either a remote OpenAI-compatible server (`PARLEY_LLM_BASE_URL`) or the embedded
llama.cpp engine loading `PARLEY_LLM_MODEL` (a .gguf path or a hub id).  The embedded model
loads in the background, so the server answers at once; until it is ready, or if it cannot
load, responses fail with a message that names the setting to fix.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ..core.chat import ChatRequest
from .errors import EngineError
from .llm import LLMEngine, LLMEvent
from .tts import TTSEngine
from .speech_registry import SpeechEngines, build_speech, load_stt
from .unavailable import UnavailableLLM

log = logging.getLogger("parley.engines")

# The embedded LLM when nothing else is configured: a small instruct model in GGUF form,
# fetched once from the model hub by users who have internet access.
DEFAULT_EMBEDDED_LLM = "Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"


class LazyLLM:
    """Wraps an engine that is still loading: requests fail clearly until it is ready."""

    name = "lazy"

    def __init__(self, description: str) -> None:
        self.description = description
        self.engine: LLMEngine = UnavailableLLM(f"The language model ({description}) is still loading.")
        self.ready = False

    def set(self, engine: LLMEngine, ready: bool) -> None:
        self.engine, self.ready = engine, ready

    def stream(self, request: ChatRequest) -> Any:
        return self.engine.stream(request)

    async def aclose(self) -> None:
        await self.engine.aclose()


@dataclass
class EngineSet:
    llm: LazyLLM
    speech: SpeechEngines
    status: dict[str, str] = field(default_factory=dict)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def tts(self) -> TTSEngine | None:
        return self.speech.tts

    @property
    def ready(self) -> bool:
        """Every engine the settings ask for is loaded (a missing one keeps /readyz at 503)."""
        loading = "loading" in (self.speech.status.get("stt"), self.speech.status.get("tts"))
        return self.llm.ready and not loading and not self.speech.missing()

    def all_status(self) -> dict[str, str]:
        return {**self.status, **self.speech.status}

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.llm.aclose()
        await self.speech.aclose()


async def _load_llamacpp(settings: Any, holder: LazyLLM, status: dict[str, str]) -> None:
    try:
        from .llm_llamacpp import LlamaCppLLM

        engine = LlamaCppLLM(settings.llm_model or DEFAULT_EMBEDDED_LLM, n_ctx=settings.llm_context_tokens, n_threads=settings.llm_threads)
        await engine.load()
    except EngineError as err:
        holder.set(UnavailableLLM(err.message), False)
        status["llm"] = f"unavailable: {err.message}"
        log.error("embedded LLM did not load: %s", err.message)
        return
    except Exception as exc:  # noqa: BLE001 - e.g. llama-cpp-python is not installed
        reason = (f"The embedded LLM could not start ({type(exc).__name__}: {exc}). Install Parley with the "
                  "'embedded' extra, or point PARLEY_LLM_BASE_URL at an OpenAI-compatible server.")
        holder.set(UnavailableLLM(reason), False)
        status["llm"] = f"unavailable: {reason}"
        log.error("%s", reason)
        return
    holder.set(engine, True)
    status["llm"] = f"llama.cpp: {settings.llm_model or DEFAULT_EMBEDDED_LLM}"
    log.info("embedded LLM ready", extra={"model": settings.llm_model or DEFAULT_EMBEDDED_LLM})


def build_engines(settings: Any) -> EngineSet:
    """Create the engines; the embedded LLM starts loading in the background (call from a loop)."""
    status: dict[str, str] = {}
    if settings.llm_base_url:
        from .llm_openai import OpenAICompatibleLLM

        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        if not settings.llm_model:
            log.warning("PARLEY_LLM_MODEL is not set; asking %s for model 'default'", settings.llm_base_url)
        remote = OpenAICompatibleLLM(settings.llm_base_url, settings.llm_model or "default", key,
                                     timeout_s=settings.llm_timeout_s, max_retries=settings.llm_max_retries)
        llm = LazyLLM(settings.llm_base_url)
        llm.set(remote, True)
        status["llm"] = f"openai-compatible: {settings.llm_base_url} model={settings.llm_model}"
        tasks: list[asyncio.Task[Any]] = []
    else:
        model = settings.llm_model or DEFAULT_EMBEDDED_LLM
        llm = LazyLLM(f"embedded llama.cpp, PARLEY_LLM_MODEL={model}")
        status["llm"] = f"loading: {model}"
        tasks = [asyncio.create_task(_load_llamacpp(settings, llm, status), name="load-llm")]
    log.info("llm engine: %s", status["llm"], extra={"stage": "llm"})
    speech = build_speech(settings)
    tasks.append(asyncio.create_task(load_stt(settings, speech), name="load-stt"))
    return EngineSet(llm=llm, speech=speech, status=status, _tasks=tasks)


__all__ = ["EngineSet", "LazyLLM", "build_engines", "LLMEvent"]
