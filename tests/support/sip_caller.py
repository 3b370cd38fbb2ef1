"""What the SIP tests call with: SIPp (the `sip-tester` package) running a scenario of
`tests/sip/`, a Python RTP endpoint that hears what Parley sends and sends keys, and a webhook
receiver that records `realtime.call.incoming` deliveries."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from parley.transports.rtp import RtpPacket, dtmf_payload, parse_rtp
from tests.support.parley_server import OUTPUT
from tests.support.scripted_server import ScriptedServer

SCENARIOS = Path(__file__).resolve().parents[1] / "sip"


def sipp_command() -> str:
    """The `sipp` binary; its absence fails the test (scripts/test installs sip-tester)."""
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed: run ./scripts/test (it installs the sip-tester package) "
                           "or apt-get install sip-tester")
    return path


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SippRun:
    """One SIPp caller making one call with `scenario` to Parley's SIP port."""

    scenario: str
    sip_port: int
    keys: dict[str, str] = field(default_factory=dict)
    pause_ms: int = 1000
    transport: str = "u1"  # u1: UDP, t1: TCP
    local_ip: str = "127.0.0.1"  # where SIPp sends from (127.0.0.2 and so on are loopback too)
    media_port: int = field(default_factory=free_udp_port)  # where SIPp's rtp_stream sends from
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None

    async def start(self, cwd: Path) -> SippRun:
        OUTPUT.mkdir(exist_ok=True)
        self.log = OUTPUT / f"sipp-{self.scenario}-{self.sip_port}-{time.monotonic_ns()}.log"
        self.log.unlink(missing_ok=True)
        args = [sipp_command(), f"127.0.0.1:{self.sip_port}", "-sf", str(SCENARIOS / f"{self.scenario}.xml"),
                "-m", "1", "-l", "1", "-i", self.local_ip, "-mi", self.local_ip, "-p", str(free_udp_port()),
                "-t", self.transport, "-d", str(self.pause_ms), "-nostdin", "-timeout", "30", "-timeout_error",
                "-trace_msg", "-message_file", str(self.log)]
        for key, value in {"formats": "0 8 101", **self.keys}.items():
            args += ["-key", key, value]
        args += ["-mp", str(self.media_port)]
        self.proc = await asyncio.create_subprocess_exec(*args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.DEVNULL)
        return self

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"sipp did not finish in {timeout} s:\n{self.messages()[-3000:]}") from None

    def messages(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class RtpPeer(asyncio.DatagramProtocol):
    """The caller's media side in Python: records every RTP packet Parley sends, sends DTMF, and
    talks like a phone (`talk`): a G.711 packet every 20 ms (u-law, or A-law with `codec=8`),
    silence unless it was told to `say` something."""

    def __init__(self, codec: int = 0) -> None:
        self.codec = codec  # the payload type it sends and decodes: 0 PCMU, 8 PCMA
        self.encode, self.decode = {0: (ulaw_encode, ulaw_decode), 8: (alaw_encode, alaw_decode)}[codec]
        self.packets: list[tuple[float, tuple[str, int], RtpPacket]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.said_at: list[float] = []  # when each `say` began to go out
        self._speech: list[np.ndarray] = []
        self._talking: asyncio.Task[None] | None = None

    async def open(self) -> RtpPeer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = parse_rtp(data)
        if packet is not None:
            self.packets.append((time.monotonic(), addr, packet))

    def audio(self) -> np.ndarray:
        """Everything heard so far in its codec, decoded, as int16 at 8 kHz."""
        return self.decode(b"".join(p.payload for _, _, p in self.packets if p.payload_type == self.codec))

    async def send_dtmf(self, digit: str, to: tuple[str, int], *, payload_type: int = 101, timestamp: int = 0) -> None:
        """One key press as RFC 4733 sends it: updates every 50 ms, then the end packet three times."""
        assert self.transport is not None
        seq = timestamp & 0xFFFF
        for i, duration in enumerate((400, 800, 1200)):
            packet = RtpPacket(payload_type, seq + i, timestamp, 0xD7F, dtmf_payload(digit, end=False, duration=duration),
                               marker=i == 0)
            self.transport.sendto(packet.to_bytes(), to)
            await asyncio.sleep(0.05)
        for i in range(3):
            packet = RtpPacket(payload_type, seq + 3 + i, timestamp, 0xD7F, dtmf_payload(digit, end=True, duration=1600))
            self.transport.sendto(packet.to_bytes(), to)

    async def first_heard(self, timeout: float = 5.0) -> tuple[str, int]:
        """Where Parley's RTP comes from (its RTP socket, where it also listens: symmetric RTP),
        once its first packet has arrived (Parley sends from the ACK on, quiet packets too)."""
        async with asyncio.timeout(timeout):
            while not self.packets:
                await asyncio.sleep(0.02)
        return self.packets[0][1]

    def talk(self, to: tuple[str, int]) -> None:
        self._talking = asyncio.create_task(self._send_audio(to))

    def say(self, pcm8k: np.ndarray) -> None:
        self._speech.append(pcm8k)

    def stop_talking(self) -> None:
        if self._talking is not None:
            self._talking.cancel()

    async def _send_audio(self, to: tuple[str, int]) -> None:
        assert self.transport is not None
        seq, start, pending = 0, time.monotonic(), np.zeros(0, np.int16)
        while True:
            if not pending.size and self._speech:
                pending = self._speech.pop(0)
                self.said_at.append(time.monotonic())
            frame, pending = pending[:160], pending[160:]
            frame = np.concatenate([frame, np.zeros(160 - frame.size, np.int16)])
            self.transport.sendto(RtpPacket(self.codec, seq, seq * 160, 0x5EED, self.encode(frame)).to_bytes(), to)
            seq += 1
            await asyncio.sleep(max(0.0, start + seq * 0.02 - time.monotonic()))

    def close(self) -> None:
        self.stop_talking()
        if self.transport is not None:
            self.transport.close()


def sdp_audio_address(sdp: str) -> tuple[str, int]:
    host = next(line.split()[-1] for line in sdp.splitlines() if line.startswith("c="))
    port = next(int(line.split()[1]) for line in sdp.splitlines() if line.startswith("m=audio"))
    return host, port


class WebhookReceiver(ScriptedServer):
    """Records webhook deliveries (headers and raw body) and answers 200."""

    name = "webhook"

    def __init__(self) -> None:
        super().__init__([Route("/webhook", self._hook, methods=["POST"])])
        self.arrived = threading.Condition()
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self.arrived:
            self.deliveries.append((dict(request.headers), body))
            self.arrived.notify_all()
        return Response(status_code=200)

    async def next_delivery(self, seen: int, timeout: float = 10.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) <= seen:
            if time.monotonic() > deadline:
                raise AssertionError("no webhook arrived")
            await asyncio.sleep(0.02)
        return self.deliveries[seen]


def best_match(heard: np.ndarray, sent: np.ndarray) -> float:
    """How exactly `heard` reproduces a stretch of `sent` (both 8 kHz): the correlation at the best lag."""
    heard, sent = heard.astype(np.float64), sent.astype(np.float64)
    probe = heard[: min(len(heard), 16000)]
    lag = int(np.argmax(np.correlate(sent, probe, mode="valid"))) if len(sent) >= len(probe) else 0
    n = min(len(heard), len(sent) - lag)
    return float(np.corrcoef(heard[:n], sent[lag:lag + n])[0, 1])


def energy(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0
