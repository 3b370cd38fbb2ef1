"""Building and registering live sessions, shared by the WebSocket and WebRTC entry points."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from ..core.session import Session, SessionSetup
from ..protocol.errors import ProtocolError
from ..runtime.media import Media
from ..runtime.runner import Engines, RunnerLimits, SessionRunner, Transport
from .auth import Principal
from .state import AppState


def model_refusal(state: AppState, model: str) -> ProtocolError | None:
    if state.accepts_model(model):
        return None
    models = state.settings.models
    return ProtocolError(f'Model "{model[:80]}" is not supported in realtime mode. Supported models: '
                         + ", ".join(models[:8]) + ("..." if len(models) > 8 else ""), "invalid_model", "model")


def session_limit_refusal(state: AppState, principal: Principal) -> ProtocolError | None:
    limit = state.settings.max_sessions_per_key
    if limit and state.sessions_by_key.get(principal.key_id, 0) >= limit:
        return ProtocolError(f"This key already has {limit} concurrent sessions, the most allowed "
                             "(PARLEY_MAX_SESSIONS_PER_KEY).", "session_limit_exceeded")
    return None


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


@contextlib.contextmanager
def registered(state: AppState, runner: SessionRunner, principal: Principal) -> Iterator[None]:
    """Count the session as live (for limits, shutdown and /metrics) while the block runs."""
    state.live_sessions += 1
    state.runners.add(runner)
    state.sessions_by_key[principal.key_id] = state.sessions_by_key.get(principal.key_id, 0) + 1
    try:
        yield
    finally:
        state.live_sessions -= 1
        state.runners.discard(runner)
        state.sessions_by_key[principal.key_id] -= 1
        if not state.sessions_by_key[principal.key_id]:
            del state.sessions_by_key[principal.key_id]
