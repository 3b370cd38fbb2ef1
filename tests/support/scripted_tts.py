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
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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


class ScriptedTTSServer:
    def __init__(self, *, port: int = 0) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._requests: list[dict[str, Any]] = []
        self._disconnects = 0
        self._completed = 0
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/v1/audio/speech", self._speech, methods=["POST"])])

    # scripting API (test thread)
    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Each request's JSON body (model, voice, input, speed, response_format, ...) plus
        "authorization": the Authorization header."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """How many streamed bodies the client abandoned before the end."""
        with self._lock:
            return self._disconnects

    @property
    def completed(self) -> int:
        """How many streamed bodies were sent to the end."""
        with self._lock:
            return self._completed

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._replies.clear()
            self._disconnects = self._completed = 0

    def wait_for(self, predicate: Any, timeout_s: float = 5.0) -> None:
        """Block until `predicate(self)` is true (e.g. `lambda s: s.disconnects == 1`)."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError("scripted TTS server: condition not reached")
            time.sleep(0.01)

    # lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> ScriptedTTSServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", loop="asyncio", http="h11",
                                lifespan="off", timeout_graceful_shutdown=1)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("scripted TTS server failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ScriptedTTSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # HTTP handler (server thread)
    async def _speech(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self._requests.append({**body, "authorization": request.headers.get("authorization")})
            reply = self._replies.popleft() if self._replies else Tone()
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
                    self._completed += 1
                else:
                    self._disconnects += 1

    async def _sleep(self, seconds: float, request: Request | None = None) -> None:
        """Sleep, but wake early when the server stops or (if given) the client goes away."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            if request is not None and await request.is_disconnected():
                return
            await asyncio.sleep(min(0.05, left))
