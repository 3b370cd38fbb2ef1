"""Stand-ins for engines that could not be set up: every call fails with the reason, so the
server still starts and each response fails with an error that says what to fix."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..core.chat import ChatRequest
from .errors import EngineError
from .llm import LLMEvent


class UnavailableLLM:
    name = "unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        raise EngineError(self.reason, code="llm_unavailable")
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        return None
