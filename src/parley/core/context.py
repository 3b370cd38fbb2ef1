"""What the language model sees: conversation items as chat messages, truncated to fit.

User audio reaches the model as its transcript (speech-to-text runs first); audio without a
transcript yet is left out.  Assistant audio is represented by its transcript, which a
`conversation.item.truncate` has already cut to what the user heard.
"""

from __future__ import annotations

from typing import Any

# The hosted API's conventions for audio tokens (realtime-costs): 10/s in, 20/s out.
INPUT_AUDIO_TOKENS_PER_S = 10
OUTPUT_AUDIO_TOKENS_PER_S = 20


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 characters per token), used for truncation and usage
    when the engine does not report its own counts."""
    return (len(text) + 3) // 4 if text else 0


def _user_content(item: dict[str, Any]) -> str | list[dict[str, Any]] | None:
    parts: list[dict[str, Any]] = []
    for part in item.get("content", []):
        kind = part.get("type")
        if kind == "input_text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_audio" and part.get("transcript"):
            parts.append({"type": "text", "text": part["transcript"]})
        elif kind == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}})
    if not parts:
        return None
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _assistant_text(item: dict[str, Any]) -> str:
    texts = []
    for part in item.get("content", []):
        if part.get("type") == "output_text":
            texts.append(part.get("text") or "")
        elif part.get("type") == "output_audio":
            texts.append(part.get("transcript") or "")
    return "".join(texts)


def items_to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conversation items -> chat-completions messages.  Consecutive function calls become one
    assistant message with several `tool_calls`, as chat APIs expect."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if role == "system":
                text = "\n".join(p.get("text", "") for p in item.get("content", []))
                messages.append({"role": "system", "content": text})
            elif role == "user":
                content = _user_content(item)
                if content is not None:
                    messages.append({"role": "user", "content": content})
            elif role == "assistant":
                text = _assistant_text(item)
                if text:
                    messages.append({"role": "assistant", "content": text})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item["id"],
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or "{}"},
            }
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls") and not last.get("content"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id", ""), "content": item.get("output", "")})
    return _drop_orphan_tool_results(messages)


def _drop_orphan_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat servers reject a tool result whose call is not before it (truncation can cut it)."""
    seen: set[str] = set()
    out = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            seen.add(call["id"])
        if m["role"] == "tool" and m["tool_call_id"] not in seen:
            continue
        out.append(m)
    return out


def message_tokens(message: dict[str, Any]) -> int:
    content = message.get("content")
    if isinstance(content, list):
        n = sum(estimate_tokens(p.get("text", "")) if p["type"] == "text" else 85 for p in content)
    else:
        n = estimate_tokens(content or "")
    for call in message.get("tool_calls") or []:
        n += estimate_tokens(call["function"]["name"] + call["function"]["arguments"])
    return n + 4


def truncate(
    messages: list[dict[str, Any]],
    *,
    budget: int,
    policy: Any,
) -> tuple[list[dict[str, Any]], int] | None:
    """Drop the oldest messages until the rest fit in `budget` tokens.

    `policy` is the session's `truncation`: "auto" drops just enough; a `retention_ratio`
    object drops down to that fraction of the budget (fewer truncations, better cache reuse;
    `token_limits.post_instructions` lowers the budget); "disabled" returns None when the
    messages do not fit.  Returns (kept messages, number dropped).
    """
    sizes = [message_tokens(m) for m in messages]
    total = sum(sizes)
    target = budget
    if isinstance(policy, dict) and policy.get("type") == "retention_ratio":
        limit = (policy.get("token_limits") or {}).get("post_instructions")
        if limit:
            budget = min(budget, int(limit))
            target = budget
        if total > budget:
            target = int(budget * float(policy.get("retention_ratio", 1.0)))
    if total <= budget:
        return messages, 0
    if policy == "disabled":
        return None
    # the newest message always stays, and so do the tool calls its trailing tool results answer
    keep_from = len(messages) - 1
    while keep_from > 0 and messages[keep_from]["role"] == "tool":
        keep_from -= 1
    dropped = 0
    while total > target and dropped < keep_from:
        total -= sizes[dropped]
        dropped += 1
    kept = messages[dropped:]
    # never start with a tool result whose call was dropped, nor with a lone assistant tool call
    return _drop_orphan_tool_results(kept), dropped


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type") != "function":
            continue
        fn: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            fn["description"] = tool["description"]
        fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> str | dict[str, Any] | None:
    if not tools:
        return None
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    return "auto"
