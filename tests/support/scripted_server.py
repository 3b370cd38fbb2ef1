"""What every scripted model server of the tests shares: a Starlette app served by uvicorn on a
loopback port in a background thread, a queue of scripted replies, the requests received, and
the count of streams the client abandoned.  `ScriptedLLMServer`, `ScriptedSTTServer` and
`ScriptedTTSServer` add their own routes and replies."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

S = TypeVar("S", bound="ScriptedServer")


class DropConnection(Exception):
    """Raised inside a streaming body: uvicorn then closes the socket mid-response."""


class _HideScriptedDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, DropConnection):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


logging.getLogger("uvicorn.error").addFilter(_HideScriptedDrops())


class ScriptedServer:
    name = "scripted"
    lifespan = "off"  # "on" for apps that start things in their lifespan

    def __init__(self, routes: list[Route], *, port: int = 0) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._replies: deque[Any] = deque()
        self._requests: list[dict[str, Any]] = []
        self._disconnects = 0
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=routes)

    # scripting API (test thread)
    def enqueue(self, *replies: Any) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """How many streamed answers the client abandoned before the end."""
        with self._lock:
            return self._disconnects

    @property
    def pending(self) -> int:
        """How many enqueued replies are still unused."""
        with self._lock:
            return len(self._replies)

    def clear(self) -> None:
        """Forget recorded requests, queued replies and the counts."""
        with self._lock:
            self._requests.clear()
            self._replies.clear()
            self._reset_counts()

    def _reset_counts(self) -> None:
        self._disconnects = 0

    def wait_for_requests(self, n: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least `n` requests have arrived; return them."""
        deadline = time.monotonic() + timeout_s
        while len(reqs := self.requests) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {n} requests, got {len(reqs)}")
            time.sleep(0.01)
        return reqs

    # server thread helpers
    def _record(self, request: dict[str, Any], default: Any = None) -> Any:
        """Record a request and take the next scripted reply (`default` when none is queued)."""
        with self._lock:
            self._requests.append(request)
            return self._replies.popleft() if self._replies else default

    async def _sleep(self, seconds: float, request: Request | None = None) -> None:
        """Sleep, but wake early when the server stops or (if given) the client goes away."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            if request is not None and await request.is_disconnected():
                return
            await asyncio.sleep(min(0.05, left))

    # lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self: S) -> S:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", loop="asyncio", http="h11",
                                lifespan=self.lifespan, timeout_graceful_shutdown=1)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
