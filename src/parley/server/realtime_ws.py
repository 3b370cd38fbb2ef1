"""`GET /v1/realtime`: authenticate, pick the session kind, model and dialect, run the session."""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket

from ..cluster.base import SharedStateUnavailable
from ..protocol.errors import ProtocolError
from ..transports.websocket import WebSocketTransport, accept, refuse, subprotocol_key, wants_beta
from .auth import header_key
from .sideband import attach_sideband
from .sessions import capacity_refusal, model_refusal, new_runner, new_session, registered, shared_state_error, take_lease
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
    key = header_key(ws.headers) or subprotocol_key(ws)
    try:
        principal = await state.keys.authenticate(key, now=now)
    except SharedStateUnavailable:
        await refuse(ws, shared_state_error(), RETRY_CLOSE)
        return
    if principal is None:
        if key is None:
            err = ProtocolError("Missing bearer or basic authentication in header", None)
        else:
            err = ProtocolError("Incorrect API key provided. You can find your API key in the server's "
                                "PARLEY_API_KEYS setting, or mint an ephemeral key.", "invalid_api_key")
        await refuse(ws, err, AUTH_CLOSE)
        return
    query = ws.query_params
    if query.get("call_id"):
        await attach_sideband(ws, state, principal, query["call_id"], key)
        return
    if (refusal := capacity_refusal(state)) is not None:
        await refuse(ws, refusal, RETRY_CLOSE)
        return
    intent = query.get("intent")
    if intent not in (None, "", "realtime", "transcription"):
        await refuse(ws, ProtocolError(f"Invalid value: '{intent[:40]}'. Supported values are: 'realtime', "
                                       "'transcription'.", "invalid_value", "intent"), REQUEST_CLOSE)
        return
    kind = intent or principal.kind
    bound = principal.bound if principal.bound is not None and principal.bound.type == kind else None
    model = query.get("model") or getattr(bound, "model", None) or state.settings.default_model
    if kind == "realtime" and (refusal := model_refusal(state, model)) is not None:
        await refuse(ws, refusal, REQUEST_CLOSE)
        return
    try:
        lease = await take_lease(state, principal)
    except ProtocolError as refusal:
        await refuse(ws, refusal, RETRY_CLOSE)
        return
    session = new_session(state, kind=kind, dialect="beta" if wants_beta(ws) else "ga", model=model, bound=bound)
    runner = new_runner(state, session, WebSocketTransport(ws), principal)
    async with registered(state, runner, lease):
        await runner.run()
