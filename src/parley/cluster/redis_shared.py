"""Shared state in Redis, for many Parley workers and machines (`PARLEY_REDIS_URL`).

Keys (all under `parley:`):
* `ek:<sha256 of the key>`: an ephemeral key's record (JSON), expiring with the key.  Revoking
  deletes it; every node checks it when the key opens a session, so a revoked key is refused
  everywhere at once.
* `leases:<key id>`: a sorted set of that key's live sessions, one member per session
  (`<node>:<n>`), scored by when its lease lapses (Redis' own clock, so nodes' clocks do not
  matter).  A session is admitted by one script that drops lapsed leases and counts the rest
  against the limit; each node renews its leases on its heartbeat, so a node that dies gives
  its places back within the lease TTL.
* `call:<call id>`: which node holds a live call and where to forward its requests, renewed on
  the heartbeat (a dead node's calls disappear within the TTL).
* `node:<node id>`: the node itself, for operators (`redis-cli --scan --pattern 'parley:node:*'`).
* `tpm:<key id>:<minute>`: tokens used in that minute by every node (see tokens.py).

The heartbeat re-writes everything the node holds (not only extends it), so after a Redis
restart the live sessions and calls are back within one heartbeat.  When Redis does not answer,
`SharedStateUnavailable` is raised to the caller (new sessions and keys are refused with a clear
error), `healthy` turns False (so /readyz answers 503) and live sessions go on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .base import CallOwner, KeyRecord, SharedStateUnavailable

log = logging.getLogger("parley.cluster")

PREFIX = "parley:"

# Drop lapsed leases, then admit one more if the key is under its limit (0: no limit).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""

# Renew (or re-create, after a Redis restart) this node's leases of one key.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""


class RedisShared:
    clustered = True

    def __init__(self, url: str, *, node_id: str, internal_url: str, ttl_s: float = 15.0,
                 heartbeat_s: float = 5.0, timeout_s: float = 1.0) -> None:
        self.node_id = node_id
        self.internal_url = internal_url
        self.ttl_ms = int(ttl_s * 1000)
        self.heartbeat_s = heartbeat_s
        self.healthy = True
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                             retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._leases: dict[str, set[str]] = {}
        self._calls: dict[str, str] = {}  # call id -> its record (JSON)
        self._numbers = itertools.count(1)
        self._heartbeat: asyncio.Task[None] | None = None
        self.round_trips = 0  # for the bench: calls to Redis made by this node
        self.flushers: list[Any] = []  # async callables run on a faster beat (tokens.py)

    async def start(self) -> None:
        try:
            await self._beat()
        except SharedStateUnavailable:
            log.error("Redis does not answer at start; new sessions are refused until it does")
        self._heartbeat = asyncio.create_task(self._run_heartbeat(), name="cluster-heartbeat")

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            await self._call(self._forget_node())
        except SharedStateUnavailable:
            pass
        await self.redis.aclose()

    async def _forget_node(self) -> Any:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(PREFIX + "node:" + self.node_id, *(PREFIX + "call:" + c for c in self._calls))
            for key_id, leases in self._leases.items():
                pipe.zrem(PREFIX + "leases:" + key_id, *leases)
            return await pipe.execute()

    # ---- the one place Redis is called: counts round trips, maps failures ----------------------

    async def _call(self, awaitable: Any) -> Any:
        self.round_trips += 1
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            if self.healthy:
                log.error("Redis is unreachable: %s; refusing new sessions, live ones go on", type(exc).__name__)
            self.healthy = False
            raise SharedStateUnavailable(str(exc)) from None
        if not self.healthy:
            log.info("Redis answers again; taking new sessions")
        self.healthy = True
        return result

    # ---- heartbeat -----------------------------------------------------------------------------

    async def _run_heartbeat(self) -> None:
        beats = max(1, round(self.heartbeat_s))
        tick = self.heartbeat_s / beats  # flushers (tokens) run about once a second
        n = 0
        while True:
            await asyncio.sleep(tick)
            n += 1
            try:
                for flush in self.flushers:
                    await flush()
                if n % beats == 0:
                    await self._beat()
            except SharedStateUnavailable:
                pass
            except Exception:  # noqa: BLE001 - the heartbeat must outlive a bug in one beat
                log.exception("cluster heartbeat failed")

    async def _beat(self) -> None:
        async def beat() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                node = json.dumps({"internal_url": self.internal_url, "calls": len(self._calls)})
                pipe.set(PREFIX + "node:" + self.node_id, node, px=self.ttl_ms)
                for call_id, record in self._calls.items():
                    pipe.set(PREFIX + "call:" + call_id, record, px=self.ttl_ms)
                for key_id, leases in self._leases.items():
                    if leases:
                        await self._renew(keys=[PREFIX + "leases:" + key_id], args=[self.ttl_ms, *leases], client=pipe)
                return await pipe.execute()
        await self._call(beat())

    # ---- ephemeral keys ------------------------------------------------------------------------

    async def put_key(self, digest: str, record: KeyRecord) -> None:
        value = json.dumps({"expires_at": record.expires_at, "kind": record.kind, "bound": record.bound})
        await self._call(self.redis.set(PREFIX + "ek:" + digest, value, pxat=int(record.expires_at * 1000)))

    async def get_key(self, digest: str) -> KeyRecord | None:
        raw = await self._call(self.redis.get(PREFIX + "ek:" + digest))
        if raw is None:
            return None
        data = json.loads(raw)
        return KeyRecord(float(data["expires_at"]), data["kind"], data["bound"])

    async def revoke_key(self, digest: str) -> bool:
        return bool(await self._call(self.redis.delete(PREFIX + "ek:" + digest)))

    # ---- session leases ------------------------------------------------------------------------

    async def acquire_session(self, key_id: str, limit: int) -> str | None:
        lease = f"{self.node_id}:{next(self._numbers)}"
        ok = await self._call(self._acquire(keys=[PREFIX + "leases:" + key_id], args=[limit, lease, self.ttl_ms]))
        if not ok:
            return None
        self._leases.setdefault(key_id, set()).add(lease)
        return lease

    async def release_session(self, key_id: str, lease: str) -> None:
        held = self._leases.get(key_id)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[key_id]
        try:
            await self._call(self.redis.zrem(PREFIX + "leases:" + key_id, lease))
        except SharedStateUnavailable:
            pass  # not renewed any more: it lapses within the TTL

    def sessions_of(self, key_id: str) -> int:
        return len(self._leases.get(key_id, ()))

    # ---- the call directory --------------------------------------------------------------------

    async def register_call(self, call_id: str, key_id: str) -> None:
        record = json.dumps({"node_id": self.node_id, "internal_url": self.internal_url, "key_id": key_id})
        self._calls[call_id] = record
        try:
            await self._call(self.redis.set(PREFIX + "call:" + call_id, record, px=self.ttl_ms))
        except SharedStateUnavailable:
            pass  # the next heartbeat writes it

    async def unregister_call(self, call_id: str) -> None:
        self._calls.pop(call_id, None)
        try:
            await self._call(self.redis.delete(PREFIX + "call:" + call_id))
        except SharedStateUnavailable:
            pass

    async def call_owner(self, call_id: str) -> CallOwner | None:
        raw = await self._call(self.redis.get(PREFIX + "call:" + call_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return CallOwner(data["node_id"], data["internal_url"])
