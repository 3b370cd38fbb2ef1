"""SDP offer/answer (RFC 3264) for one audio stream of G.711 at 8 kHz.  No I/O here.

From the caller's offer we take the first audio m= line: its connection address and port, the
payload types it lists, and `telephone-event/8000` (RFC 4733 DTMF) when present.  We answer
PCMU (0) or PCMA (8), whichever the caller lists first, plus telephone-event with the caller's
payload type.  Anything else in the offer (video, other codecs, ICE, crypto) is refused or
ignored: the answer rejects other m= lines with port 0, as RFC 3264 asks.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field

PCMU, PCMA = 0, 8
CODEC_NAMES = {PCMU: "PCMU", PCMA: "PCMA"}
PTIME_MS = 20


class SdpError(ValueError):
    """The offer is malformed, or has no audio we can take (488 Not Acceptable Here)."""


@dataclass
class Media:
    kind: str
    port: int
    proto: str
    formats: list[str]
    address: str | None = None  # a media-level c= line
    rtpmap: dict[int, str] = field(default_factory=dict)  # payload type -> "name/rate[/channels]"
    direction: str = "sendrecv"


@dataclass(frozen=True)
class Offer:
    address: str  # where the caller wants our RTP
    port: int
    payload_types: tuple[int, ...]
    telephone_event: int | None
    direction: str
    media: tuple[Media, ...]


@dataclass(frozen=True)
class Negotiated:
    codec: int  # PCMU or PCMA
    telephone_event: int | None
    remote: tuple[str, int]  # the caller's RTP address from the offer (port 0: on hold / refused)


def parse_offer(sdp: str) -> Offer:
    session_address: str | None = None
    session_direction = "sendrecv"
    media: list[Media] = []
    if not sdp.lstrip().startswith("v="):
        raise SdpError("not an SDP body")
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        current = media[-1] if media else None
        if kind == "m":
            parts = value.split()
            port = parts[1].split("/")[0] if len(parts) >= 4 else ""
            if not (port.isascii() and port.isdigit() and int(port) <= 65535):
                raise SdpError(f"malformed m= line: {line[:80]!r}")
            media.append(Media(parts[0], int(parts[1].split("/")[0]), parts[2], parts[3:]))
        elif kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError(f"malformed c= line: {line[:80]!r}")
            address = parts[2].split("/")[0]
            if current is None:
                session_address = address
            else:
                current.address = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                if current is None:
                    session_direction = name
                else:
                    current.direction = name
            elif name == "rtpmap" and current is not None:
                match = re.fullmatch(r"(\d+)\s+(\S+)", arg.strip())
                if match:
                    current.rtpmap[int(match.group(1))] = match.group(2)
    audio = next((m for m in media if m.kind == "audio" and m.proto.upper().startswith("RTP/AVP")), None)
    if audio is None:
        raise SdpError("the offer has no RTP/AVP audio stream")
    address = audio.address or session_address
    if address is None:
        raise SdpError("the offer has no connection address (c=)")
    if not _ip_literal(address):
        raise SdpError(f"the connection address is not an IP address: {address[:80]!r}")
    pts = tuple(int(f) for f in audio.formats if f.isascii() and f.isdigit())
    event = next((pt for pt in pts if audio.rtpmap.get(pt, "").lower().startswith("telephone-event/8000")), None)
    direction = audio.direction if audio.direction != "sendrecv" else session_direction
    return Offer(address, audio.port, pts, event, direction, tuple(media))


def _ip_literal(address: str) -> bool:
    """Only IP addresses: a host name would need a DNS lookup (a blocking one in `sendto`)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def negotiate(offer: Offer) -> Negotiated:
    """Our choice of codec: the caller's first of PCMU/PCMA (static payload types, or mapped names)."""
    for pt in offer.payload_types:
        codec = _g711(pt, _audio(offer).rtpmap.get(pt))
        if codec is not None:
            return Negotiated(codec, offer.telephone_event, (offer.address, offer.port))
    raise SdpError("the offer has neither PCMU nor PCMA at 8000 Hz")


def _audio(offer: Offer) -> Media:
    return next(m for m in offer.media if m.kind == "audio" and m.proto.upper().startswith("RTP/AVP"))


def _g711(pt: int, rtpmap: str | None) -> int | None:
    if rtpmap is None:
        return pt if pt in CODEC_NAMES else None
    name = rtpmap.upper()
    if pt in CODEC_NAMES and name.startswith(CODEC_NAMES[pt] + "/8000"):
        return pt
    return None  # dynamic payload types for G.711 are not worth the trouble


_ANSWER_DIRECTION = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


def answer(offer: Offer, chosen: Negotiated, *, address: str, port: int, session_id: int | None = None,
           version: int = 1) -> str:
    """Our answer: one m= line per offered one, only the first audio stream accepted."""
    sid = session_id if session_id is not None else secrets.randbelow(2**31)
    family = "IP6" if ":" in address else "IP4"
    lines = ["v=0", f"o=parley {sid} {version} IN {family} {address}", "s=Parley", f"c=IN {family} {address}",
             "t=0 0"]
    accepted = _audio(offer)
    for media in offer.media:
        if media is not accepted:
            lines.append(f"m={media.kind} 0 {media.proto} {' '.join(media.formats)}")
            continue
        pts = [chosen.codec] + ([chosen.telephone_event] if chosen.telephone_event is not None else [])
        lines.append(f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}")
        lines.append(f"a=rtpmap:{chosen.codec} {CODEC_NAMES[chosen.codec]}/8000")
        if chosen.telephone_event is not None:
            lines.append(f"a=rtpmap:{chosen.telephone_event} telephone-event/8000")
            lines.append(f"a=fmtp:{chosen.telephone_event} 0-16")
        lines.append(f"a=ptime:{PTIME_MS}")
        lines.append(f"a={_ANSWER_DIRECTION.get(offer.direction, 'sendrecv')}")
    return "\r\n".join(lines) + "\r\n"
