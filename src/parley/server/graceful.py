"""Graceful shutdown for uvicorn.

uvicorn closes every WebSocket with 1012 the moment it is told to stop.  A voice call deserves
better: on the first SIGTERM/SIGINT the server stops taking new sessions (they get an error and
close 1013, "try again later"), lets live sessions run for up to `PARLEY_SHUTDOWN_GRACE_S`,
then closes the rest with 1001 ("going away") and exits.  A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType
from typing import Any

import uvicorn

from .state import AppState

log = logging.getLogger("parley.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState, grace_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining or self._loop is None or not self.state.runners:
            super().handle_exit(sig, frame)  # nothing to wait for, or a second signal
            return
        self.state.draining = True
        log.info("draining", extra={"live_sessions": self.state.live_sessions, "grace_s": self.grace_s})
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_sessions())

    async def _drain_sessions(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while self.state.runners and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for runner in list(self.state.runners):
            runner.shutdown(1001, "server_shutting_down")
        end = loop.time() + 5.0
        while self.state.runners and loop.time() < end:
            await asyncio.sleep(0.05)
        self.should_exit = True
