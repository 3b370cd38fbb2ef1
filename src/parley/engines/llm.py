"""The language-model engine interface.

An LLM engine takes a chat request in the OpenAI chat-completions shape (the lingua franca of
every server Parley talks to, and of llama.cpp's chat API) and streams back text deltas,
tool-call deltas and one final `Finished`.  Engines raise only `EngineError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatRequest:
    """What one response asks of the model.

    `messages` and `tools` use the OpenAI chat-completions wire format:
    messages are `{"role": ..., "content": ...}` dicts (assistant tool calls as
    `{"role": "assistant", "content": None, "tool_calls": [...]}`, results as
    `{"role": "tool", "tool_call_id": ..., "content": ...}`), tools are
    `{"type": "function", "function": {"name", "description", "parameters"}}`.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    model: str | None = None


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
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


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
