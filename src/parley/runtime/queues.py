"""The bounded queues of a live session.

`Inbox`: what the session loop consumes.  Control inputs (expiry, shutdown, the end of the
client) jump ahead of data (client events, model and speech results), and data is bounded, so a
model that streams faster than the session can handle waits instead of piling up.

`Outbox`: server events waiting for the client, bounded in *bytes*.  When a client reads too
slowly the session loop waits for room; if none frees up within `stall_timeout_s`, `put` raises
`SlowClient` and the session is closed with 1013 ("try again later").  So one slow reader holds
at most `max_bytes` of server memory and never blocks anyone else.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class SlowClient(Exception):
    pass


class Inbox:
    def __init__(self, max_data: int = 128) -> None:
        self._control: collections.deque[Any] = collections.deque()
        self._data: asyncio.Queue[Any] = asyncio.Queue(max_data)
        self._wake = asyncio.Event()

    async def put(self, item: Any) -> None:
        await self._data.put(item)
        self._wake.set()

    def put_control(self, item: Any) -> None:
        self._control.append(item)
        self._wake.set()

    async def get(self) -> Any:
        while True:
            if self._control:
                return self._control.popleft()
            if not self._data.empty():
                return self._data.get_nowait()
            self._wake.clear()
            await self._wake.wait()

    def qsize(self) -> int:
        return len(self._control) + self._data.qsize()


class Outbox:
    def __init__(self, max_bytes: int = 4 * 1024 * 1024, stall_timeout_s: float = 10.0) -> None:
        self.max_bytes = max_bytes
        self.stall_timeout_s = stall_timeout_s
        self._items: collections.deque[Any] = collections.deque()
        self.bytes = 0
        self._changed = asyncio.Condition()

    async def put(self, text: str) -> None:
        size = len(text)
        async with self._changed:
            if self.bytes and self.bytes + size > self.max_bytes:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.bytes == 0 or self.bytes + size <= self.max_bytes),
                        self.stall_timeout_s,
                    )
                except asyncio.TimeoutError:
                    raise SlowClient(f"client did not read {self.bytes} bytes of events for {self.stall_timeout_s:g}s") from None
            self._items.append(text)
            self.bytes += size
            self._changed.notify_all()

    async def end(self, marker: Any) -> None:
        """Queue the writer's end marker, regardless of the bound."""
        async with self._changed:
            self._items.append(marker)
            self._changed.notify_all()

    async def get(self) -> Any:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item = self._items.popleft()
            if isinstance(item, str):
                self.bytes -= len(item)
            self._changed.notify_all()
            return item
