"""A scripted model server speaking the OpenAI chat-completions HTTP API, for tests.

It runs uvicorn on a real loopback socket in a background thread, so a Parley server process
(or any HTTP client) can use it as its LLM::

    with ScriptedLLMServer() as llm:
        llm.enqueue(Text("Hello there."))
        llm.enqueue(ToolCall("get_weather", {"city": "Paris"}))
        ...  # point the code under test at llm.base_url
        assert llm.requests[-1]["messages"][-1]["role"] == "user"

With nothing queued it echoes: ``Text("You said: " + <last user message text>)``.
Tokens are counted as whitespace-separated words.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .scripted_server import DropConnection as _DropConnection
from .scripted_server import ScriptedServer

# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Stream `text` in `chunk_size`-character deltas, sleeping `delay_s` before each one.
    `finish_reason=None` ends the stream (still with [DONE]) without any finish_reason."""

    text: str
    chunk_size: int = 4
    delay_s: float = 0.0
    finish_reason: str | None = "stop"


@dataclass(frozen=True)
class ToolCall:
    """One function call; `arguments` (a dict is JSON-encoded) streams in `chunk_size` pieces."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None
    chunk_size: int = 8
    delay_s: float = 0.0


@dataclass(frozen=True)
class ToolCalls:
    """Several parallel tool calls in one reply, optionally preceded by some `text`."""

    calls: list[ToolCall]
    text: str = ""


@dataclass(frozen=True)
class HTTPError:
    """Answer with this status. `body` defaults to an OpenAI-style error object."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Hang:
    """Send no bytes for `seconds` (after streaming `after_text`, if given), then end normally."""

    seconds: float
    after_text: str | None = None


@dataclass(frozen=True)
class Malformed:
    """Send a stream (or body) that is not valid JSON."""


@dataclass(frozen=True)
class CutMidStream:
    """Stream `text` as deltas, then drop the connection without finish_reason or [DONE]."""

    text: str = "This answer will be cut"
    chunk_size: int = 4


Reply = Text | ToolCall | ToolCalls | HTTPError | Hang | Malformed | CutMidStream


# --- helpers -------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _count_tokens(text: str) -> int:
    return len(text.split())


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + max(1, size)] for i in range(0, len(text), max(1, size))]


def _plan(reply: Reply) -> tuple[str, int, float, str | None, list[ToolCall]]:
    """(text, chunk_size, delay_s, finish_reason, tool calls) of a reply that streams."""
    if isinstance(reply, Text):
        return reply.text, reply.chunk_size, reply.delay_s, reply.finish_reason, []
    if isinstance(reply, ToolCall):
        return "", 4, 0.0, "tool_calls", [reply]
    if isinstance(reply, ToolCalls):
        return reply.text, 4, 0.0, "tool_calls", list(reply.calls)
    if isinstance(reply, CutMidStream):
        return reply.text, reply.chunk_size, 0.0, "stop", []
    if isinstance(reply, Hang):
        return reply.after_text or "", 4, 0.0, "stop", []
    raise TypeError(f"not a streamable reply: {reply!r}")


# --- server --------------------------------------------------------------------------------


class ScriptedLLMServer(ScriptedServer):
    name = "scripted LLM"

    def __init__(self, *, model: str = "scripted-model", port: int = 0) -> None:
        self.model = model
        super().__init__([Route("/v1/chat/completions", self._chat, methods=["POST"]),
                          Route("/v1/models", self._models, methods=["GET"])], port=port)

    # HTTP handlers (server thread)
    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "parley"}]}
        )

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        reply = self._record(body)
        if reply is None:
            user = [m for m in body.get("messages", []) if m.get("role") == "user"]
            reply = Text("You said: " + (_content_text(user[-1].get("content")) if user else ""))
        if isinstance(reply, HTTPError):
            payload = reply.body or {"error": {"message": f"scripted HTTP {reply.status}", "type": "scripted_error"}}
            if isinstance(payload, str):
                return Response(payload, status_code=reply.status, headers=reply.headers)
            return JSONResponse(payload, status_code=reply.status, headers=reply.headers)
        if isinstance(reply, Hang) and reply.after_text is None:
            await self._sleep(reply.seconds, request)
        stream = bool(body.get("stream"))
        if isinstance(reply, Malformed):
            if stream:
                return Response(b'data: {"id": "chatcmpl-bad", "choices": [{"delta": \n\ndata: [DONE]\n\n',
                                media_type="text/event-stream")  # fmt: skip
            return Response(b'{"id": "chatcmpl-bad", "choices": [', media_type="application/json")
        chunks = self._chunks(body, reply)
        if stream:
            return StreamingResponse(self._sse(chunks), media_type="text/event-stream")
        if isinstance(reply, CutMidStream):
            return StreamingResponse(self._cut_body(), media_type="application/json")
        return JSONResponse(self._merge([c async for c in chunks]))


    async def _cut_body(self) -> AsyncIterator[bytes]:
        yield b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": [{"ind'
        raise _DropConnection

    async def _sse(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        done = False
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            done = True
        except _DropConnection:
            done = True  # a scripted cut, not the client leaving
            raise
        finally:
            if not done:
                with self._lock:
                    self._disconnects += 1

    async def _chunks(self, body: dict[str, Any], reply: Reply) -> AsyncIterator[dict[str, Any]]:
        """The reply as chat.completion.chunk dicts (raising _DropConnection for a cut)."""
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                    "choices": [choice]}  # fmt: skip

        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        yield chunk({"role": "assistant", "content": ""})
        text, size, delay, finish, calls = _plan(reply)
        if limit is not None and _count_tokens(text) > limit:
            text, finish = "".join(re.findall(r"\s*\S+", text)[: int(limit)]), "length"
        for piece in _pieces(text, size):
            await asyncio.sleep(delay)
            yield chunk({"content": piece})
        if isinstance(reply, CutMidStream):
            await asyncio.sleep(0.01)  # let the deltas reach the client before the drop
            raise _DropConnection
        if isinstance(reply, Hang):
            await self._sleep(reply.seconds)
        arg_tokens = 0
        for index, call in enumerate(calls):
            args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            arg_tokens += max(1, len(args) // 4)
            call_id = call.call_id or f"call_{uuid.uuid4().hex[:24]}"
            function = {"name": call.name, "arguments": ""}
            yield chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": function}]})
            for piece in _pieces(args, call.chunk_size):
                await asyncio.sleep(call.delay_s)
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage") or not body.get("stream"):
            prompt = sum(_count_tokens(_content_text(m.get("content"))) for m in body.get("messages", []))
            completion = _count_tokens(text) + arg_tokens
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            yield {**chunk({}), "choices": [], "usage": usage}

    def _merge(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        """Fold streamed chunks into one non-streaming chat.completion object."""
        content, calls, finish, usage = "", {}, "stop", None
        for c in chunks:
            usage = c.get("usage") or usage
            for choice in c["choices"]:
                delta = choice["delta"]
                content += delta.get("content") or ""
                finish = choice["finish_reason"] or finish
                for tc in delta.get("tool_calls") or []:
                    slot = calls.setdefault(tc["index"], {"id": tc.get("id"), "type": "function",
                                                          "function": {"name": "", "arguments": ""}})  # fmt: skip
                    slot["function"]["name"] += tc["function"].get("name") or ""
                    slot["function"]["arguments"] += tc["function"].get("arguments") or ""
        message = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return {
            "id": chunks[0]["id"], "object": "chat.completion", "created": chunks[0]["created"], "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }  # fmt: skip
