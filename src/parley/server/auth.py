"""API keys and ephemeral client secrets.

Keys are compared with `hmac.compare_digest` against every configured key (no early exit), and
are never logged.  Ephemeral secrets (`ek_...`) live in the shared state (cluster/: in memory for
one process, in Redis for many), keyed by their SHA-256, each with the session configuration it
was minted with; they open sessions on any node until they expire or are revoked (a session that
started before then runs on).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from ..cluster.base import KeyRecord, SharedState
from ..protocol import session_models as sm
from ..protocol.ids import ephemeral_key
from ..protocol.strict import parse_strict

_ga_update: TypeAdapter[Any] = TypeAdapter(sm.GASessionUpdate)


@dataclass(frozen=True)
class Principal:
    """Who is connecting: `key_id` names the key for limits and logs (a hash, never the key)."""

    key_id: str
    ephemeral: bool = False
    bound: Any = None  # validated GA session update bound to an ephemeral key
    kind: str = "realtime"


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Keys:
    def __init__(self, api_keys: list[str], shared: SharedState) -> None:
        self._api_keys = [k.encode() for k in api_keys]
        self.shared = shared

    @property
    def open(self) -> bool:
        """No keys configured: anyone on loopback may connect (the CLI refuses other hosts)."""
        return not self._api_keys

    def check_api_key(self, candidate: str | None) -> bool:
        if candidate is None:
            return False
        given = candidate.encode()
        ok = False
        for key in self._api_keys:
            ok |= hmac.compare_digest(given, key)
        return ok

    async def mint(self, *, now: float, ttl_s: float, bound: Any, kind: str) -> tuple[str, int]:
        """A new ephemeral key bound to `bound` (a GA session update, or None); raises
        `SharedStateUnavailable` when the shared store does not answer."""
        value = ephemeral_key()
        expires_at = now + ttl_s
        if self.shared.clustered and bound is not None:  # stored as JSON for the other nodes
            bound = _ga_update.dump_json(bound, exclude_unset=True, by_alias=True).decode()
        await self.shared.put_key(_digest(value), KeyRecord(expires_at, kind, bound))
        return value, int(expires_at)

    async def revoke(self, value: str) -> bool:
        return value.startswith("ek_") and await self.shared.revoke_key(_digest(value))

    async def authenticate(self, candidate: str | None, *, now: float, allow_ephemeral: bool = True) -> Principal | None:
        """The principal for a presented key, or None when it is refused; an ephemeral key is
        looked up in the shared state (`SharedStateUnavailable` when it does not answer)."""
        if candidate and allow_ephemeral and candidate.startswith("ek_"):
            record = await self.shared.get_key(_digest(candidate))
            if record is None or record.expires_at <= now:
                return None
            bound = record.bound
            if isinstance(bound, str):
                bound = parse_strict(_ga_update, json.loads(bound), "session")
            return Principal(key_id(candidate), True, bound, record.kind)
        if self.open:
            return Principal(key_id(candidate) if candidate else "anonymous")
        if self.check_api_key(candidate):
            return Principal(key_id(candidate or ""))
        return None


def header_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents in its headers: `Authorization: Bearer <key>` or `api-key`."""
    return bearer(headers.get("authorization")) or headers.get("api-key")


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "basic") and value.strip():
        return value.strip()
    return None
