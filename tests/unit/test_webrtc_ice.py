"""ICE settings for deployments: STUN/TURN URLs, the public address behind NAT, a UDP port range."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("aiortc")

from aiortc import RTCConfiguration, RTCPeerConnection  # noqa: E402

from parley.transports.ice_ports import limit_ice_ports  # noqa: E402
from parley.transports.webrtc import ice_server, with_public_address  # noqa: E402


def test_ice_server_urls() -> None:
    stun = ice_server("stun:stun.example.org:3478")
    assert stun.urls == "stun:stun.example.org:3478" and stun.username is None
    turn = ice_server("turn:alice:s%40cret@turn.example.org:3478?transport=tcp")
    assert turn.urls == "turn:turn.example.org:3478?transport=tcp"
    assert (turn.username, turn.credential) == ("alice", "s@cret")
    with pytest.raises(ValueError):
        ice_server("http://example.org")


SDP = """v=0\r
a=candidate:1 1 udp 2130706431 10.0.0.5 50123 typ host\r
a=candidate:2 1 udp 1694498815 198.51.100.7 50123 typ srflx raddr 10.0.0.5 rport 50123\r
"""


def test_public_address_replaces_host_candidates_only() -> None:
    out = with_public_address(SDP, "203.0.113.9")
    assert "203.0.113.9 50123 typ host" in out and "10.0.0.5 50123 typ host" not in out
    assert "198.51.100.7 50123 typ srflx" in out
    assert with_public_address(SDP, None) == SDP


async def test_port_range_binds_host_candidates_in_range(monkeypatch) -> None:
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "asyncio", aioice.ice.asyncio)  # restored after the test
    limit_ice_ports(47000, 47020)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        ports = [int(p) for p in re.findall(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", pc.localDescription.sdp)]
        assert ports and all(47000 <= p <= 47020 for p in ports)
    finally:
        await pc.close()
    with pytest.raises(ValueError):
        limit_ice_ports(5000, 4000)
