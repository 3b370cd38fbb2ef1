"""Tokens per minute counted across every node, without a Redis call per response.

Each node keeps what it used since its last flush and, once a second (the shared state's
flushers), adds it to `tpm:<key id>:<minute>` in Redis and reads back every node's total for
the keys it has live sessions of (or used this minute).  `remaining()` is that total plus what this node has not flushed yet, so a
key that spreads its sessions over nodes can overshoot its budget by at most about a second of
the other nodes' use.  Windows are calendar minutes (the same on every node).
"""

from __future__ import annotations

import time
from typing import Any

from .redis_shared import PREFIX, RedisShared


class ClusterTokenLimiter:
    """The `TokenLimiter` interface (runtime/limits.py) over Redis; sync, as the runner calls it."""

    def __init__(self, shared: RedisShared, tokens_per_minute: int, clock: Any = time.time) -> None:
        self.limit = tokens_per_minute
        self.shared = shared
        self.clock = clock
        self._pending: dict[tuple[str, int], int] = {}  # (key id, minute) -> tokens not flushed yet
        self._totals: dict[tuple[str, int], int] = {}  # every node's total at the last flush
        self._live: dict[str, int] = {}  # key id -> this node's live sessions of it (their totals are read back)
        shared.flushers.append(self.flush)

    def session_started(self, key: str) -> None:
        self._live[key] = self._live.get(key, 0) + 1

    def session_ended(self, key: str) -> None:
        self._live[key] -= 1
        if not self._live[key]:
            del self._live[key]

    @staticmethod
    def _minute(now: float) -> int:
        return int(now // 60)

    def record(self, key: str, tokens: int, now: float) -> None:
        slot = (key, self._minute(now))
        self._pending[slot] = self._pending.get(slot, 0) + tokens

    def used(self, key: str, now: float) -> int:
        slot = (key, self._minute(now))
        return self._totals.get(slot, 0) + self._pending.get(slot, 0)

    def remaining(self, key: str, now: float) -> int:
        return max(0, self.limit - self.used(key, now))

    def rate_limits(self, key: str, now: float) -> list[dict[str, object]]:
        return [{"name": "tokens", "limit": self.limit, "remaining": self.remaining(key, now),
                 "reset_seconds": round(60.0 - now % 60.0, 3)}]

    async def flush(self) -> None:
        """Add this node's tokens to the shared counters and read back the totals (one round trip)."""
        minute = self._minute(self.clock())
        for slot in [s for s in self._totals if s[1] < minute]:
            del self._totals[slot]
        pending, self._pending = self._pending, {}
        slots = sorted(set(pending) | set(self._totals) | {(key, minute) for key in self._live})
        if not slots:
            return

        async def run() -> Any:
            async with self.shared.redis.pipeline(transaction=False) as pipe:
                for key, slot_minute in slots:
                    name = f"{PREFIX}tpm:{key}:{slot_minute}"
                    pipe.incrby(name, pending.get((key, slot_minute), 0))
                    pipe.expire(name, 120)
                return await pipe.execute()

        try:
            results = await self.shared._call(run())
        except Exception:
            for slot, tokens in pending.items():  # try again on the next beat
                self._pending[slot] = self._pending.get(slot, 0) + tokens
            raise
        for slot, total in zip(slots, results[::2]):
            if slot[1] >= minute:
                self._totals[slot] = int(total)
