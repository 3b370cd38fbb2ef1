"""WebRTC calls: `POST /v1/realtime/calls` (GA), `POST /v1/realtime` (beta), hang-up (of SIP
calls too), and the call registry (WebRTC and SIP) that sideband WebSockets
(`GET /v1/realtime?call_id=`) attach through.

A call is a session like any other (same core, same runner) whose transport is an aiortc
peer: events on the `oai-events` data channel, audio on media tracks.  The call runs as a
task owned by the app; it ends on hang-up, when the peer disconnects or never connects, or
when the session ends (expiry, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..protocol.errors import ProtocolError
from ..protocol.ids import call_id as new_call_id
from ..protocol.strict import parse_strict
from ..runtime.media import Media
from ..runtime.playout import Playout
from ..runtime.runner import SessionRunner
from ..transports.webrtc import IceSettings, WebRTCPeer
from ..cluster.base import SharedStateUnavailable
from .auth import Principal, header_key
from .forwarding import forward_http, owner_elsewhere
from .rest import ClientSecretRequest, api_error
from .sessions import (RETRY_AFTER_S, Lease, capacity_refusal, model_refusal, new_runner, new_session, registered,
                       shared_state_error, take_lease)
from .state import AppState

log = logging.getLogger("parley.calls")

router = APIRouter()


class CallPeer(Protocol):
    """A call's connection: a WebRTC peer, or a SIP leg (server/sip_calls.py)."""

    events: Any  # the runner's transport; sideband sockets join it (`listeners`, `feed`)
    ended: asyncio.Event
    connected: asyncio.Event

    async def close(self) -> None: ...


@dataclass
class Call:
    id: str
    peer: CallPeer
    runner: SessionRunner
    principal: Principal
    lease: Lease
    task: asyncio.Task[None] | None = None
    sideband: set[Any] = field(default_factory=set)  # attached WebSockets, closed when the call ends

    def open_to(self, principal: Principal) -> bool:
        """API keys reach every call; an ephemeral key only the call it opened."""
        return not principal.ephemeral or principal.key_id == self.principal.key_id


def _state(request: Request) -> AppState:
    return request.app.state.parley  # type: ignore[no-any-return]


def ice_settings(state: AppState) -> IceSettings:
    s = state.settings
    return IceSettings(servers=tuple(s.ice_servers), public_ip=s.ice_public_ip)


async def _offer(request: Request) -> tuple[str, Any]:
    """The SDP offer and the optional session config (multipart `session` part)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        sdp_part = form.get("sdp")
        sdp = (await sdp_part.read()).decode() if hasattr(sdp_part, "read") else sdp_part
        session_part = form.get("session")
        if hasattr(session_part, "read"):
            session_part = (await session_part.read()).decode()
        session = None
        if session_part:
            try:
                data = json.loads(session_part)
            except ValueError as exc:
                raise ProtocolError(f"We could not parse the JSON of the 'session' part. ({exc})", "invalid_json",
                                    "session") from None
            session = parse_strict(ClientSecretRequest, {"session": data}).session
    else:
        sdp, session = (await request.body()).decode(errors="replace"), None
    if not isinstance(sdp, str) or "v=0" not in sdp:
        raise ProtocolError("Missing or invalid SDP offer: send it as the request body with Content-Type "
                            "application/sdp, or as the 'sdp' part of a multipart form.", "invalid_offer", "sdp")
    return sdp, session


async def _authenticate(request: Request) -> Principal | None:
    """The caller's principal, or None when its key is refused; `SharedStateUnavailable` when an
    ephemeral key cannot be looked up."""
    state = _state(request)
    return await state.keys.authenticate(header_key(request.headers), now=state.clock())


async def create_call(request: Request, dialect: str) -> Response:
    state = _state(request)
    if state.draining:
        return api_error(503, "The server is shutting down; call again shortly.", code="server_shutting_down",
                         kind="server_error")
    try:
        principal = await _authenticate(request)
    except SharedStateUnavailable:
        return _unavailable(shared_state_error())
    if principal is None:
        return api_error(401, "Incorrect API key provided. Use an ephemeral key (ek_...) or an API key.",
                         code="invalid_api_key")
    if (refusal := capacity_refusal(state)) is not None:
        return _unavailable(refusal)
    try:
        lease = await take_lease(state, principal)
    except ProtocolError as refusal:
        if refusal.code == "shared_state_unavailable":
            return _unavailable(refusal)
        return api_error(429, refusal.message, code=refusal.code)
    try:
        return await _answer(request, state, principal, lease, dialect)
    finally:
        if not lease.owned:  # no call took it over: give the place back
            await lease.release(state)


async def _answer(request: Request, state: AppState, principal: Principal, lease: Lease, dialect: str) -> Response:
    try:
        sdp, session_config = await _offer(request)
        bound = session_config if session_config is not None else (
            principal.bound if principal.bound is not None and principal.bound.type == "realtime" else None)
        if session_config is not None and session_config.type != "realtime":
            raise ProtocolError("WebRTC calls take a realtime session.", "invalid_value", "session.type")
        model = request.query_params.get("model") or getattr(bound, "model", None) or state.settings.default_model
        if (refusal := model_refusal(state, model)) is not None:
            raise refusal
    except ProtocolError as err:
        return api_error(400, err.message, code=err.code, param=err.param)

    runner: SessionRunner | None = None
    playout = Playout(lambda event: runner.inbox.put_control(event) if runner else None)
    peer = WebRTCPeer(ice_settings(state), playout, open_timeout_s=state.settings.call_connect_timeout_s)
    try:
        answer = await peer.answer(sdp)
    except Exception as exc:  # noqa: BLE001 - aiortc raises ValueError and friends for bad offers
        await peer.close()
        log.info("refused an SDP offer", extra={"reason": type(exc).__name__})
        return api_error(400, f"Invalid SDP offer: {exc}"[:300], code="invalid_offer", param="sdp")
    if (refusal := capacity_refusal(state)) is not None:  # other calls were answered meanwhile
        await peer.close()
        return _unavailable(refusal)
    session = new_session(state, kind="realtime", dialect=dialect, model=model, bound=bound, media=True)
    runner = new_runner(state, session, peer.events, principal, transport_name="webrtc",
                        media=Media(peer.microphone, playout))
    call = Call(new_call_id(), peer, runner, principal, lease)
    lease.owned = True
    state.calls[call.id] = call
    await state.shared.register_call(call.id, principal.key_id)
    call.task = asyncio.create_task(_run_call(state, call), name=call.id)
    log.info("call answered", extra={"call_id": call.id, "session_id": session.id, "key_id": principal.key_id})
    return Response(answer, status_code=201, media_type="application/sdp",
                    headers={"Location": f"/v1/realtime/calls/{call.id}"})


def _unavailable(refusal: ProtocolError) -> Response:
    return api_error(503, refusal.message, code=refusal.code, kind=refusal.type,
                     headers={"Retry-After": str(RETRY_AFTER_S)})


async def _run_call(state: AppState, call: Call) -> None:
    watchdog = asyncio.create_task(_drop_if_never_connected(call, state.settings.call_connect_timeout_s))
    try:
        async with registered(state, call.runner, call.lease):
            await call.runner.run()
    except Exception:
        log.exception("call failed", extra={"call_id": call.id})
    finally:
        watchdog.cancel()
        await call.peer.close()
        state.calls.pop(call.id, None)
        await state.shared.unregister_call(call.id)
        for ws in list(call.sideband):
            with contextlib.suppress(Exception):
                await ws.close(1000, "call_ended")
        log.info("call ended", extra={"call_id": call.id})


async def _drop_if_never_connected(call: Call, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(call.peer.connected.wait(), timeout_s)
    except asyncio.TimeoutError:
        log.info("call never connected; dropping it", extra={"call_id": call.id})
        await call.peer.close()


@router.post("/v1/realtime/calls")
async def calls(request: Request) -> Response:
    return await create_call(request, "ga")


@router.post("/v1/realtime")
async def beta_calls(request: Request) -> Response:
    """The beta-era WebRTC flow (`POST /v1/realtime?model=...` with the SDP offer)."""
    return await create_call(request, "beta")


@router.post("/v1/realtime/calls/{call_id}/hangup")
async def hangup(call_id: str, request: Request) -> Response:
    state = _state(request)
    if (owner := await owner_elsewhere(state, request.headers, call_id)) is not None:
        return await forward_http(request, state, owner)
    try:
        principal = await _authenticate(request)
    except SharedStateUnavailable:
        return _unavailable(shared_state_error())
    if principal is None:
        return api_error(401, "Incorrect API key provided.", code="invalid_api_key")
    call = state.calls.get(call_id)
    if call is None and not principal.ephemeral and state.sip is not None and state.sip.decline(call_id):
        return Response(status_code=200)  # a SIP call still ringing (server/sip_calls.py)
    if call is None or not call.open_to(principal):
        return api_error(404, f"Call '{call_id[:64]}' not found.", code="call_not_found", param="call_id")
    await call.peer.close()
    return Response(status_code=200)
