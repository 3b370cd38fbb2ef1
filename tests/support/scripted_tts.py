"""A scripted speech server speaking OpenAI's `/v1/audio/speech` HTTP API, for tests.

It runs uvicorn on a real loopback socket in a background thread, like `scripted_llm`, so any
HTTP client (the `openai` package, a Parley server process) can use it as its TTS::

    with ScriptedTTSServer() as tts:
        tts.enqueue(HTTPError(500))                 # the next request fails
        tts.enqueue(Tone(chunk_ms=20, delay_s=0.01)) # the one after streams slowly
        ...  # point the code under test at tts.base_url
        assert tts.requests[-1]["voice"] == "alloy"

With nothing queued it answers `Tone()`: a deterministic 440 Hz sine as PCM16 mono 24 kHz
(`response_format="pcm"` only; anything else is a 400), `tone_samples(input, speed)` samples long
(60 ms per character, divided by `speed`).  `tone_pcm(input, speed)` is the exact body.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .scripted_server import ScriptedServer

SAMPLE_RATE = 24_000
MS_PER_CHAR = 60
FREQUENCY_HZ = 440.0
AMPLITUDE = 0.3

# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tone:
    """Stream the tone in pieces of `chunk_ms` (or exactly `chunk_bytes`, which may split a
    sample), sleeping `delay_s` before each piece after the first."""

    chunk_ms: int = 20
    delay_s: float = 0.0
    chunk_bytes: int | None = None


@dataclass(frozen=True)
class HTTPError:
    """Answer with this status; `body` defaults to an OpenAI-style error object."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Hang:
    """Stream the first `after_ms` of the tone (0: send not even the headers), then send
    nothing for `seconds` (waking early if the client leaves), then the rest."""

    seconds: float
    after_ms: int = 0
    chunk_ms: int = 20


Reply = Tone | HTTPError | Hang


def tone_samples(text: str, speed: float = 1.0) -> int:
    return max(1, round(SAMPLE_RATE * MS_PER_CHAR / 1000 * len(text) / (speed or 1.0)))


def tone_pcm(text: str, speed: float = 1.0) -> bytes:
    """The exact body the server streams for `text` at `speed`."""
    t = np.arange(tone_samples(text, speed)) / SAMPLE_RATE
    wave = AMPLITUDE * 32767 * np.sin(2 * math.pi * FREQUENCY_HZ * t)
    return np.round(wave).astype("<i2").tobytes()


def _pieces(data: bytes, size: int) -> list[bytes]:
    size = max(1, size)
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- server --------------------------------------------------------------------------------


class ScriptedTTSServer(ScriptedServer):
    name = "scripted TTS"

    def __init__(self, *, port: int = 0) -> None:
        self._completed_at: list[float] = []
        super().__init__([Route("/v1/audio/speech", self._speech, methods=["POST"])], port=port)

    def _reset_counts(self) -> None:
        super()._reset_counts()
        self._completed_at.clear()

    @property
    def completed(self) -> int:
        """How many streamed bodies were sent to the end."""
        with self._lock:
            return len(self._completed_at)

    @property
    def completed_at(self) -> list[float]:
        """When (`time.monotonic()`) each streamed body was sent to the end."""
        with self._lock:
            return list(self._completed_at)

    def wait_for(self, predicate: Any, timeout_s: float = 5.0) -> None:
        """Block until `predicate(self)` is true (e.g. `lambda s: s.disconnects == 1`)."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError("scripted TTS server: condition not reached")
            time.sleep(0.01)

    # HTTP handler (server thread)
    async def _speech(self, request: Request) -> Response:
        body = await request.json()
        reply = self._record({**body, "authorization": request.headers.get("authorization")}, default=Tone())
        if isinstance(reply, HTTPError):
            payload = reply.body or {"error": {"message": f"scripted HTTP {reply.status}", "type": "scripted_error"}}
            if isinstance(payload, str):
                return Response(payload, status_code=reply.status, headers=reply.headers)
            return JSONResponse(payload, status_code=reply.status, headers=reply.headers)
        if body.get("response_format") != "pcm":
            return JSONResponse({"error": {"message": "the scripted server only speaks pcm"}}, status_code=400)
        speed = float(body.get("speed") or 1.0)
        pcm = tone_pcm(str(body.get("input", "")), speed)
        if isinstance(reply, Hang) and reply.after_ms == 0:
            await self._sleep(reply.seconds, request)
        return StreamingResponse(self._stream(pcm, reply, request), media_type="audio/pcm")

    async def _stream(self, pcm: bytes, reply: Tone | Hang, request: Request) -> AsyncIterator[bytes]:
        bytes_per_ms = SAMPLE_RATE * 2 // 1000
        size = reply.chunk_bytes if isinstance(reply, Tone) and reply.chunk_bytes else reply.chunk_ms * bytes_per_ms
        delay = reply.delay_s if isinstance(reply, Tone) else 0.0
        hang_at = reply.after_ms * bytes_per_ms if isinstance(reply, Hang) and reply.after_ms else None
        sent, done = 0, False
        try:
            for index, piece in enumerate(_pieces(pcm, size)):
                if index and delay:
                    await asyncio.sleep(delay)
                if hang_at is not None and sent >= hang_at:
                    await self._sleep(reply.seconds, request)  # type: ignore[union-attr]
                    hang_at = None
                    if await request.is_disconnected():
                        return  # the client left during the hang: abandoned, not completed
                yield piece
                sent += len(piece)
            done = True
        finally:
            with self._lock:
                if done:
                    self._completed_at.append(time.monotonic())
                else:
                    self._disconnects += 1

