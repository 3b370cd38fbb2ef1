"""A WebRTC caller in Python (aiortc), as a browser would call Parley: a microphone track we
feed with test speech, the `oai-events` data channel, and a recorder of the audio we hear."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.audio.resampler import AudioResampler

RATE = 48_000
FRAME = 960  # 20 ms


class Microphone(MediaStreamTrack):
    """Plays whatever `say()` queued, in real time; silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, dtype=np.int16)
        self._start: float | None = None
        self._sent = 0

    def say(self, pcm48k: np.ndarray) -> float:
        """Queue speech; returns how long until it has all been sent (seconds)."""
        self._queue = np.concatenate([self._queue, pcm48k.astype(np.int16)])
        return len(self._queue) / RATE

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._sent / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        chunk = np.zeros(FRAME, dtype=np.int16)
        take = min(FRAME, len(self._queue))
        chunk[:take] = self._queue[:take]
        self._queue = self._queue[take:]
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk.tobytes())
        frame.pts, frame.sample_rate, frame.time_base = self._sent, RATE, fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


@dataclass
class Heard:
    """Received audio: (arrival time, peak |sample|) per frame, the samples themselves, and
    (arrival time, RTP timestamp) per received frame."""

    frames: list[tuple[float, int]] = field(default_factory=list)
    pcm: list[np.ndarray] = field(default_factory=list)
    stamps: list[tuple[float, int]] = field(default_factory=list)

    def audible(self, threshold: int = 500) -> list[float]:
        return [t for t, peak in self.frames if peak >= threshold]


class WebRTCCaller:
    def __init__(self, base_url: str, key: str, *, path: str = "/realtime/calls", multipart_session: dict | None = None):
        self.base_url, self.key, self.path, self.multipart_session = base_url, key, path, multipart_session
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = Microphone()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._new_event = asyncio.Event()
        self.opened = asyncio.Event()
        self.heard = Heard()
        self.call_id: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, message: str) -> None:
        self.events.append((time.monotonic(), json.loads(message)))
        self._new_event.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.heard.stamps.append((time.monotonic(), int(frame.pts)))
            for f in resampler.resample(frame):
                pcm = f.to_ndarray().reshape(-1).astype(np.int16)
                self.heard.frames.append((time.monotonic(), int(np.abs(pcm.astype(np.int32)).max(initial=0))))
                self.heard.pcm.append(pcm)

    async def connect(self, query: str = "") -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {self.key}"}
        url = self.base_url + self.path + query
        async with httpx.AsyncClient(timeout=20) as http:
            if self.multipart_session is not None:
                files = {"sdp": (None, self.pc.localDescription.sdp, "application/sdp"),
                         "session": (None, json.dumps(self.multipart_session), "application/json")}
                response = await http.post(url, headers=headers, files=files)
            else:
                response = await http.post(url, headers={**headers, "Content-Type": "application/sdp"},
                                           content=self.pc.localDescription.sdp)
        if response.status_code == 201:
            self.call_id = response.headers["location"].rsplit("/", 1)[-1]
            await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            await asyncio.wait_for(self.opened.wait(), 10)
        return response

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.events]

    async def wait_for(self, kind: str, *, after: int = 0, timeout: float = 20.0, where: Any = None) -> tuple[int, float, dict[str, Any]]:
        """The first event of type `kind` at index >= `after`: (index, arrival time, event)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.events)):
                t, e = self.events[i]
                if e["type"] == kind and (where is None or where(e)):
                    return i, t, e
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} within {timeout}s; got {self.types()[after:]}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
