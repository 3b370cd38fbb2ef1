"""What the server asks of its shared state, whichever store keeps it (see the package doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class SharedStateUnavailable(Exception):
    """The shared store (Redis) did not answer: new sessions and keys are refused, live ones go on."""


@dataclass(frozen=True)
class KeyRecord:
    """An ephemeral key's meaning: when it expires, what kind of session it opens, and the
    session config bound to it (None; the validated config in one process; its JSON in Redis)."""

    expires_at: float
    kind: str
    bound: Any


@dataclass(frozen=True)
class CallOwner:
    """Where a call lives: the node's id and the base URL other nodes forward its requests to."""

    node_id: str
    internal_url: str


class SharedState(Protocol):
    node_id: str
    clustered: bool  # other nodes exist (requests may need forwarding)
    healthy: bool  # the store answered the last time it was asked

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    async def put_key(self, digest: str, record: KeyRecord) -> None: ...
    async def get_key(self, digest: str) -> KeyRecord | None: ...
    async def revoke_key(self, digest: str) -> bool: ...

    async def acquire_session(self, key_id: str, limit: int) -> str | None:
        """A lease id for one more session of `key_id`, or None when it already holds `limit` (0: no limit)."""
    async def release_session(self, key_id: str, lease: str) -> None: ...
    def sessions_of(self, key_id: str) -> int:
        """This node's live sessions of `key_id` (for logs and tests)."""

    async def register_call(self, call_id: str, key_id: str) -> None: ...
    async def unregister_call(self, call_id: str) -> None: ...
    async def call_owner(self, call_id: str) -> CallOwner | None: ...
