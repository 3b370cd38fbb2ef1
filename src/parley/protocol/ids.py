"""Identifiers in the hosted API's shapes: `event_` + 21 base62 characters and friends.

The core takes an `IdFactory` so tests can make ids deterministic; randomness is not I/O.
"""

from __future__ import annotations

import random
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

# prefix -> number of random characters, as seen on the wire (realtime-protocol.md section 3.0)
# `mcpr` (MCP approval requests) is short so that the docs' approval-response id
# `mcp_approval_<request id>` fits the 32-character limit on client item ids.
_LENGTHS = {"event": 21, "sess": 21, "conv": 21, "item": 21, "resp": 21, "call": 16, "mcpr": 14}


class IdFactory:
    """Makes ids.  With a seed the sequence is reproducible (tests); without, it is random.

    These ids name events, items and responses; they are not secrets (keys and call ids come
    from `secrets`), so a Mersenne Twister seeded from the OS is enough, and it costs one
    `choices` call per id instead of a system call per character (every server event has one).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed if seed is not None else secrets.randbits(128))

    def new(self, prefix: str) -> str:
        return prefix + "_" + "".join(self._rng.choices(_ALPHABET, k=_LENGTHS.get(prefix, 21)))

    def event(self) -> str:
        return self.new("event")


def ephemeral_key() -> str:
    """`ek_` + 32 hex characters; browsers' SDK guards only pass keys that start with `ek_`."""
    return "ek_" + secrets.token_hex(16)


def call_id() -> str:
    """A WebRTC/SIP call id, `rtc_` + 32 hex characters."""
    return "rtc_" + secrets.token_hex(16)
