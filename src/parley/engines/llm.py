"""The language-model engine interface.

An LLM engine takes a chat request in the OpenAI chat-completions shape (the lingua franca of
every server Parley talks to, and of llama.cpp's chat API) and streams back text deltas,
tool-call deltas and one final `Finished`.  Engines raise only `EngineError`.  The request and
usage types are the core's (`core/chat.py`): the core says what it asks for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..core.chat import ChatRequest, Usage


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call.  `index` tells parallel calls apart; `name` (and the
    provider's `id`, if any) arrive on the first delta of a call, `arguments` are appended."""

    index: int
    arguments: str = ""
    name: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Finished:
    """The last item of every stream.  `reason` is the chat-completions finish_reason:
    "stop", "length" (max_tokens reached), "tool_calls" or "content_filter"."""

    reason: str = "stop"
    usage: Usage | None = None


LLMEvent = TextDelta | ToolCallDelta | Finished


@runtime_checkable
class LLMEngine(Protocol):
    """One method does the work; `aclose` releases connections or model memory."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        """Stream the model's answer.  Cancelling the consuming task must stop generation."""
        ...

    async def aclose(self) -> None: ...
