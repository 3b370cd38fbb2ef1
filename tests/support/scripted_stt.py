"""A scripted speech-to-text server speaking OpenAI's `/v1/audio/transcriptions` API, for tests.

It runs uvicorn on a real loopback socket in a background thread, so a Parley server process
(or any HTTP client) can use it as its STT::

    with ScriptedSTTServer() as stt:
        stt.enqueue(Text("turn off the lights"))
        stt.enqueue(HTTPError(503))
        ...  # point the code under test at stt.base_url
        assert stt.requests[-1]["language"] == "en"
        assert stt.requests[-1]["audio_seconds"] == pytest.approx(1.0)

With nothing queued it answers ``Text("hello world")``.

`streaming` says how it treats `stream=true` (change it at any time):

* "openai" (default): server-sent `transcript.text.delta` events, then `transcript.text.done`
  with usage, as OpenAI's gpt-4o-transcribe does;
* "vllm": `transcription.chunk` objects with `choices[0].delta.content`, usage in the last
  chunk, then `[DONE]`;
* "speaches": one `{"text": ...}` event per sentence, nothing else;
* "ignore": a plain JSON answer, as OpenAI's whisper-1 does;
* "refuse": HTTP 422 for any request that carries a `stream` field, as a strict server might.

Without `stream=true` every style answers with JSON: `{"text", "usage"}`.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .scripted_server import DropConnection as _DropConnection
from .scripted_server import ScriptedServer

STREAM_STYLES = ("openai", "vllm", "speaches", "ignore", "refuse")

# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Answer `text`.  Streamed in `chunk_size`-character deltas (whole sentences for the
    speaches style), sleeping `delay_s` before each; `usage` is "tokens", "duration" or None;
    `language` is added to the JSON answer when given."""

    text: str
    chunk_size: int = 4
    delay_s: float = 0.0
    usage: str | None = "tokens"
    language: str | None = None


@dataclass(frozen=True)
class HTTPError:
    """Answer with this status. `body` defaults to an OpenAI-style error object."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Hang:
    """Send no bytes for `seconds` (after streaming `after_text`, if given), then answer
    `after_text` (or "") normally."""

    seconds: float
    after_text: str | None = None


@dataclass(frozen=True)
class CutMidStream:
    """Stream `text` as deltas (or, without stream=true, half a JSON body), then drop the
    connection."""

    text: str = "this transcript will be cut"
    chunk_size: int = 4


@dataclass(frozen=True)
class Malformed:
    """Send a body (or stream event) that is not valid JSON."""


Reply = Text | HTTPError | Hang | CutMidStream | Malformed


# --- helpers -------------------------------------------------------------------------------


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + max(1, size)] for i in range(0, len(text), max(1, size))]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _usage(kind: str | None, text: str, seconds: float) -> dict[str, Any] | None:
    if kind == "tokens":
        audio = max(1, round(seconds * 10))
        prompt = 0
        out = len(text.split())
        return {"type": "tokens", "input_tokens": audio + prompt, "output_tokens": out,
                "total_tokens": audio + prompt + out,
                "input_token_details": {"audio_tokens": audio, "text_tokens": prompt}}  # fmt: skip
    if kind == "duration":
        return {"type": "duration", "seconds": math.ceil(seconds)}
    return None


def _describe_audio(data: bytes) -> dict[str, Any]:
    """Duration and format of an uploaded WAV (None values for anything else)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, frames = w.getframerate(), w.getnframes()
            return {"audio_seconds": frames / rate, "sample_rate": rate, "channels": w.getnchannels(),
                    "sample_width": w.getsampwidth()}  # fmt: skip
    except (wave.Error, EOFError):
        return {"audio_seconds": None, "sample_rate": None, "channels": None, "sample_width": None}


# --- server --------------------------------------------------------------------------------


class ScriptedSTTServer(ScriptedServer):
    """Each entry of `requests` has `model`, `language`, `prompt`, `stream` (the form field as
    sent, or None), `response_format`, `filename`, `content_type`, `audio_seconds`,
    `sample_rate`, `channels`, `sample_width` and `fields` (every other form field)."""

    name = "scripted STT"

    def __init__(self, *, streaming: str = "openai", port: int = 0) -> None:
        if streaming not in STREAM_STYLES:
            raise ValueError(f"streaming must be one of {STREAM_STYLES}")
        self.streaming = streaming
        super().__init__([Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"])], port=port)

    # HTTP handler (server thread)
    async def _transcribe(self, request: Request) -> Response:
        form = await request.form()
        upload = form.get("file")
        audio = await upload.read() if hasattr(upload, "read") else b""
        fields = {k: v for k, v in form.multi_items() if k != "file"}
        record = {
            "model": fields.pop("model", None),
            "language": fields.pop("language", None),
            "prompt": fields.pop("prompt", None),
            "stream": fields.pop("stream", None),
            "response_format": fields.pop("response_format", None),
            "filename": getattr(upload, "filename", None),
            "content_type": getattr(upload, "content_type", None),
            **_describe_audio(audio),
            "fields": fields,
        }
        stream = str(record["stream"]).lower() == "true"
        style = self.streaming
        with self._lock:
            self._requests.append(record)
            if style == "refuse" and record["stream"] is not None:
                reply: Reply | None = HTTPError(422, {"detail": [{"loc": ["body", "stream"],
                                                                  "msg": "Extra inputs are not permitted"}]})  # fmt: skip
            else:
                reply = self._replies.popleft() if self._replies else None
        reply = reply or Text("hello world")
        seconds = record["audio_seconds"] or 0.0

        if isinstance(reply, HTTPError):
            payload = reply.body or {"error": {"message": f"scripted HTTP {reply.status}", "type": "scripted_error"}}
            if isinstance(payload, str):
                return Response(payload, status_code=reply.status, headers=reply.headers)
            return JSONResponse(payload, status_code=reply.status, headers=reply.headers)
        if isinstance(reply, Hang) and reply.after_text is None:
            await self._sleep(reply.seconds, request)
            reply = Text("")
        if not stream or style in ("ignore", "refuse"):
            return self._plain(reply, seconds)
        return StreamingResponse(self._sse(reply, style, seconds), media_type="text/event-stream")

    def _plain(self, reply: Reply, seconds: float) -> Response:
        if isinstance(reply, Malformed):
            return Response(b'{"text": "unterminated', media_type="application/json")
        if isinstance(reply, CutMidStream):
            return StreamingResponse(self._cut_body(), media_type="application/json")
        if isinstance(reply, Hang):
            reply = Text(reply.after_text or "")
        assert isinstance(reply, Text)
        body: dict[str, Any] = {"text": reply.text}
        if (usage := _usage(reply.usage, reply.text, seconds)) is not None:
            body["usage"] = usage
        if reply.language:
            body["language"] = reply.language
        return JSONResponse(body)


    async def _cut_body(self) -> AsyncIterator[bytes]:
        yield b'{"text": "this answer will be cu'
        raise _DropConnection

    async def _sse(self, reply: Reply, style: str, seconds: float) -> AsyncIterator[bytes]:
        done = False
        try:
            async for event in self._events(reply, style, seconds):
                yield event if isinstance(event, bytes) else f"data: {json.dumps(event)}\n\n".encode()
            done = True
        except _DropConnection:
            done = True  # a scripted cut, not the client leaving
            raise
        finally:
            if not done:
                with self._lock:
                    self._disconnects += 1

    async def _events(self, reply: Reply, style: str, seconds: float) -> AsyncIterator[dict[str, Any] | bytes]:
        if isinstance(reply, Malformed):
            yield b'data: {"type": "transcript.text.delta", "delta": \n\n'
            return
        if isinstance(reply, Hang):
            text, size, delay, usage = reply.after_text or "", 4, 0.0, "tokens"
        elif isinstance(reply, CutMidStream):
            text, size, delay, usage = reply.text, reply.chunk_size, 0.0, None
        else:
            assert isinstance(reply, Text)
            text, size, delay, usage = reply.text, reply.chunk_size, reply.delay_s, reply.usage
        cid, created = f"trsc-{uuid.uuid4().hex[:12]}", int(time.time())

        def vllm_chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
            delta = {} if content is None else {"content": content}
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "stop_reason": None}
            return {"id": cid, "object": "transcription.chunk", "created": created, "model": "scripted",
                    "choices": [choice]}  # fmt: skip

        pieces = _sentences(text) if style == "speaches" else _pieces(text, size)
        for piece in pieces:
            await asyncio.sleep(delay)
            if style == "openai":
                yield {"type": "transcript.text.delta", "delta": piece, "logprobs": None}
            elif style == "vllm":
                yield vllm_chunk(piece)
            else:
                yield {"text": piece}
        if isinstance(reply, CutMidStream):
            await asyncio.sleep(0.01)  # let the deltas reach the client before the drop
            raise _DropConnection
        if isinstance(reply, Hang):
            await self._sleep(reply.seconds)
        body_usage = _usage(usage, text, seconds)
        if style == "openai":
            done: dict[str, Any] = {"type": "transcript.text.done", "text": text, "logprobs": None}
            if body_usage is not None:
                done["usage"] = body_usage
            yield done
        elif style == "vllm":
            last = vllm_chunk(None, "stop")
            if body_usage is not None and body_usage["type"] == "tokens":
                last["usage"] = {"prompt_tokens": body_usage["input_tokens"],
                                 "completion_tokens": body_usage["output_tokens"],
                                 "total_tokens": body_usage["total_tokens"]}  # fmt: skip
            yield last
            yield b"data: [DONE]\n\n"
