"""Building, admitting and registering live sessions, shared by the WebSocket, WebRTC and SIP
entry points.

Admission: a key may hold `max_sessions_per_key` sessions across every node (a lease in the
shared state, cluster/); the process takes at most `max_sessions` (all transports) and none
while its event loop is overloaded (`LoadGuard`, runtime/load.py) or the shared state does not
answer.  Refusals are counted by reason; live sessions are never dropped for load.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..cluster.base import SharedStateUnavailable
from ..core.session import Session, SessionSetup
from ..protocol.errors import ProtocolError
from ..runtime.load import Load, LoadGuard
from ..runtime.media import Media
from ..runtime.metrics import LOOP_CPU, LOOP_LAG, OVERLOADED, SESSIONS_REFUSED, count
from ..runtime.runner import Engines, RunnerLimits, SessionRunner, Transport
from .auth import Principal
from .state import AppState

log = logging.getLogger("parley.load")

#: what refused clients are told to wait (HTTP and SIP `Retry-After`, seconds)
RETRY_AFTER_S = 5


def model_refusal(state: AppState, model: str) -> ProtocolError | None:
    if state.accepts_model(model):
        return None
    models = state.settings.models
    return ProtocolError(f'Model "{model[:80]}" is not supported in realtime mode. Supported models: '
                         + ", ".join(models[:8]) + ("..." if len(models) > 8 else ""), "invalid_model", "model")


@dataclass
class Lease:
    """One session's place under its key's limit (None `id`: the key has no limit)."""

    key_id: str
    id: str | None
    owned: bool = False  # a call holds it (and gives it back when it ends)

    async def release(self, state: AppState) -> None:
        if self.id is not None:
            await state.shared.release_session(self.key_id, self.id)
            self.id = None


def shared_state_error() -> ProtocolError:
    count(SESSIONS_REFUSED, "shared_state")
    return ProtocolError("The server cannot reach its shared state (Redis); retry in a few seconds.",
                         "shared_state_unavailable", type="server_error")


async def take_lease(state: AppState, principal: Principal) -> Lease:
    """A place for one more session of the principal's key; raises the refusal (`ProtocolError`)."""
    limit = state.settings.max_sessions_per_key
    try:
        lease = await state.shared.acquire_session(principal.key_id, limit)
    except SharedStateUnavailable:
        raise shared_state_error() from None
    if lease is None:
        count(SESSIONS_REFUSED, "key_limit")
        raise ProtocolError(f"This key already has {limit} concurrent sessions, the most allowed "
                            "(PARLEY_MAX_SESSIONS_PER_KEY).", "session_limit_exceeded")
    return Lease(principal.key_id, lease)


def open_sessions(state: AppState) -> int:
    """Live sessions, and calls answered whose session has not started yet (or has just ended)."""
    return state.live_sessions + sum(1 for call in state.calls.values() if call.runner not in state.runners)


def saturation(state: AppState) -> str | None:
    """Why the process takes no new session now ("max_sessions", "overloaded"), or None."""
    limit = state.settings.max_sessions
    if limit and open_sessions(state) >= limit:
        return "max_sessions"
    if state.load is not None and state.load.overloaded:
        return "overloaded"
    if not state.shared.healthy:
        return "shared_state"
    return None


def capacity_refusal(state: AppState) -> ProtocolError | None:
    """The `server_overloaded` error for a new session the process cannot take, counted by reason."""
    reason = saturation(state)
    if reason is None:
        return None
    if reason == "shared_state":
        return shared_state_error()
    count(SESSIONS_REFUSED, reason)
    why = (f"is at its limit of {state.settings.max_sessions} concurrent sessions" if reason == "max_sessions"
           else "is overloaded")
    return ProtocolError(f"The server {why}; retry in a few seconds, or connect to another server.",
                         "server_overloaded", type="server_error")


def load_guard(state: AppState) -> LoadGuard:
    """The event loop's load probe, from the settings; it logs each change and feeds /metrics."""
    s = state.settings

    def changed(overloaded: bool, load: Load) -> None:
        extra = {"cpu_share": round(load.cpu_share, 3), "lag_ms": round(load.lag_s * 1000, 1),
                 "live_sessions": state.live_sessions}
        if overloaded:
            log.warning("event loop overloaded: refusing new sessions", extra=extra)
        else:
            log.info("event loop no longer overloaded: taking new sessions", extra=extra)

    guard = LoadGuard(cpu_above=s.overload_cpu, cpu_below=s.overload_cpu_clear, lag_above_s=s.overload_lag_ms / 1000,
                      lag_below_s=s.overload_lag_clear_ms / 1000, window_s=s.overload_window_s, on_change=changed)
    LOOP_CPU.set_function(lambda: guard.load.cpu_share)
    LOOP_LAG.set_function(lambda: guard.load.lag_s)
    OVERLOADED.set_function(lambda: float(guard.overloaded))
    return guard


def new_session(state: AppState, *, kind: str, dialect: str, model: str, bound: Any, media: bool = False) -> Session:
    settings = state.settings
    return Session(SessionSetup(
        kind=kind, dialect=dialect, model=model,
        expires_at=math.ceil(state.clock() + settings.session_max_minutes * 60),  # never sooner than promised
        bound=bound, accept_model=state.accepts_model, context_tokens=settings.llm_context_tokens,
        voice=settings.voice, instructions=settings.instructions, max_minutes=settings.session_max_minutes,
        media=media,
    ))


def new_runner(state: AppState, session: Session, transport: Transport, principal: Principal, *,
               transport_name: str = "websocket", media: Media | None = None) -> SessionRunner:
    assert state.engines is not None
    engines = state.engines
    settings = state.settings
    return SessionRunner(
        session, transport,
        Engines(engines.llm, lambda: engines.speech.tts, engines.speech.vad, engines.speech.stt_for),
        key_id=principal.key_id, limiter=state.limiter,
        limits=RunnerLimits(max_event_bytes=settings.max_event_bytes, outbox_bytes=settings.outbox_max_bytes,
                            slow_client_timeout_s=settings.slow_client_timeout_s),
        clock=state.clock, transport_name=transport_name, media=media,
    )


@contextlib.asynccontextmanager
async def registered(state: AppState, runner: SessionRunner, lease: Lease) -> AsyncIterator[None]:
    """Count the session as live (for limits, shutdown and /metrics) while the block runs; its
    lease is given back at the end."""
    state.live_sessions += 1
    state.runners.add(runner)
    state.limiter.session_started(lease.key_id)
    try:
        yield
    finally:
        state.live_sessions -= 1
        state.runners.discard(runner)
        state.limiter.session_ended(lease.key_id)
        await lease.release(state)
