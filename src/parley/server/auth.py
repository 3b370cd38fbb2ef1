"""API keys and ephemeral client secrets.

Keys are compared with `hmac.compare_digest` against every configured key (no early exit), and
are never logged.  Ephemeral secrets (`ek_...`) live in memory, keyed by their SHA-256, each with
the session configuration it was minted with; they open sessions until they expire (a session
that started before expiry runs on).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol.ids import ephemeral_key


@dataclass(frozen=True)
class Principal:
    """Who is connecting: `key_id` names the key for limits and logs (a hash, never the key)."""

    key_id: str
    ephemeral: bool = False
    bound: Any = None  # validated GA session update bound to an ephemeral key
    kind: str = "realtime"


@dataclass
class _Secret:
    expires_at: float
    bound: Any
    kind: str


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Keys:
    def __init__(self, api_keys: list[str]) -> None:
        self._api_keys = [k.encode() for k in api_keys]
        self._secrets: dict[bytes, _Secret] = {}

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

    def mint(self, *, now: float, ttl_s: float, bound: Any, kind: str) -> tuple[str, int]:
        self._prune(now)
        value = ephemeral_key()
        expires_at = now + ttl_s
        self._secrets[hashlib.sha256(value.encode()).digest()] = _Secret(expires_at, bound, kind)
        return value, int(expires_at)

    def _prune(self, now: float) -> None:
        for digest in [d for d, s in self._secrets.items() if s.expires_at <= now]:
            del self._secrets[digest]

    def authenticate(self, candidate: str | None, *, now: float, allow_ephemeral: bool = True) -> Principal | None:
        """The principal for a presented key, or None when it is refused."""
        if candidate and allow_ephemeral and candidate.startswith("ek_"):
            secret = self._secrets.get(hashlib.sha256(candidate.encode()).digest())
            if secret is not None and secret.expires_at > now:
                return Principal(key_id(candidate), True, secret.bound, secret.kind)
            return None
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
