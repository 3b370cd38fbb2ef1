"""`GET /v1/realtime`: authenticate, pick the session kind, model and dialect, run the session."""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket

from ..core.session import Session, SessionSetup
from ..protocol.errors import ProtocolError
from ..runtime.runner import Engines, RunnerLimits, SessionRunner
from ..transports.websocket import WebSocketTransport, accept, presented_key, refuse, wants_beta
from .state import AppState

log = logging.getLogger("parley.ws")

AUTH_CLOSE = 3000
REQUEST_CLOSE = 4000
RETRY_CLOSE = 1013  # "try again later": clients with reconnect logic retry it


async def realtime_websocket(ws: WebSocket) -> None:
    state: AppState = ws.app.state.parley
    await accept(ws)
    if state.draining:
        await refuse(ws, ProtocolError("The server is shutting down; connect again shortly.", "server_shutting_down",
                                       type="server_error"), RETRY_CLOSE)
        return
    now = state.clock()
    key = presented_key(ws)
    principal = state.keys.authenticate(key, now=now)
    if principal is None:
        if key is None:
            err = ProtocolError("Missing bearer or basic authentication in header", None)
        else:
            err = ProtocolError("Incorrect API key provided. You can find your API key in the server's "
                                "PARLEY_API_KEYS setting, or mint an ephemeral key.", "invalid_api_key")
        await refuse(ws, err, AUTH_CLOSE)
        return
    limit = state.settings.max_sessions_per_key
    if limit and state.sessions_by_key.get(principal.key_id, 0) >= limit:
        await refuse(ws, ProtocolError(f"This key already has {limit} concurrent sessions, the most allowed "
                                       "(PARLEY_MAX_SESSIONS_PER_KEY).", "session_limit_exceeded"), RETRY_CLOSE)
        return
    query = ws.query_params
    if query.get("call_id"):
        await refuse(ws, ProtocolError(f"Call '{query['call_id'][:64]}' not found.", "call_not_found", "call_id"), REQUEST_CLOSE)
        return
    intent = query.get("intent")
    if intent not in (None, "", "realtime", "transcription"):
        await refuse(ws, ProtocolError(f"Invalid value: '{intent[:40]}'. Supported values are: 'realtime', "
                                       "'transcription'.", "invalid_value", "intent"), REQUEST_CLOSE)
        return
    kind = intent or principal.kind
    bound = principal.bound if principal.bound is not None and principal.bound.type == kind else None
    settings = state.settings
    model = query.get("model") or getattr(bound, "model", None) or settings.default_model
    if kind == "realtime" and not state.accepts_model(model):
        await refuse(ws, ProtocolError(f'Model "{model[:80]}" is not supported in realtime mode. Supported models: '
                                       + ", ".join(settings.models[:8]) + ("..." if len(settings.models) > 8 else ""),
                                       "invalid_model", "model"), REQUEST_CLOSE)
        return
    setup = SessionSetup(
        kind=kind, dialect="beta" if wants_beta(ws) else "ga", model=model,
        expires_at=int(now + settings.session_max_minutes * 60), bound=bound,
        accept_model=state.accepts_model, context_tokens=settings.llm_context_tokens,
        voice=settings.voice, instructions=settings.instructions, max_minutes=settings.session_max_minutes,
    )
    assert state.engines is not None
    runner = SessionRunner(
        Session(setup), WebSocketTransport(ws), Engines(state.engines.llm, lambda: state.engines.speech.tts,
                                                     state.engines.speech.vad, state.engines.speech.stt_for),
        key_id=principal.key_id, limiter=state.limiter,
        limits=RunnerLimits(max_event_bytes=settings.max_event_bytes, outbox_bytes=settings.outbox_max_bytes,
                            slow_client_timeout_s=settings.slow_client_timeout_s), clock=state.clock,
    )
    state.live_sessions += 1
    state.runners.add(runner)
    state.sessions_by_key[principal.key_id] = state.sessions_by_key.get(principal.key_id, 0) + 1
    try:
        await runner.run()
    finally:
        state.live_sessions -= 1
        state.runners.discard(runner)
        state.sessions_by_key[principal.key_id] -= 1
        if not state.sessions_by_key[principal.key_id]:
            del state.sessions_by_key[principal.key_id]
