"""The WebRTC transport: an aiortc peer per call, as the hosted API's `/v1/realtime/calls` gives.

The browser offers an audio track (its microphone) and a data channel named `oai-events`; we
answer with one audio track of our own.  Opus at 48 kHz travels both ways; the runner sees
the microphone as mono PCM16 at 48 kHz (`RemoteMicrophone`) and fills a `Playout` that our
track (`PlayoutTrack`) drains in real-time 20 ms frames.  With Opus the track encodes itself
and, while nothing plays, idles like DTX: 100 ms of silence, then one silent frame every
400 ms.  JSON events travel on the data channel exactly as on the WebSocket
(`DataChannelTransport`), which sideband WebSockets (`?call_id=`) may join.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, CodecContext
from av.audio.resampler import AudioResampler
from av.packet import Packet

from ..protocol.ids import IdFactory
from ..runtime.playout import FRAME_SAMPLES, RATE, Playout

log = logging.getLogger("parley.webrtc")

EVENTS_CHANNEL = "oai-events"
MAX_PENDING_MESSAGES = 1024  # client events received but not yet taken by the session
SEND_BUFFER_BYTES = 1024 * 1024  # data channel bytes queued before `send` waits


# ---- ICE configuration -------------------------------------------------------------------------


def ice_server(url: str) -> RTCIceServer:
    """`stun:host:port`, or `turn:user:password@host:port[?transport=tcp]` (also `turns:`)."""
    match = re.fullmatch(r"(stun|stuns|turn|turns):(?:([^:@]*):([^@]*)@)?(.+)", url.strip())
    if match is None:
        raise ValueError(f"not a STUN or TURN URL: {url!r} (expected stun:host:port or turn:user:pass@host:port)")
    scheme, user, password, rest = match.groups()
    return RTCIceServer(f"{scheme}:{rest}", username=unquote(user) if user else None,
                        credential=unquote(password) if password else None)


def with_public_address(sdp: str, public_ip: str | None) -> str:
    """Advertise `public_ip` in host candidates (a server behind 1:1 NAT, as in a cloud VM)."""
    if not public_ip:
        return sdp
    return re.sub(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host)", rf"\g<1>{public_ip}\g<3>", sdp, flags=re.M)


@dataclass(frozen=True)
class IceSettings:
    servers: tuple[str, ...] = ()
    public_ip: str | None = None


# ---- events on the data channel ----------------------------------------------------------------


class DataChannelTransport:
    """The runner's Transport over the `oai-events` channel (plus any sideband sockets).

    Messages that arrive before the session takes them wait in a bounded queue; events sent
    before the browser has opened its channel wait until it does (or until `open_timeout_s`,
    after which they are dropped: nobody is there to read them).
    """

    def __init__(self, hang_up: Callable[[], Awaitable[None]], open_timeout_s: float = 20.0) -> None:
        self._hang_up = hang_up
        self._open_timeout_s = open_timeout_s
        self._channel = None
        self._opened = asyncio.Event()
        self._incoming: deque[str | bytes | None] = deque()
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self.listeners: set[Callable[[str], None]] = set()  # sideband sockets watching the call

    def attach(self, channel) -> None:  # noqa: ANN001 - aiortc's RTCDataChannel
        self._channel = channel
        channel.bufferedAmountLowThreshold = SEND_BUFFER_BYTES // 4
        channel.on("message", self.feed)
        channel.on("bufferedamountlow", self._drained.set)
        channel.on("close", lambda: self.feed(None))
        if channel.readyState == "open":
            self._opened.set()
        channel.on("open", self._opened.set)

    def feed(self, message: str | bytes | None) -> None:
        """A client message (None: the client is gone)."""
        if message is not None and len(self._incoming) >= MAX_PENDING_MESSAGES:
            log.warning("client sends events faster than its session takes them; ending the call")
            message = None
        self._incoming.append(message)
        self._arrived.set()

    async def receive(self) -> str | bytes | None:
        while not self._incoming:
            self._arrived.clear()
            await self._arrived.wait()
        return self._incoming.popleft()

    async def send(self, text: str) -> None:
        for listener in list(self.listeners):
            listener(text)
        if not self._opened.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._opened.wait(), self._open_timeout_s)
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        while channel.bufferedAmount > SEND_BUFFER_BYTES and channel.readyState == "open":
            self._drained.clear()
            await self._drained.wait()
        try:
            channel.send(text)
        except ValueError as exc:  # larger than the browser takes (often 256 KiB): say so instead
            channel.send(too_large_for_channel(text, str(exc)))

    async def close(self, code: int, reason: str) -> None:
        await self._hang_up()


def too_large_for_channel(text: str, reason: str) -> str:
    """An `error` event in place of an event the peer's data channel cannot take (typically a
    `conversation.item.retrieved` with long audio)."""
    kind = "event"
    with contextlib.suppress(ValueError, AttributeError):
        kind = json.loads(text).get("type", kind)
    return json.dumps({"event_id": IdFactory().event(), "type": "error", "error": {
        "type": "invalid_request_error", "code": "event_too_large", "param": None, "event_id": None,
        "message": f"The server could not send a {kind} event of {len(text.encode())} bytes on the data channel "
                   f"({reason}). Retrieve large items over a sideband WebSocket (?call_id=) instead."}})


# ---- media -------------------------------------------------------------------------------------


#: after the last audio, this many frames of silence still go out (100 ms: the caller's decoder
#: ends on silence), then the track goes quiet like Opus DTX: one silent frame every
#: `KEEPALIVE_FRAMES` (400 ms) instead of 50 encoded frames a second
HANGOVER_FRAMES = 5
KEEPALIVE_FRAMES = 20
TIME_BASE = fractions.Fraction(1, RATE)


def opus_encoder() -> CodecContext:
    """libopus as aiortc sets it up (stereo, 96 kb/s, VoIP), so the caller hears the same."""
    codec = CodecContext.create("libopus", "w")
    codec.bit_rate = 96000
    codec.format = "s16"
    codec.layout = "stereo"
    codec.options = {"application": "voip"}
    codec.sample_rate = RATE
    codec.time_base = TIME_BASE
    return codec


def sends_opus(answer_sdp: str) -> bool:
    """Whether the first (sending) codec of the answer's audio section is Opus."""
    media = re.search(r"^m=audio \S+ \S+ (\d+)", answer_sdp, flags=re.M)
    return media is not None and re.search(
        rf"^a=rtpmap:{media.group(1)} opus/", answer_sdp, flags=re.M | re.I) is not None


class PlayoutTrack(MediaStreamTrack):
    """Our outgoing audio: one 20 ms frame of the playout per tick of a real-time clock.

    With `encode_opus` (the call negotiated Opus) the track encodes its frames itself and hands
    aiortc packets: no executor thread per frame, and RTP timestamps that are exactly the tick's
    sample position, so frames can be skipped while nothing plays (see `HANGOVER_FRAMES`) and
    audio that resumes is stamped where it plays.  Otherwise aiortc encodes the frames.
    """

    kind = "audio"

    def __init__(self, playout: Playout) -> None:
        super().__init__()
        self.playout = playout
        self.encode_opus = False
        self._start: float | None = None
        self._samples = 0
        self._quiet = 0  # frames sent since the playout last had audio
        self._wake = asyncio.Event()
        playout.on_audio = self._wake.set
        self._encoder: CodecContext | None = None
        self._stereo = np.empty(2 * FRAME_SAMPLES, dtype=np.int16)

    async def recv(self) -> AudioFrame | Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._samples += FRAME_SAMPLES
            if self.encode_opus and self._quiet >= HANGOVER_FRAMES and not self.playout.busy:
                await self._idle()
            wait = self._start + self._samples / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = self.playout.next_frame()
        self._quiet = 0 if self.playout.busy else self._quiet + 1
        return self._encode(pcm) if self.encode_opus else self._frame(pcm, "mono")

    async def _idle(self) -> None:
        """Skip ticks until audio is queued (then it goes out on the next tick, as it would have)
        or the next keep-alive frame is due, staying on the 20 ms grid."""
        keepalive = self._samples + (KEEPALIVE_FRAMES - 1) * FRAME_SAMPLES
        self._wake.clear()
        if not self.playout.busy:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._start + keepalive / RATE - time.monotonic()))
            except asyncio.TimeoutError:
                self._samples = keepalive
                return
        elapsed = int((time.monotonic() - self._start) * RATE)
        self._samples = max(self._samples, min(keepalive, -(-elapsed // FRAME_SAMPLES) * FRAME_SAMPLES))

    def _frame(self, pcm: bytes | np.ndarray, layout: str) -> AudioFrame:
        frame = AudioFrame(format="s16", layout=layout, samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm)
        frame.pts = self._samples
        frame.sample_rate = RATE
        frame.time_base = TIME_BASE
        return frame

    def _encode(self, pcm: bytes) -> Packet:
        if self._encoder is None:
            self._encoder = opus_encoder()
        mono = np.frombuffer(pcm, dtype=np.int16)
        self._stereo[0::2] = mono
        self._stereo[1::2] = mono
        packets = self._encoder.encode(self._frame(self._stereo, "stereo"))
        packet = packets[0]  # libopus returns one packet per 20 ms frame
        packet.pts = self._samples  # its audio lags this by the codec delay, as it always does
        packet.time_base = TIME_BASE
        return packet


class RemoteMicrophone:
    """The caller's audio track as mono int16 chunks at 48 kHz (`MicrophoneSource`)."""

    def __init__(self) -> None:
        self._track: asyncio.Future[MediaStreamTrack | None] = asyncio.get_running_loop().create_future()
        self._resampler: AudioResampler | None = None

    def set_track(self, track: MediaStreamTrack | None) -> None:
        if not self._track.done():
            self._track.set_result(track)

    async def read(self) -> np.ndarray | None:
        track = await self._track
        if track is None:
            return None
        try:
            frame = await track.recv()
        except MediaStreamError:
            return None
        if frame.format.name == "s16" and frame.sample_rate == RATE and frame.layout.name in ("mono", "stereo"):
            pcm = frame.to_ndarray().reshape(-1)
            if frame.layout.name == "mono":
                return pcm
            both = pcm.astype(np.int32)  # what aiortc's Opus decoder gives: interleaved stereo
            return ((both[0::2] + both[1::2]) >> 1).astype(np.int16)
        if self._resampler is None:
            self._resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        chunks = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, dtype=np.int16)


# ---- the peer ----------------------------------------------------------------------------------


class WebRTCPeer:
    """One call's peer connection: answer an offer, then carry events and audio until hang-up."""

    def __init__(self, ice: IceSettings, playout: Playout, open_timeout_s: float = 20.0) -> None:
        servers = [ice_server(url) for url in ice.servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))  # [] = no STUN lookups
        self.ice = ice
        self.playout = playout
        self.events = DataChannelTransport(self.close, open_timeout_s)
        self.microphone = RemoteMicrophone()
        self.ended = asyncio.Event()
        self.connected = asyncio.Event()
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def _on_datachannel(self, channel) -> None:  # noqa: ANN001
        if channel.label == EVENTS_CHANNEL:
            self.events.attach(channel)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.microphone.set_track(track)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            await self.close()

    async def answer(self, offer_sdp: str) -> str:
        """Take the caller's SDP offer; return our answer (ICE candidates included)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        track = None
        if any(t.kind == "audio" for t in self.pc.getTransceivers()):
            track = PlayoutTrack(self.playout)
            self.pc.addTrack(track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        if track is not None:
            track.encode_opus = sends_opus(self.pc.localDescription.sdp)
        return with_public_address(self.pc.localDescription.sdp, self.ice.public_ip)

    async def close(self) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        self.microphone.set_track(None)
        self.events.feed(None)
        with contextlib.suppress(Exception):
            await self.pc.close()
