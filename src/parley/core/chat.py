"""What the core asks a language model for, and the counts it gets back.

`ChatRequest` is one model call in the OpenAI chat-completions shape; `Usage` is the token
count an engine reports when it finishes.  The core defines them (it is the one asking) and the
engines (`engines/llm.py`) take and return them: the arrow runs from engines to core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


def add_usage(earlier: Usage | None, now: Usage | None) -> Usage | None:
    """The engine's counts over a response's model calls."""
    if earlier is None or now is None:
        return now or earlier
    return Usage(earlier.input_tokens + now.input_tokens, earlier.output_tokens + now.output_tokens,
                 earlier.cached_tokens + now.cached_tokens)
