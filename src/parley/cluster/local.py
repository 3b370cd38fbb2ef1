"""Shared state for one process: in memory, as Parley has always kept it (no Redis)."""

from __future__ import annotations

import itertools
import time

from .base import CallOwner, KeyRecord


class LocalShared:
    clustered = False
    healthy = True

    def __init__(self, node_id: str = "local", clock: object = time.time) -> None:
        self.node_id = node_id
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}
        self._leases: dict[str, set[str]] = {}
        self._numbers = itertools.count(1)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def put_key(self, digest: str, record: KeyRecord) -> None:
        now = self._clock()  # type: ignore[operator]
        for old in [d for d, r in self._keys.items() if r.expires_at <= now]:
            del self._keys[old]
        self._keys[digest] = record

    async def get_key(self, digest: str) -> KeyRecord | None:
        return self._keys.get(digest)

    async def revoke_key(self, digest: str) -> bool:
        return self._keys.pop(digest, None) is not None

    async def acquire_session(self, key_id: str, limit: int) -> str | None:
        held = self._leases.setdefault(key_id, set())
        if limit and len(held) >= limit:
            if not held:
                del self._leases[key_id]
            return None
        lease = f"{self.node_id}:{next(self._numbers)}"
        held.add(lease)
        return lease

    async def release_session(self, key_id: str, lease: str) -> None:
        held = self._leases.get(key_id)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[key_id]

    def sessions_of(self, key_id: str) -> int:
        return len(self._leases.get(key_id, ()))

    async def register_call(self, call_id: str, key_id: str) -> None:
        return None  # the process's own call registry (AppState.calls) is the directory

    async def unregister_call(self, call_id: str) -> None:
        return None

    async def call_owner(self, call_id: str) -> CallOwner | None:
        return None
