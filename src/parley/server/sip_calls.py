"""Phone calls over SIP, controlled as the hosted API controls its SIP calls.

An INVITE rings (100, 180) while the app is told by the `realtime.call.incoming` webhook; the
app answers with `POST /v1/realtime/calls/{call_id}/accept` (a session config), `/reject` or,
later, `/refer` and `/hangup`.  Without a webhook URL every call is accepted with the server's
default session (a Parley extension).  An accepted call is a `Call` like a WebRTC one: the same
runner, `state.calls` registry and sideband WebSocket (`?call_id=`), with audio on RTP
(`transports/rtp.py`) and no event channel of its own: a phone sends only audio and keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..core.io import DtmfReceived
from ..protocol.errors import ProtocolError
from ..protocol.ids import call_id as new_call_id
from ..protocol.strict import parse_strict
from ..runtime.media import Media
from ..runtime.playout import Playout
from ..runtime.runner import SessionRunner
from ..transports.rtp import RtpEndpoint
from ..transports.sdp import Offer, SdpError, answer, negotiate, parse_offer
from ..transports.sip import Dialog, ServerInvite, SipServer
from ..transports.sip_message import SipMessage
from ..transports.webrtc import DataChannelTransport
from .auth import Principal, header_key
from .calls import Call, _run_call
from .rest import ClientSecretRequest, api_error
from ..cluster.base import SharedStateUnavailable
from .forwarding import forward_http, owner_elsewhere
from .sessions import RETRY_AFTER_S, Lease, capacity_refusal, model_refusal, new_runner, new_session, shared_state_error, take_lease
from .state import AppState
from .webhooks import deliver

log = logging.getLogger("parley.sip_calls")

router = APIRouter()

AUTO_ACCEPT = Principal("sip_auto_accept")  # whose session an auto-accepted call counts as
NO_ANSWER = 480  # Temporarily Unavailable: the app did not answer in time, or its webhook failed
HANGUP_RINGING = 603  # Decline: /hangup on a call that is still ringing
RETRY_LATER = [("retry-after", str(RETRY_AFTER_S))]  # on a SIP 503 for a server at capacity


class SidebandEvents(DataChannelTransport):
    """A SIP call's event transport: no data channel on a phone line, so server events go to
    sideband sockets only, and client events come from them alone."""

    async def send(self, text: str) -> None:
        for listener in list(self.listeners):
            listener(text)


class SipPeer:
    """An accepted call's media and signalling, as `Call.peer`: `close()` hangs up (BYE)."""

    def __init__(self, call_id: str, sip: SipServer, rtp: RtpEndpoint) -> None:
        self.call_id = call_id
        self.sip = sip
        self.rtp = rtp
        self.events = SidebandEvents(self.close)
        self.ended = asyncio.Event()
        self.connected = asyncio.Event()  # the caller's ACK arrived
        self.dialog: Dialog | None = None
        self.referring = False
        self.bye: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        await self.rtp.close()
        self.events.feed(None)
        if self.dialog is not None and not self.dialog.ended:
            self.bye = asyncio.create_task(self.sip.hang_up(self.dialog), name="sip-bye")


@dataclass
class Ringing:
    call_id: str
    invite: ServerInvite
    offer: Offer
    timer: asyncio.TimerHandle


class CallError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    @classmethod
    def refused(cls, refusal: ProtocolError) -> CallError:
        """An admission refusal: 400 for the model, 503 at capacity, 429 for the key's limit."""
        status = {"invalid_model": 400, "server_overloaded": 503, "shared_state_unavailable": 503}.get(refusal.code or "", 429)
        return cls(status, refusal.message, refusal.code or "", refusal.param, refusal.type)


class SipCalls:
    """The SIP entry point: rings, notifies the app, and turns accepted INVITEs into calls."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        s = state.settings
        self.server = SipServer(self, public_host=s.sip_public_ip, allowed=s.sip_allowed_networks)
        self.ringing: dict[str, Ringing] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        s = self.state.settings
        await self.server.start(s.sip_host or s.host, s.sip_port or 0)

    async def close(self) -> None:
        for call_id in list(self.ringing):
            self.refuse(call_id, 503)
        byes = [c.peer.bye for c in self.state.calls.values() if isinstance(c.peer, SipPeer) and c.peer.bye]
        if byes:
            await asyncio.wait(byes, timeout=1.0)
        await self.server.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- SIP events ---------------------------------------------------------------------------

    def on_invite(self, invite: ServerInvite) -> None:
        if self.state.draining:
            invite.respond(503)
            return
        if capacity_refusal(self.state) is not None:
            invite.respond(503, headers=RETRY_LATER)
            return
        try:
            offer = parse_offer(invite.request.body.decode("utf-8", "replace"))
            negotiate(offer)
        except SdpError as exc:
            invite.respond(488, headers=[("warning", f'304 parley "{exc}"'[:200])])
            return
        call_id = new_call_id()
        timer = asyncio.get_running_loop().call_later(self.state.settings.sip_answer_timeout_s, self.refuse,
                                                      call_id, NO_ANSWER)
        self.ringing[call_id] = Ringing(call_id, invite, offer, timer)
        self._spawn(self.state.shared.register_call(call_id, "sip"))  # /accept may reach another node
        invite.respond(180)
        log.info("call ringing", extra={"call_id": call_id, "peer": invite.flow.remote[0]})
        if self.state.settings.sip_webhook_url:
            self._spawn(self._notify(call_id, invite.request))
        else:
            self._spawn(self._auto_accept(call_id))

    def on_cancel(self, invite: ServerInvite) -> None:
        for call_id, ringing in list(self.ringing.items()):
            if ringing.invite is invite:
                ringing.timer.cancel()
                del self.ringing[call_id]
                self._spawn(self.state.shared.unregister_call(call_id))
                log.info("call cancelled by the caller", extra={"call_id": call_id})

    def on_ack(self, dialog: Dialog) -> None:
        peer = dialog.context
        if isinstance(peer, SipPeer):
            peer.connected.set()
            peer.rtp.start()
            if self.state.settings.sip_rtp_timeout_s > 0:
                self._spawn(self._hang_up_when_silent(peer, self.state.settings.sip_rtp_timeout_s))

    async def _hang_up_when_silent(self, peer: SipPeer, timeout_s: float) -> None:
        """A caller that vanished without BYE (crashed, lost its network) sends no more RTP: hang up."""
        while (left := timeout_s - peer.rtp.silent_for()) > 0:
            try:
                await asyncio.wait_for(peer.ended.wait(), left)
                return
            except asyncio.TimeoutError:
                pass
        log.info("no RTP from the caller; hanging up", extra={"call_id": peer.call_id,
                                                                "silent_s": round(peer.rtp.silent_for(), 1)})
        await peer.close()

    def on_ack_timeout(self, dialog: Dialog) -> None:
        if isinstance(dialog.context, SipPeer):
            self._spawn(dialog.context.close())

    def on_bye(self, dialog: Dialog) -> None:
        if isinstance(dialog.context, SipPeer):
            self._spawn(dialog.context.close())

    def on_reinvite(self, dialog: Dialog, invite: ServerInvite) -> None:
        """A new offer in the call (hold, a moved address): answer it on the same RTP port."""
        peer = dialog.context
        if not isinstance(peer, SipPeer) or peer.ended.is_set():
            invite.respond(481)
            return
        try:
            offer = parse_offer(invite.request.body.decode("utf-8", "replace"))
            chosen = negotiate(offer)
        except SdpError as exc:
            invite.respond(488, headers=[("warning", f'304 parley "{exc}"'[:200])])
            return
        peer.rtp.configure(chosen.codec, chosen.telephone_event, chosen.remote, caller_sends=_caller_sends(offer))
        body = answer(offer, chosen, address=invite.flow.local[0], port=peer.rtp.port, version=2)
        invite.respond(200, body=body.encode(), headers=[("content-type", "application/sdp")])

    def on_notify(self, dialog: Dialog, request: SipMessage) -> None:
        """Progress of a REFER (a `message/sipfrag` status line): once the transfer is answered, we leave."""
        peer = dialog.context
        if not isinstance(peer, SipPeer) or not peer.referring:
            return
        first = request.body.decode("utf-8", "replace").strip().split("\n", 1)[0].split()
        if len(first) >= 2 and first[0] == "SIP/2.0" and first[1].isascii() and first[1].isdigit() and int(first[1]) >= 200:
            peer.referring = False
            if int(first[1]) < 300:
                log.info("call transferred", extra={"status": int(first[1])})
                self._spawn(peer.close())

    # ---- what the app decides ----------------------------------------------------------------

    def refuse(self, call_id: str, status: int, headers: list[tuple[str, str]] | None = None) -> bool:
        ringing = self.ringing.pop(call_id, None)
        if ringing is None:
            return False
        ringing.timer.cancel()
        ringing.invite.respond(status, headers=headers)
        self._spawn(self.state.shared.unregister_call(call_id))
        log.info("call refused", extra={"call_id": call_id, "status": status})
        return True

    def decline(self, call_id: str) -> bool:
        """`/hangup` on a call that is still ringing: 603 Decline."""
        return self.refuse(call_id, HANGUP_RINGING)

    def reject(self, call_id: str, status: int) -> None:
        if not self.refuse(call_id, status):
            raise _not_ringing(self.state, call_id)

    async def _notify(self, call_id: str, request: SipMessage) -> None:
        now = int(self.state.clock())
        headers = [{"name": name, "value": request.get(name) or ""} for name in ("From", "To", "Call-ID")]
        event = {"object": "event", "id": "evt_" + secrets.token_hex(12), "type": "realtime.call.incoming",
                 "created_at": now, "data": {"call_id": call_id, "sip_headers": headers}}
        secret = self.state.settings.sip_webhook_secret
        url = self.state.settings.sip_webhook_url or ""
        if not await deliver(url, secret.get_secret_value() if secret else None, event, now):
            self.refuse(call_id, NO_ANSWER)

    async def _auto_accept(self, call_id: str) -> None:
        try:
            await self.accept(call_id, None, AUTO_ACCEPT)
        except CallError as err:
            log.warning("could not accept a call", extra={"call_id": call_id, "reason": err.message})
            self.refuse(call_id, 503, RETRY_LATER if err.code == "server_overloaded" else None)

    async def accept(self, call_id: str, config: Any, principal: Principal) -> None:
        """Answer a ringing call (200 OK with our SDP) and start its session."""
        state = self.state
        if call_id not in self.ringing:
            raise _not_ringing(state, call_id)
        model = getattr(config, "model", None) or state.settings.default_model
        if (refusal := model_refusal(state, model) or capacity_refusal(state)) is not None:
            raise CallError.refused(refusal)
        try:
            lease = await take_lease(state, principal)
        except ProtocolError as refusal:
            raise CallError.refused(refusal) from None
        try:
            await self._answer(call_id, config, principal, model, lease)
        finally:
            if not lease.owned:
                await lease.release(state)

    async def _answer(self, call_id: str, config: Any, principal: Principal, model: str, lease: Lease) -> None:
        state = self.state
        ringing = self.ringing.get(call_id)
        if ringing is None:  # cancelled or refused while the lease was taken
            raise _not_ringing(state, call_id)
        runner: SessionRunner | None = None
        playout = Playout(lambda event: runner.inbox.put_control(event) if runner else None)
        rtp = RtpEndpoint(playout, lambda key: runner.inbox.put_control(DtmfReceived(key, int(state.clock())))
                          if runner else None)
        invite = ringing.invite
        try:
            await rtp.open(self.server.host, _port_range(state))
        except OSError as exc:
            self.refuse(call_id, 503)
            raise CallError(503, f"No RTP port for the call: {exc}", "server_error", kind="server_error") from None
        if self.ringing.get(call_id) is not ringing:  # cancelled, refused or accepted meanwhile
            await rtp.close()
            raise _not_ringing(state, call_id)
        if (refusal := capacity_refusal(state)) is not None:  # other calls were answered meanwhile
            await rtp.close()
            raise CallError.refused(refusal)  # and this one rings on, as when the server was full before
        del self.ringing[call_id]
        ringing.timer.cancel()
        chosen = negotiate(ringing.offer)
        rtp.configure(chosen.codec, chosen.telephone_event, chosen.remote, caller_sends=_caller_sends(ringing.offer))
        peer = SipPeer(call_id, self.server, rtp)
        session = new_session(state, kind="realtime", dialect="ga", model=model, bound=config, media=True)
        runner = new_runner(state, session, peer.events, principal, transport_name="sip",
                            media=Media(rtp.microphone, playout))
        body = answer(ringing.offer, chosen, address=invite.flow.local[0], port=rtp.port)
        invite.respond(200, body=body.encode(), headers=[("content-type", "application/sdp")])
        assert invite.dialog is not None
        peer.dialog, invite.dialog.context = invite.dialog, peer
        call = Call(call_id, peer, runner, principal, lease)
        lease.owned = True
        state.calls[call_id] = call
        call.task = asyncio.create_task(_run_call(state, call), name=call_id)
        log.info("call accepted", extra={"call_id": call_id, "session_id": session.id, "key_id": principal.key_id})

    async def refer(self, call_id: str, target: str) -> None:
        call = self.state.calls.get(call_id)
        peer = call.peer if call is not None else None
        if not isinstance(peer, SipPeer) or peer.dialog is None or peer.ended.is_set():
            raise CallError(404, f"SIP call '{call_id[:64]}' not found or not answered.", "call_not_found", "call_id")
        peer.referring = True
        local = peer.dialog.flow.contact()
        reply = await peer.dialog.request("REFER", [("refer-to", f"<{target}>"), ("referred-by", local)])
        if reply is None or not 200 <= (reply.status or 0) < 300:
            peer.referring = False
            got = f"answered {reply.status} {reply.reason}" if reply else "did not answer"
            raise CallError(502, f"The caller's SIP endpoint {got} to the REFER.", "refer_failed", "target_uri")


def _not_ringing(state: AppState, call_id: str) -> CallError:
    if call_id in state.calls:
        return CallError(409, f"Call '{call_id[:64]}' has already been answered.", "call_already_accepted", "call_id")
    return CallError(404, f"Call '{call_id[:64]}' not found.", "call_not_found", "call_id")


def _caller_sends(offer: Offer) -> bool:
    """Whether the offer says the caller will send audio (not on hold: recvonly, inactive, port 0)."""
    return offer.port != 0 and offer.direction in ("sendrecv", "sendonly")


def _port_range(state: AppState) -> tuple[int, int] | None:
    s = state.settings
    if s.sip_rtp_port_min is None and s.sip_rtp_port_max is None:
        return None
    return s.sip_rtp_port_min or 1024, s.sip_rtp_port_max or 65535


# ---- REST ------------------------------------------------------------------------------------


def _state(request: Request) -> AppState:
    return request.app.state.parley  # type: ignore[no-any-return]


async def _control(request: Request, call_id: str) -> tuple[SipCalls, Principal, dict[str, Any]]:
    """The SIP entry point, the API key's principal and the JSON body of a control request."""
    state = _state(request)
    try:
        principal = await state.keys.authenticate(header_key(request.headers), now=state.clock(), allow_ephemeral=False)
    except SharedStateUnavailable:
        raise CallError.refused(shared_state_error()) from None
    if principal is None:
        raise CallError(401, "Incorrect API key provided. Controlling SIP calls takes an API key.", "invalid_api_key")
    sip: SipCalls | None = state.sip
    if sip is None:
        raise CallError(404, f"Call '{call_id[:64]}' not found (SIP is off: set PARLEY_SIP_PORT).", "call_not_found",
                        "call_id")
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise CallError(400, f"We could not parse the JSON body of your request. ({exc})", "invalid_json") from None
    if not isinstance(body, dict):
        raise CallError(400, "The request body must be a JSON object.", "invalid_type")
    return sip, principal, body


async def _handle(request: Request, call_id: str, action: Any) -> Response:
    state = _state(request)
    if (owner := await owner_elsewhere(state, request.headers, call_id)) is not None:
        return await forward_http(request, state, owner)  # the call rings or runs on another node
    try:
        sip, principal, body = await _control(request, call_id)
        await action(sip, principal, body)
    except CallError as err:
        return api_error(err.status, err.message, code=err.code, param=err.param, kind=err.kind,
                         headers={"Retry-After": str(RETRY_AFTER_S)}
                         if err.code in ("server_overloaded", "shared_state_unavailable") else None)
    except ProtocolError as err:
        return api_error(400, err.message, code=err.code, param=err.param)
    return Response(status_code=200)


@router.post("/v1/realtime/calls/{call_id}/accept")
async def accept_call(call_id: str, request: Request) -> Response:
    async def act(sip: SipCalls, principal: Principal, body: dict[str, Any]) -> None:
        config = parse_strict(ClientSecretRequest, {"session": body}).session if body else None
        if config is None or config.type != "realtime":
            raise ProtocolError("Accepting a call takes a realtime session config: {\"type\": \"realtime\", ...}.",
                                "invalid_value", "type")
        await sip.accept(call_id, config, principal)
    return await _handle(request, call_id, act)


@router.post("/v1/realtime/calls/{call_id}/reject")
async def reject_call(call_id: str, request: Request) -> Response:
    async def act(sip: SipCalls, _principal: Principal, body: dict[str, Any]) -> None:
        status = body.get("status_code", 603)
        if set(body) - {"status_code"}:
            raise CallError(400, f"Unknown parameter: '{sorted(set(body) - {'status_code'})[0]}'.",
                            "unknown_parameter")
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 699:
            raise CallError(400, "status_code must be a SIP error status (400-699).", "invalid_value", "status_code")
        sip.reject(call_id, status)
    return await _handle(request, call_id, act)


@router.post("/v1/realtime/calls/{call_id}/refer")
async def refer_call(call_id: str, request: Request) -> Response:
    async def act(sip: SipCalls, _principal: Principal, body: dict[str, Any]) -> None:
        target = body.get("target_uri")
        if not isinstance(target, str) or not target.lower().startswith(("sip:", "sips:", "tel:")) \
                or any(c in target for c in "<>\r\n"):
            raise CallError(400, "target_uri must be a sip:, sips: or tel: URI.", "invalid_value", "target_uri")
        await sip.refer(call_id, target)
    return await _handle(request, call_id, act)
