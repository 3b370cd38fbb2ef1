"""SIP message parsing and building, SDP offer/answer, RTP packets: well-formed, odd and malformed input."""

from __future__ import annotations

import pytest

import numpy as np

from parley.transports.rtp import Resample6, RtpPacket, dtmf_digit, dtmf_payload, parse_rtp
from parley.transports.sdp import PCMA, PCMU, SdpError, answer, negotiate, parse_offer
from parley.transports.sip_message import (
    IncompleteMessage,
    SipParseError,
    host_port,
    param,
    parse,
    response,
    split_values,
    uri_of,
    with_received,
)

OFFER = (
    "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
)


def invite(body: str = OFFER, extra: str = "") -> bytes:
    head = (
        "INVITE sip:parley@198.51.100.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\r\n"
        "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKthird\r\n"
        'f: "Alice, A." <sip:+15550001@192.0.2.10>;tag=alice1\r\n'
        "t: <sip:parley@198.51.100.1>\r\n"
        "i: call-1@192.0.2.10\r\n"
        "CSeq: 7 INVITE\r\n"
        "m: <sip:alice@192.0.2.10:5060>\r\n"
        "Subject: a folded\r\n  header line\r\n"
        f"{extra}"
        "c: application/sdp\r\n"
        f"l: {len(body.encode())}\r\n\r\n"
    )
    return head.encode() + body.encode()


def test_parses_a_request_with_compact_folded_and_multi_value_headers() -> None:
    msg, used = parse(invite())
    assert used == len(invite())
    assert msg.method == "INVITE" and msg.uri == "sip:parley@198.51.100.1"
    assert len(msg.all("via")) == 3 and msg.branch == "z9hG4bKabc"
    assert msg.call_id == "call-1@192.0.2.10" and msg.cseq == (7, "INVITE")
    assert msg.from_tag() == "alice1" and msg.to_tag() is None
    assert msg.get("subject") == "a folded header line"
    assert msg.body.decode() == OFFER
    assert uri_of(msg.get("contact") or "") == "sip:alice@192.0.2.10:5060"


def test_a_response_echoes_the_transaction_headers_and_adds_our_tag() -> None:
    msg, _ = parse(invite())
    out = response(msg, 180, to_tag="ours").to_bytes().decode()
    lines = out.split("\r\n")
    assert lines[0] == "SIP/2.0 180 Ringing"
    assert [line for line in lines if line.startswith("Via:")] == [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport",
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy",
        "Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKthird"]
    assert "To: <sip:parley@198.51.100.1>;tag=ours" in lines
    assert "Call-ID: call-1@192.0.2.10" in lines and "CSeq: 7 INVITE" in lines
    assert out.endswith("Content-Length: 0\r\n\r\n")
    trying = response(msg, 100, to_tag="ours").to_bytes().decode()
    assert ";tag=ours" not in trying  # 100 Trying carries no tag
    again, _ = parse(out.encode())
    assert again.status == 180 and again.to_tag() == "ours"


def test_received_and_rport_are_recorded_in_the_top_via() -> None:
    via = "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport"
    assert with_received(via, "203.0.113.9", 40000) == \
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport=40000;received=203.0.113.9"
    assert "rport" not in with_received("SIP/2.0/UDP h;branch=z9hG4bK1", "1.2.3.4", 5)


def test_helpers() -> None:
    assert split_values('"a, b" <sip:x@y>, <sip:z,w@v>;lr, c') == ['"a, b" <sip:x@y>', "<sip:z,w@v>;lr", "c"]
    assert param("<sip:a@b;tag=no>;tag=yes", "tag") == "yes"
    assert param("<sip:a@b>;lr", "lr") == ""
    assert host_port("sip:alice@[2001:db8::1]:5070;transport=tcp") == ("2001:db8::1", 5070)
    assert host_port("sips:example.com") == ("example.com", 5060)
    with pytest.raises(SipParseError):
        host_port("tel:+1555")


def test_stream_framing_waits_for_the_body_and_splits_messages() -> None:
    data = invite() + invite()
    with pytest.raises(IncompleteMessage):
        parse(data[:40], stream=True)
    with pytest.raises(IncompleteMessage):
        parse(invite()[:-5], stream=True)
    first, used = parse(data, stream=True)
    second, used2 = parse(data[used:], stream=True)
    assert used + used2 == len(data) and second.call_id == first.call_id


@pytest.mark.parametrize("data", [
    b"",
    b"\x00\xff\xfe garbage",
    b"INVITE sip:x SIP/3.0\r\n\r\n",
    b"INVITE nouri SIP/2.0\r\n\r\n",
    b"SIP/2.0 abc Bad\r\n\r\n",
    b"INVITE sip:x@y SIP/2.0\r\nno colon here\r\n\r\n",
    b"INVITE sip:x@y SIP/2.0\r\nVia: v\r\nContent-Length: ten\r\n\r\n",
    b"INVITE sip:x@y SIP/2.0\r\nContent-Length: 50\r\n\r\nshort",
    b"INVITE sip:x@y SIP/2.0\r\nBad Name: x\r\n\r\n",
    "INVITE sip:x@y SIP/2.0\r\nSubject: \udcff\r\n\r\n".encode("utf-8", "surrogateescape"),
])
def test_malformed_messages_raise_parse_errors(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse(data)


def test_missing_required_headers_raise_parse_errors_when_read() -> None:
    msg, _ = parse(b"OPTIONS sip:x@y SIP/2.0\r\nCSeq: one OPTIONS\r\n\r\n")
    with pytest.raises(SipParseError):
        msg.cseq
    with pytest.raises(SipParseError):
        msg.call_id


# ---- SDP ---------------------------------------------------------------------------------------


def test_offer_answer_picks_the_callers_first_g711_and_keeps_telephone_event() -> None:
    offer = parse_offer(OFFER)
    assert offer.address == "192.0.2.10" and offer.port == 49170 and offer.telephone_event == 101
    chosen = negotiate(offer)
    assert chosen.codec == PCMA and chosen.remote == ("192.0.2.10", 49170)
    sdp = answer(offer, chosen, address="198.51.100.1", port=30000, session_id=5)
    assert "m=audio 30000 RTP/AVP 8 101\r\n" in sdp
    assert "a=rtpmap:8 PCMA/8000" in sdp and "a=rtpmap:101 telephone-event/8000" in sdp
    assert "c=IN IP4 198.51.100.1" in sdp and sdp.startswith("v=0\r\no=parley 5 1 IN IP4")


def test_answer_refuses_other_streams_and_mirrors_direction() -> None:
    sdp = ("v=0\nc=IN IP4 10.1.1.1\nt=0 0\nm=video 5000 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
           "m=audio 6000 RTP/AVP 18 0\nc=IN IP4 10.2.2.2\na=sendonly\n")
    offer = parse_offer(sdp)
    chosen = negotiate(offer)
    assert chosen.codec == PCMU and chosen.telephone_event is None and chosen.remote == ("10.2.2.2", 6000)
    out = answer(offer, chosen, address="10.0.0.1", port=7000)
    assert "m=video 0 RTP/AVP 96" in out and "m=audio 7000 RTP/AVP 0\r\n" in out and "a=recvonly" in out


@pytest.mark.parametrize("sdp", [
    "",
    "hello",
    "v=0\nc=IN IP4 1.2.3.4\n",  # no audio
    "v=0\nc=IN IP4 1.2.3.4\nm=audio x RTP/AVP 0\n",  # bad port
    "v=0\nm=audio 5000 RTP/AVP 0\n",  # no address
    "v=0\nc=IN IP9 1.2.3.4\nm=audio 5000 RTP/AVP 0\n",
    "v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/SAVP 0\n",  # SRTP only
])
def test_unusable_offers_raise(sdp: str) -> None:
    with pytest.raises(SdpError):
        parse_offer(sdp)


def test_offer_without_g711_is_not_acceptable() -> None:
    offer = parse_offer("v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP 9 96\na=rtpmap:96 opus/48000/2\n")
    with pytest.raises(SdpError):
        negotiate(offer)
    remapped = parse_offer("v=0\nc=IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP 0\na=rtpmap:0 opus/48000\n")
    with pytest.raises(SdpError):
        negotiate(remapped)


# ---- RTP ---------------------------------------------------------------------------------------


def test_rtp_round_trip_and_header_variants() -> None:
    packet = RtpPacket(0, 65535, 2**32 - 1, 1234, b"\xff" * 160, marker=True)
    assert parse_rtp(packet.to_bytes()) == packet
    data = bytearray(packet.to_bytes())
    data[0] |= 0x10 | 0x01  # one CSRC and a header extension of one word
    with_ext = bytes(data[:12]) + b"\x00\x00\x00\x01" + b"\xbe\xde\x00\x01" + b"\x00\x00\x00\x00" + bytes(data[12:])
    assert parse_rtp(with_ext).payload == b"\xff" * 160  # type: ignore[union-attr]
    padded = bytearray(packet.to_bytes() + b"\x00\x00\x03")
    padded[0] |= 0x20
    assert parse_rtp(bytes(padded)).payload == b"\xff" * 160  # type: ignore[union-attr]
    assert parse_rtp(b"\x80\xc8" + bytes(10)) is None  # RTCP sender report
    assert parse_rtp(b"\x00" * 20) is None and parse_rtp(b"\x80") is None


def test_dtmf_payloads() -> None:
    assert dtmf_digit(dtmf_payload("#", end=True, duration=800)) == "#"
    assert [dtmf_digit(bytes([n, 0, 0, 0])) for n in (0, 9, 10, 11, 12, 15)] == ["0", "9", "*", "#", "A", "D"]
    assert dtmf_digit(bytes([16, 0, 0, 0])) is None and dtmf_digit(b"\x01") is None


@pytest.mark.parametrize("bad", [b"SIP/2.0 1\xc2\xb23 OK\r\n\r\n",
                                 b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: \xc2\xb2\r\n\r\n"])
def test_non_ascii_digits_are_a_parse_error_not_a_crash(bad: bytes) -> None:
    with pytest.raises(SipParseError):
        parse(bad)


@pytest.mark.parametrize("offer", ["v=0\r\nc=IN IP4 pbx.example.com\r\nm=audio 4000 RTP/AVP 0\r\n",
                                   "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 70000 RTP/AVP 0\r\n",
                                   "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio \u00b2 RTP/AVP 0\r\n"])
def test_offers_we_could_not_send_to_are_refused(offer: str) -> None:
    """A host name would take a blocking DNS lookup in sendto; a port over 65535 would kill the sender."""
    with pytest.raises(SdpError):
        parse_offer(offer)


def test_g711_resampling_keeps_every_frame_whole_and_in_time() -> None:
    """Each 20 ms frame comes out at once (no buffering: barge-in and the played position rely on it)."""
    down, up = Resample6(up=False), Resample6(up=True)
    impulse = np.zeros(960, np.int16)
    impulse[480] = 30000
    out = down.push(impulse)
    assert len(out) == 160 and 80 <= int(np.argmax(out)) <= 96  # 1.8 ms of filter delay at most
    back = up.push(np.zeros(160, np.int16))
    assert len(back) == 960
    tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000)).astype(np.int16)
    loud = np.concatenate([up.push(tone[i:i + 160]) for i in range(0, 8000, 160)])
    assert abs(np.sqrt(np.mean(loud[960:].astype(float) ** 2)) / (8000 / np.sqrt(2)) - 1) < 0.02
