"""A SIP user agent server for incoming calls (RFC 3261), on asyncio UDP and TCP endpoints.

The transaction layer lives here: responses echo the request's Via/From/To/Call-ID/CSeq,
retransmitted requests get the same answer again, final answers to an INVITE are repeated over
UDP until the ACK comes (timers G and H), a CANCEL ends a ringing INVITE with 487, and our own
in-dialog requests (BYE, REFER) are repeated until answered (timer E).  What a call means is
up to a `CallHandler` (`server/sip_calls.py`): it is told about new INVITEs, ACKs, BYEs,
CANCELs and NOTIFYs, and answers the INVITE when the app decides.

In-dialog requests we send go back the way the INVITE came (its source address, or its TCP
connection), which is what works behind NAT; the INVITE's Record-Route becomes our Route set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .rtp import Datagrams
from .sip_message import (
    IncompleteMessage,
    SipMessage,
    SipParseError,
    new_branch,
    new_tag,
    param,
    parse,
    response,
    split_values,
    uri_of,
    with_received,
)

log = logging.getLogger("parley.sip")

T1, T2 = 0.5, 4.0
TIMER_H = 64 * T1  # how long a final INVITE answer waits for its ACK
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY"
RESPONSE_CACHE_S = 32.0  # answers kept for retransmitted requests
MAX_ROUTES = 1024  # remembered local addresses per caller IP (bound to 0.0.0.0)
_LENIENT = ("via", "from", "to", "call-id", "cseq")


@dataclass
class Flow:
    """Where a message came from and how to send back: a UDP address or a TCP connection."""

    transport: str  # "UDP" or "TCP"
    remote: tuple[str, int]
    local: tuple[str, int]  # our address as the caller should see it (Contact, SDP)
    send: Callable[[bytes], None]

    @property
    def reliable(self) -> bool:
        return self.transport == "TCP"

    def contact(self) -> str:
        host = f"[{self.local[0]}]" if ":" in self.local[0] else self.local[0]
        return f"<sip:parley@{host}:{self.local[1]};transport={self.transport.lower()}>"


class CallHandler(Protocol):
    def on_invite(self, invite: ServerInvite) -> None: ...
    def on_reinvite(self, dialog: Dialog, invite: ServerInvite) -> None: ...
    def on_ack(self, dialog: Dialog) -> None: ...
    def on_ack_timeout(self, dialog: Dialog) -> None: ...
    def on_cancel(self, invite: ServerInvite) -> None: ...
    def on_bye(self, dialog: Dialog) -> None: ...
    def on_notify(self, dialog: Dialog, request: SipMessage) -> None: ...


@dataclass
class Dialog:
    """A confirmed (or confirming) call leg: we are the callee."""

    server: SipServer
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # the INVITE's To, with our tag: our From on requests we send
    remote_uri: str  # the INVITE's From
    remote_target: str  # the caller's Contact URI
    route_set: list[str]
    flow: Flow
    local_cseq: int = 0
    acked: bool = False
    ended: bool = False
    context: object = None  # the handler's call

    async def request(self, method: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> SipMessage | None:
        """Send an in-dialog request; return its final response (None on timeout)."""
        self.local_cseq += 1
        branch = new_branch()
        host = f"[{self.flow.local[0]}]" if ":" in self.flow.local[0] else self.flow.local[0]
        msg = SipMessage(method=method, uri=self.remote_target, body=body, headers=[
            ("via", f"SIP/2.0/{self.flow.transport} {host}:{self.flow.local[1]};branch={branch};rport"),
            ("max-forwards", "70"), ("from", self.local_uri), ("to", self.remote_uri),
            ("call-id", self.call_id), ("cseq", f"{self.local_cseq} {method}"),
            *[("route", r) for r in self.route_set], ("contact", self.flow.contact()),
            ("user-agent", "Parley"), *(headers or [])])
        return await self.server.send_request(msg, branch, self.flow)


@dataclass
class ServerInvite:
    """An INVITE server transaction; `respond` answers it (a 2xx creates the dialog)."""

    server: SipServer
    request: SipMessage
    flow: Flow
    to_tag: str = field(default_factory=new_tag)
    final: int | None = None
    dialog: Dialog | None = None
    _last: bytes | None = None
    _acked: asyncio.Event = field(default_factory=asyncio.Event)
    _timer: asyncio.Task[None] | None = None

    @property
    def branch(self) -> str:
        return self.request.branch

    def respond(self, status: int, *, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
                reason: str = "") -> None:
        if self.final is not None:
            return
        extra = list(headers or [])
        if status > 100:
            extra.append(("contact", self.flow.contact()))
        if status >= 200:
            self.final = status
        if 200 <= status < 300:
            self.dialog = self.dialog or self.server.new_dialog(self)
            extra += [("allow", ALLOW), ("supported", "replaces")]
        msg = response(self.request, status, to_tag=self.to_tag, reason=reason, body=body,
                       headers=[("server", "Parley"), *extra])
        self._last = msg.to_bytes()
        self.flow.send(self._last)
        if status >= 200:
            self._timer = asyncio.create_task(self._await_ack(), name=f"sip-invite-{status}")

    def resend(self) -> None:
        if self._last is not None:
            self.flow.send(self._last)

    def acked(self) -> None:
        self._acked.set()

    async def _await_ack(self) -> None:
        """Timers G/H: repeat the final answer over UDP until the ACK; give up after 32 s."""
        interval, deadline = T1, time.monotonic() + TIMER_H
        while not self._acked.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                if self.dialog is not None and 200 <= (self.final or 0) < 300:
                    self.server.handler.on_ack_timeout(self.dialog)
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(interval if not self.flow.reliable else left, left))
            if not self._acked.is_set() and not self.flow.reliable:
                self.resend()
                interval = min(2 * interval, T2)
        self.server.forget_invite(self)


class SipServer:
    """Listens on UDP and TCP; `handler` decides what calls do."""

    def __init__(self, handler: CallHandler, *, public_host: str | None = None,
                 allowed: list[str] | None = None) -> None:
        self.handler = handler
        self.public_host = public_host
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed or []]
        self.host = "127.0.0.1"
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._invites: dict[str, ServerInvite] = {}  # branch -> transaction
        self._dialogs: dict[tuple[str, str], Dialog] = {}  # (call-id, our tag) -> dialog
        self._client: dict[str, asyncio.Future[SipMessage]] = {}  # branch of our request -> its answer
        self._answered: dict[tuple[str, str], tuple[float, bytes]] = {}  # (branch, method) -> answer
        self._routes: dict[str, str] = {}  # caller IP -> our address on the interface that reaches it
        self._connections: set[asyncio.StreamWriter] = set()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: Datagrams(self.datagram), local_addr=(host, port))
        self.host, self.port = host, int(self._udp.get_extra_info("sockname")[1])
        self._tcp = await asyncio.start_server(self._serve_tcp, host, self.port)
        log.info("SIP listening", extra={"host": host, "port": self.port})

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for writer in list(self._connections):
            writer.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)

    def local_host(self, remote_ip: str) -> str:
        """The address the caller should use for us: the public one if set, else the address of
        the interface that reaches it."""
        if self.public_host:
            return self.public_host
        if self.host not in ("0.0.0.0", "::", ""):
            return self.host
        if remote_ip not in self._routes:
            if len(self._routes) >= MAX_ROUTES:  # any source address can add one: keep it bounded
                self._routes.clear()
            self._routes[remote_ip] = self._route_to(remote_ip)
        return self._routes[remote_ip]

    @staticmethod
    def _route_to(remote_ip: str) -> str:
        family = socket.AF_INET6 if ":" in remote_ip else socket.AF_INET
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((remote_ip, 9))
            return str(probe.getsockname()[0])
        return "127.0.0.1"

    # ---- input -------------------------------------------------------------------------------

    def allows(self, ip: str) -> bool:
        """Whether `ip` may send SIP (`sip_allowed_networks`; an IPv4-mapped IPv6 source counts as IPv4)."""
        if not self.allowed:
            return True
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed)

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip(b"\r\n"):
            return  # keep-alive
        flow = Flow("UDP", addr, (self.local_host(addr[0]), self.port),
                    lambda out, a=addr: self._udp.sendto(out, a) if self._udp else None)
        try:
            msg, _ = parse(data)
        except SipParseError as exc:
            self._bad_request(data, flow, str(exc))
            return
        self.dispatch(msg, flow)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        local = (self.public_host or sock[0], self.port)
        flow = Flow("TCP", (peer[0], peer[1]), local, lambda out: None if writer.is_closing() else writer.write(out))
        buffer = b""
        self._connections.add(writer)
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                while buffer := buffer.lstrip(b"\r\n"):
                    try:
                        msg, used = parse(buffer, stream=True)
                    except IncompleteMessage:
                        break
                    except SipParseError as exc:  # framing is lost: answer and hang up the connection
                        self._bad_request(buffer, flow, str(exc))
                        return
                    buffer = buffer[used:]
                    self.dispatch(msg, flow)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    def dispatch(self, msg: SipMessage, flow: Flow) -> None:
        if not self.allows(flow.remote[0]):
            if msg.is_request and msg.method != "ACK" and msg.all("via"):
                self._answer(msg, flow, 403)
            return
        try:
            if msg.is_request:
                self._request(msg, flow)
            else:
                self._response(msg)
        except SipParseError as exc:
            if msg.is_request and msg.method != "ACK" and msg.all("via"):
                self._answer(msg, flow, 400, reason=f"Bad Request ({exc})"[:120])
        except Exception:  # a bug must not take the listener down
            log.exception("SIP handling failed")
            if msg.is_request and msg.method != "ACK" and msg.all("via"):
                self._answer(msg, flow, 500)

    def _bad_request(self, data: bytes, flow: Flow, why: str) -> None:
        """Answer 400 to what looks like a request, if its headers say where the answer goes."""
        if not self.allows(flow.remote[0]):
            return
        log.info("malformed SIP message", extra={"reason": why[:120], "peer": flow.remote[0]})
        lines = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
        if not lines or lines[0].startswith("SIP/2.0") or " SIP/2.0" not in lines[0] or lines[0].startswith("ACK "):
            return
        msg = SipMessage(method="?", uri="?")
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            key = {"v": "via", "f": "from", "t": "to", "i": "call-id"}.get(name.strip().lower(), name.strip().lower())
            if sep and key in _LENIENT:
                msg.headers.append((key, value.strip()))
        if not all(msg.get(k) for k in _LENIENT):
            return
        flow.send(response(msg, 400, reason=f"Bad Request ({why})"[:120]).to_bytes())

    def _answer(self, request: SipMessage, flow: Flow, status: int, *, reason: str = "",
                headers: list[tuple[str, str]] | None = None, to_tag: str | None = None) -> None:
        out = response(request, status, reason=reason, to_tag=to_tag or new_tag(),
                       headers=[("server", "Parley"), *(headers or [])]).to_bytes()
        flow.send(out)
        if request.method not in ("INVITE", "ACK"):
            now = time.monotonic()
            while self._answered:  # oldest first (insertion order), so only the expired are looked at
                key, (expires, _) = next(iter(self._answered.items()))
                if expires > now:
                    break
                del self._answered[key]
            self._answered[(request.branch, request.method or "")] = (now + RESPONSE_CACHE_S, out)

    def _request(self, msg: SipMessage, flow: Flow) -> None:
        vias = msg.all("via")
        if not vias:
            raise SipParseError("missing Via header")
        _, method = msg.cseq
        if method != msg.method and not (msg.method == "ACK" and method == "ACK"):
            raise SipParseError("CSeq method does not match the request")
        msg.call_id, msg.from_tag(), msg.to_tag()  # noqa: B018 - required headers: raise if missing
        top = with_received(vias[0], *flow.remote)
        msg.headers[next(i for i, (k, _) in enumerate(msg.headers) if k == "via")] = ("via", top)
        cached = self._answered.get((msg.branch, msg.method or ""))
        if cached is not None:
            flow.send(cached[1])  # a retransmission: same answer
            return
        method = msg.method or ""
        if method == "ACK":
            self._ack(msg)
            return
        if method == "CANCEL":
            self._cancel(msg, flow)
            return
        if method not in ALLOW.replace(" ", "").split(","):
            self._answer(msg, flow, 405, headers=[("allow", ALLOW)])
            return
        required = [v for v in split_values(msg.get("require") or "") if v]
        if required:
            self._answer(msg, flow, 420, headers=[("unsupported", ", ".join(required))])
            return
        if method == "OPTIONS":
            self._answer(msg, flow, 200, headers=[("allow", ALLOW), ("accept", "application/sdp"),
                                                  ("supported", "replaces")])
        elif method == "INVITE":
            self._invite(msg, flow)
        else:
            dialog = self._dialogs.get((msg.call_id, msg.to_tag() or ""))
            if dialog is None:
                self._answer(msg, flow, 481)
                return
            self._answer(msg, flow, 200, to_tag=dialog.local_tag)
            if method == "BYE":
                self._end(dialog)
                self.handler.on_bye(dialog)
            elif method == "NOTIFY":
                self.handler.on_notify(dialog, msg)

    def _invite(self, msg: SipMessage, flow: Flow) -> None:
        existing = self._invites.get(msg.branch)
        if existing is not None:
            existing.resend()
            return
        if (msg.get("content-type") or "application/sdp").split(";")[0].strip().lower() != "application/sdp":
            self._answer(msg, flow, 415, headers=[("accept", "application/sdp")])
            return
        tag = msg.to_tag()
        invite = ServerInvite(self, msg, flow)
        if msg.branch:
            self._invites[msg.branch] = invite
        if tag:
            dialog = self._dialogs.get((msg.call_id, tag))
            if dialog is None:
                self._invites.pop(msg.branch, None)
                self._answer(msg, flow, 481)
                return
            invite.to_tag, invite.dialog = dialog.local_tag, dialog
            self.handler.on_reinvite(dialog, invite)
            return
        invite.respond(100)
        try:
            self.handler.on_invite(invite)
        except Exception:  # answered, so the transaction ends (and is forgotten) as any other
            log.exception("handling an INVITE failed")
            invite.respond(500)

    def _ack(self, msg: SipMessage) -> None:
        invite = self._invites.get(msg.branch)
        if invite is not None and invite.final is not None and invite.final >= 300:
            invite.acked()  # the ACK of a refusal belongs to its INVITE transaction
            return
        dialog = self._dialogs.get((msg.call_id, msg.to_tag() or ""))
        if dialog is None:
            return
        for tx in list(self._invites.values()):
            if tx.dialog is dialog:
                tx.acked()
        if not dialog.acked:
            dialog.acked = True
            self.handler.on_ack(dialog)

    def _cancel(self, msg: SipMessage, flow: Flow) -> None:
        invite = self._invites.get(msg.branch)
        if invite is None or invite.request.call_id != msg.call_id:
            self._answer(msg, flow, 481)
            return
        self._answer(msg, flow, 200, to_tag=invite.to_tag)
        if invite.final is None:
            invite.respond(487)
            self.handler.on_cancel(invite)

    def _response(self, msg: SipMessage) -> None:
        waiter = self._client.get(msg.branch)
        if waiter is not None and not waiter.done() and (msg.status or 0) >= 200:
            waiter.set_result(msg)

    # ---- dialogs and our own requests --------------------------------------------------------

    def new_dialog(self, invite: ServerInvite) -> Dialog:
        req = invite.request
        to = req.get("to") or ""
        local_uri = to if param(to, "tag") is not None else f"{to};tag={invite.to_tag}"
        routes = [r for v in req.all("record-route") for r in split_values(v)]
        dialog = Dialog(self, req.call_id, invite.to_tag, req.from_tag() or "", local_uri, req.get("from") or "",
                        uri_of(req.get("contact") or req.get("from") or ""), routes, invite.flow)
        self._dialogs[(dialog.call_id, dialog.local_tag)] = dialog
        return dialog

    def _end(self, dialog: Dialog) -> None:
        dialog.ended = True
        self._dialogs.pop((dialog.call_id, dialog.local_tag), None)

    async def hang_up(self, dialog: Dialog) -> None:
        """Send BYE (once) and forget the dialog."""
        if dialog.ended:
            return
        self._end(dialog)
        reply = await dialog.request("BYE")
        log.info("BYE sent", extra={"status": reply.status if reply else None})

    async def send_request(self, msg: SipMessage, branch: str, flow: Flow) -> SipMessage | None:
        answer: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self._client[branch] = answer
        data, interval, deadline = msg.to_bytes(), T1, time.monotonic() + TIMER_H
        try:
            flow.send(data)
            while (left := deadline - time.monotonic()) > 0:
                wait = left if flow.reliable else min(interval, left)
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(answer), wait)
                if not flow.reliable:
                    flow.send(data)
                    interval = min(2 * interval, T2)
            return None
        finally:
            self._client.pop(branch, None)

    def forget_invite(self, invite: ServerInvite) -> None:
        if self._invites.get(invite.branch) is invite:
            del self._invites[invite.branch]
