"""RTP for SIP calls (RFC 3550): G.711 audio both ways and RFC 4733 DTMF in.

`RtpEndpoint` is one call's UDP socket.  What the caller sends is decoded, resampled to 48 kHz
and read by the runner as a `MicrophoneSource`; telephone-events become digits.  What the
caller hears is drained from a `Playout` one 20 ms frame per tick of a real-time clock,
resampled to 8 kHz, encoded and sent.  RTP is symmetric (RFC 4961): we send to the address
the caller's packets come from, and to the SDP's address until the first one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..audio.formats import PCMA as PCMA_FORMAT
from ..audio.formats import PCMU as PCMU_FORMAT
from ..runtime.playout import RATE, Playout
from .sdp import PCMA, PCMU

log = logging.getLogger("parley.rtp")

G711_RATE = 8000
FRAME_MS = 20
G711_FRAME = G711_RATE * FRAME_MS // 1000  # 160 samples
MAX_QUEUED_FRAMES = 250  # 5 s of caller audio the session has not taken yet; older audio is dropped
DTMF_EVENTS = "0123456789*#ABCD"
_CODECS = {PCMU: PCMU_FORMAT, PCMA: PCMA_FORMAT}
_HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(0x80, (0x80 if self.marker else 0) | self.payload_type, self.sequence & 0xFFFF,
                            self.timestamp & 0xFFFFFFFF, self.ssrc)
        return head + self.payload


def parse_rtp(data: bytes) -> RtpPacket | None:
    """An RTP packet, or None for anything else (RTCP, STUN, garbage)."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if 72 <= second & 0x7F <= 76:  # RTCP multiplexed on the port (RFC 5761)
        return None
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if first & 0x20:  # padding
        end -= data[-1]
    if offset > end:
        return None
    return RtpPacket(second & 0x7F, seq, ts, ssrc, bytes(data[offset:end]), bool(second & 0x80))


def dtmf_digit(payload: bytes) -> str | None:
    """The key of an RFC 4733 telephone-event payload (None for flash and unknown events)."""
    if len(payload) < 4 or payload[0] >= len(DTMF_EVENTS):
        return None
    return DTMF_EVENTS[payload[0]]


def dtmf_payload(digit: str, *, end: bool, duration: int, volume: int = 10) -> bytes:
    """An RFC 4733 payload (tests and tools send DTMF with it)."""
    return struct.pack("!BBH", DTMF_EVENTS.index(digit), (0x80 if end else 0) | volume, duration)


def _lowpass(taps: int, cutoff_hz: float, rate: int) -> np.ndarray:
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff_hz / rate * n) * np.kaiser(taps, 6.0)
    return h / h.sum()


class Resample6:
    """48 kHz <-> 8 kHz (a factor of 6) with a polyphase windowed-sinc FIR, chunk in, chunk out.

    soxr's streams hold 20-100 ms of audio back and release it in bursts; here every 20 ms frame
    comes out whole at once, 1.8 ms of filter delay apart.  So a barge-in that clears the playout
    stops what the caller hears at once, and the played position is what was sent.  Chunks must
    be whole multiples of 6 samples when going down (20 ms frames are)."""

    TAPS = 174  # 29 per phase; -60 dB (Kaiser 6) from 4.3 kHz, flat to 3.4 kHz

    def __init__(self, *, up: bool) -> None:
        self.up = up
        h = _lowpass(self.TAPS, 3800.0, RATE)
        if up:
            self._phases = h.reshape(-1, 6)[::-1] * 6  # [j, p]: the taps of output phase p, newest input first
            self._history = np.zeros(self._phases.shape[0] - 1)
        else:
            self._taps = h
            self._history = np.zeros(self.TAPS - 1)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        full = np.concatenate([self._history, chunk.astype(np.float64)])
        self._history = full[len(full) - len(self._history):]
        if self.up:
            windows = np.lib.stride_tricks.sliding_window_view(full, self._phases.shape[0])
            out = (windows @ self._phases).ravel()
        else:
            if len(chunk) % 6:
                raise ValueError("Resample6 takes whole multiples of 6 samples going down")
            windows = np.lib.stride_tricks.sliding_window_view(full, self.TAPS)[::6]
            out = windows @ self._taps
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class CallerAudio:
    """The caller's decoded audio, as the runner's `MicrophoneSource` (mono int16 at 48 kHz)."""

    def __init__(self) -> None:
        self._frames: deque[np.ndarray | None] = deque()
        self._arrived = asyncio.Event()
        self._resampler = Resample6(up=True)
        self.ended = False

    def push(self, pcm8k: np.ndarray) -> None:
        if self.ended:
            return
        if len(self._frames) >= MAX_QUEUED_FRAMES:
            self._frames.popleft()
        self._frames.append(self._resampler.push(pcm8k))
        self._arrived.set()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._frames.append(None)
            self._arrived.set()

    async def read(self) -> np.ndarray | None:
        while not self._frames:
            self._arrived.clear()
            await self._arrived.wait()
        return self._frames.popleft()


class Datagrams(asyncio.DatagramProtocol):
    """A UDP socket's datagrams to a callback (RTP here, SIP in `sip.py`)."""

    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        try:
            self.on_datagram(data, (addr[0], addr[1]))
        except Exception:  # anyone can send a datagram: a bug it finds must cost it, not the socket
            log.exception("handling a datagram failed")

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)  # ICMP unreachable and friends: the peer is gone


class RtpEndpoint:
    """One call's media: G.711 with `codec`, DTMF on `telephone_event` (its payload type)."""

    def __init__(self, playout: Playout, on_dtmf: Callable[[str], None]) -> None:
        self.playout = playout
        self.on_dtmf = on_dtmf
        self.microphone = CallerAudio()
        self.codec = PCMU
        self.telephone_event: int | None = None
        self.sdp_remote: tuple[str, int] | None = None
        self.latched: tuple[str, int] | None = None
        self.port = 0
        self.packets_in = 0
        self.packets_out = 0
        self.heard_at = time.monotonic()  # when the caller's last RTP packet arrived (or the call began)
        self.held = False  # the caller said it sends nothing (a=recvonly/inactive, or port 0)
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: asyncio.Task[None] | None = None
        self._last_seq: int | None = None
        self._dtmf_seen: deque[tuple[int, int]] = deque(maxlen=16)  # (ssrc, timestamp) of events reported
        self._ssrc = random.getrandbits(32)
        self._down = Resample6(up=False)

    async def open(self, host: str, ports: tuple[int, int] | None = None) -> int:
        """Bind the socket (in `ports`, an inclusive range, when given); return the port."""
        loop = asyncio.get_running_loop()
        candidates = [0] if ports is None else random.sample(range(ports[0], ports[1] + 1),
                                                             min(64, ports[1] - ports[0] + 1))
        last: OSError | None = None
        for port in candidates:
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: Datagrams(self.received),
                                                                      local_addr=(host, port))
            except OSError as exc:
                last = exc
                continue
            self._transport = transport  # type: ignore[assignment]
            self.port = int(transport.get_extra_info("sockname")[1])
            return self.port
        raise OSError(f"no free RTP port in {ports}: {last}")

    def configure(self, codec: int, telephone_event: int | None, remote: tuple[str, int], *,
                  caller_sends: bool = True) -> None:
        """Apply a negotiated offer (again on a re-INVITE: the caller may have moved, or hold)."""
        self.codec, self.telephone_event = codec, telephone_event
        if remote != self.sdp_remote:
            self.sdp_remote, self.latched = remote, None
        if self.held and caller_sends:
            self.heard_at = time.monotonic()  # back from hold: its silence so far does not count
        self.held = not caller_sends

    def silent_for(self) -> float:
        """Seconds since the caller's last RTP packet (0 while on hold: silence is expected)."""
        return 0.0 if self.held else time.monotonic() - self.heard_at

    def start(self) -> None:
        if self._sender is None:
            self.heard_at = time.monotonic()
            self._sender = asyncio.create_task(self._send_loop(), name="rtp-sender")

    @property
    def remote(self) -> tuple[str, int] | None:
        if self.latched is not None:
            return self.latched
        if self.sdp_remote is not None and self.sdp_remote[1] != 0:
            return self.sdp_remote
        return None

    # ---- in ----------------------------------------------------------------------------------

    def received(self, data: bytes, source: tuple[str, int]) -> None:
        packet = parse_rtp(data)
        if packet is None or self.latched not in (None, source):
            return  # not RTP, or someone else's packets: the first source owns the stream
        self.heard_at = time.monotonic()  # any payload type (comfort noise too) says the caller is there
        if packet.payload_type not in (self.codec, self.telephone_event):
            return
        self.latched = source
        self.packets_in += 1
        if packet.payload_type == self.telephone_event:
            self._dtmf(packet)
            return
        if self._last_seq is not None and 0 < (self._last_seq - packet.sequence) & 0xFFFF < 1000:
            return  # late or duplicate: it would only garble what has been played out already
        self._last_seq = packet.sequence
        self.microphone.push(_CODECS[self.codec].decode(packet.payload))

    def _dtmf(self, packet: RtpPacket) -> None:
        """One report per event: its packets (and the end packet's repeats) share a timestamp."""
        key = (packet.ssrc, packet.timestamp)
        digit = dtmf_digit(packet.payload)
        if digit is None or key in self._dtmf_seen:
            return
        self._dtmf_seen.append(key)
        self.on_dtmf(digit)

    # ---- out ---------------------------------------------------------------------------------

    def _next_payload(self) -> bytes:
        """20 ms of the playout as G.711: what was taken from the playout is what goes out."""
        return _CODECS[self.codec].encode(self._down.push(np.frombuffer(self.playout.next_frame(), np.int16)))

    async def _send_loop(self) -> None:
        seq, timestamp = random.getrandbits(16), random.getrandbits(32)
        start, ticks = time.monotonic(), 0
        first = True
        while self._transport is not None:
            payload = self._next_payload()
            remote = self.remote
            if remote is not None:
                packet = RtpPacket(self.codec, seq, timestamp, self._ssrc, payload, marker=first)
                with contextlib.suppress(OSError):
                    self._transport.sendto(packet.to_bytes(), remote)
                    self.packets_out += 1
                first = False
            seq, timestamp, ticks = seq + 1, timestamp + G711_FRAME, ticks + 1
            wait = start + ticks * FRAME_MS / 1000 - time.monotonic()
            if wait < -0.2:  # the loop stalled: start the clock again rather than send a burst
                start, ticks, wait = time.monotonic(), 0, 0.0
            await asyncio.sleep(max(0.0, wait))

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if transport is not None:
            transport.close()
        self.microphone.end()
