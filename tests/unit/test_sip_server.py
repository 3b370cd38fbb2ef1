"""The SIP server's transaction layer over real loopback UDP and TCP sockets, with a stub call handler:
INVITE/CANCEL/ACK/BYE/OPTIONS, retransmissions, and malformed input that gets 400 and harms nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from parley.transports.sip import Dialog, ServerInvite, SipServer
from parley.transports.sip_message import SipMessage, parse


class Handler:
    def __init__(self) -> None:
        self.invites: list[ServerInvite] = []
        self.events: list[str] = []

    def on_invite(self, invite: ServerInvite) -> None:
        self.invites.append(invite)
        invite.respond(180)

    def on_reinvite(self, dialog: Dialog, invite: ServerInvite) -> None:
        invite.respond(200, body=b"v=0\r\n", headers=[("content-type", "application/sdp")])

    def on_ack(self, dialog: Dialog) -> None:
        self.events.append("ack")

    def on_ack_timeout(self, dialog: Dialog) -> None:
        self.events.append("ack-timeout")

    def on_cancel(self, invite: ServerInvite) -> None:
        self.events.append("cancel")

    def on_bye(self, dialog: Dialog) -> None:
        self.events.append("bye")

    def on_notify(self, dialog: Dialog, request: SipMessage) -> None:
        self.events.append("notify")


class UdpPeer:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.server = ("127.0.0.1", port)

    def send(self, text: str) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), self.server)

    async def recv(self, timeout: float = 2.0) -> SipMessage:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout)
        return parse(data)[0]

    async def nothing(self, timeout: float = 0.3) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await self.recv(timeout)


@pytest.fixture
async def sip() -> AsyncIterator[tuple[SipServer, Handler]]:
    handler = Handler()
    server = SipServer(handler)
    await server.start("127.0.0.1", 0)
    yield server, handler
    await server.close()


def request(method: str, port: int, *, branch: str = "z9hG4bK1", cseq: int = 1, to_tag: str = "",
            body: str = "", call_id: str = "c1") -> str:
    to = "<sip:parley@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} sip:parley@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\n"
            f"From: <sip:a@127.0.0.1>;tag=a1\nTo: {to}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\n"
            f"Contact: <sip:a@127.0.0.1:{port}>\nMax-Forwards: 70\n"
            + ("Content-Type: application/sdp\n" if body else "") + f"Content-Length: {len(body)}\n\n{body}")


async def test_invite_rings_answers_is_acked_and_ended_by_bye(sip) -> None:
    server, handler = sip
    peer = UdpPeer(server.port)
    peer.send(request("INVITE", peer.port, body="v=0\n"))
    trying, ringing = await peer.recv(), await peer.recv()
    assert (trying.status, ringing.status) == (100, 180)
    assert trying.get("via").endswith(f";rport={peer.port};received=127.0.0.1")
    tag = ringing.to_tag()
    assert tag and len(handler.invites) == 1
    peer.send(request("INVITE", peer.port, body="v=0\n"))  # a retransmission: the last answer again
    assert (await peer.recv()).status == 180 and len(handler.invites) == 1
    handler.invites[0].respond(200, body=b"v=0\r\n", headers=[("content-type", "application/sdp")])
    ok = await peer.recv()
    assert ok.status == 200 and ok.to_tag() == tag and ok.get("contact")
    assert (await peer.recv(1.5)).status == 200  # repeated until the ACK (timer G)
    peer.send(request("ACK", peer.port, branch="z9hG4bK2", to_tag=tag))
    await asyncio.sleep(0.1)
    assert handler.events == ["ack"]
    await peer.nothing(0.8)
    peer.send(request("BYE", peer.port, branch="z9hG4bK3", cseq=2, to_tag=tag))
    assert (await peer.recv()).status == 200
    peer.send(request("BYE", peer.port, branch="z9hG4bK3", cseq=2, to_tag=tag))  # retransmitted BYE
    assert (await peer.recv()).status == 200
    assert handler.events == ["ack", "bye"]
    peer.send(request("BYE", peer.port, branch="z9hG4bK4", cseq=3, to_tag=tag))  # the dialog is gone
    assert (await peer.recv()).status == 481


async def test_cancel_ends_a_ringing_invite_with_487(sip) -> None:
    server, handler = sip
    peer = UdpPeer(server.port)
    peer.send(request("INVITE", peer.port, body="v=0\n"))
    await peer.recv(), await peer.recv()
    peer.send(request("CANCEL", peer.port))
    answers = {(await peer.recv()).cseq[1] for _ in range(2)}
    assert answers == {"CANCEL", "INVITE"}
    assert handler.events == ["cancel"] and handler.invites[0].final == 487
    peer.send(request("ACK", peer.port))  # ACK of the 487, same branch: stops the repeats
    await peer.nothing(0.8)
    peer.send(request("CANCEL", peer.port, branch="z9hG4bKnone"))
    assert (await peer.recv()).status == 481


async def test_options_unknown_methods_and_extensions(sip) -> None:
    server, _ = sip
    peer = UdpPeer(server.port)
    peer.send(request("OPTIONS", peer.port))
    ok = await peer.recv()
    assert ok.status == 200 and "INVITE" in (ok.get("allow") or "")
    peer.send(request("SUBSCRIBE", peer.port, branch="z9hG4bK9"))
    assert (await peer.recv()).status == 405
    peer.send(request("INVITE", peer.port, branch="z9hG4bK8", body="v=0\n").replace(
        "Max-Forwards", "Require: 100rel\nMax-Forwards"))
    refused = await peer.recv()
    assert refused.status == 420 and refused.get("unsupported") == "100rel"


@pytest.mark.parametrize("bad", [
    "INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKb\nFrom: <sip:a@b>;tag=1\n"
    "To: <sip:b@c>\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 999\n\nv=0",
    "INVITE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKb\nFrom: <sip:a@b>;tag=1\n"
    "To: <sip:b@c>\nCall-ID: x\nCSeq: nonsense\nContent-Length: 0\n\n",
    "BYE sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKb\nFrom: <sip:a@b>;tag=1\n"
    "To: <sip:b@c>\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 0\n\n",  # CSeq method differs
    "OPTIONS sip:x@y SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKb\nFrom: <sip:a@b>\n"
    "To: <sip:b@c>\nCall-ID: x\nCSeq: 1 OPTIONS\nbroken header line\n\n",
])
async def test_malformed_requests_get_400_and_the_server_goes_on(sip, bad: str) -> None:
    server, handler = sip
    peer = UdpPeer(server.port)
    peer.send(bad.format(port=peer.port))
    answer = await peer.recv()
    assert answer.status == 400 and answer.get("call-id") == "x"
    peer.sock.sendto(b"\x00\x01garbage\xff", peer.server)  # not even SIP: ignored
    peer.sock.sendto(b"\r\n\r\n", peer.server)  # keep-alive: ignored
    await peer.nothing()
    peer.send(request("OPTIONS", peer.port, branch="z9hG4bKafter"))
    assert (await peer.recv()).status == 200
    assert not handler.invites


async def test_tcp_framing_several_messages_and_a_malformed_one(sip) -> None:
    server, _ = sip
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    two = request("OPTIONS", 1, branch="z9hG4bKt1") + request("OPTIONS", 1, branch="z9hG4bKt2")
    data = two.replace("\n", "\r\n").encode()
    writer.write(data[:30])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(data[30:])
    await writer.drain()
    got = b""
    while got.count(b"SIP/2.0 200") < 2:
        got += await asyncio.wait_for(reader.read(65536), 2)
    head = b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKq\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\n"
    writer.write(head + b"Call-ID: y\r\nCSeq: x\r\nContent-Length: 0\r\n\r\n")  # bad CSeq: 400, framing intact
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(65536), 2)).startswith(b"SIP/2.0 400")
    writer.write(head + b"Call-ID: y\r\nCSeq: 1 INVITE\r\nContent-Length: many\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(65536), 2)).startswith(b"SIP/2.0 400")
    assert await asyncio.wait_for(reader.read(65536), 2) == b""  # framing lost: the connection is closed
    writer.close()
