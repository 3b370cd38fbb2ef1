"""Response audio waiting to be played on a media track, and what has been played.

Responses are generated faster than they are spoken, so their audio queues here and leaves in
20 ms frames of 48 kHz mono PCM16, one per tick of the media track's clock (see
`transports/webrtc.py`, and `transports/rtp.py` for SIP).  Because every frame that leaves is one the caller hears, this is
where the server knows the played position of each assistant item: a barge-in truncates the
item there.  No asyncio and no clock here: the track calls `next_frame()` at its own pace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio.formats import AudioFormat
from ..audio.resample import StreamResampler
from ..core.io import PlayoutCleared, PlayoutStarted, PlayoutStopped

RATE = 48_000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000

PlayoutEvent = PlayoutStarted | PlayoutStopped


@dataclass
class _Segment:
    response_id: str
    item_id: str
    content_index: int
    pcm: np.ndarray  # int16 at RATE
    start: int  # where it begins in its content part's audio, in samples at RATE
    pos: int = 0  # samples already played

    def played_ms(self) -> float:
        return (self.start + self.pos) * 1000 / RATE


class Playout:
    """A FIFO of response audio, drained one frame at a time.

    `on_event` receives `PlayoutStarted` when a response's first audio is queued (it plays on
    the next tick, within 20 ms; the hosted API also reports it before `response.done`) and
    `PlayoutStopped` when a finished response's last sample has been played.
    """

    def __init__(self, on_event: Callable[[PlayoutEvent], None]) -> None:
        self._on_event = on_event
        self._queue: deque[_Segment] = deque()
        self._queued: dict[tuple[str, int], int] = {}  # samples queued per content part, ever
        self._resamplers: dict[tuple[str, int], tuple[StreamResampler, AudioFormat]] = {}
        self._parts: dict[str, set[tuple[str, int]]] = {}  # response -> its content parts
        self._started: dict[str, tuple[str, int]] = {}  # response -> part, while it plays
        self._finished: set[str] = set()
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16).tobytes()
        self.on_audio: Callable[[], None] | None = None  # told when audio is queued (a track that idles)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or bool(self._started)

    def push(self, response_id: str, item_id: str, content_index: int, audio: bytes, fmt: dict[str, Any]) -> None:
        """Queue a response's audio (bytes in the session's output format `fmt`)."""
        key = (item_id, content_index)
        wire = AudioFormat.from_session(fmt)
        entry = self._resamplers.get(key)
        if entry is None or entry[1] != wire:
            entry = (StreamResampler(wire.rate, RATE), wire)
            self._resamplers[key] = entry
        self._parts.setdefault(response_id, set()).add(key)
        self._queue_pcm(response_id, key, entry[0].push(wire.decode(audio)))
        if self.on_audio is not None:
            self.on_audio()
        if response_id not in self._started:
            self._started[response_id] = key
            self._on_event(PlayoutStarted(response_id))

    def _queue_pcm(self, response_id: str, key: tuple[str, int], pcm: np.ndarray) -> None:
        """soxr keeps the output aligned with the input, so sample n at RATE is n / RATE into the part."""
        start = self._queued.get(key, 0)
        self._queued[key] = start + len(pcm)
        if len(pcm):
            self._queue.append(_Segment(response_id, key[0], key[1], pcm, start))

    def finish(self, response_id: str) -> None:
        """The response is done: no more audio will come for it."""
        for key in self._parts.pop(response_id, ()):
            entry = self._resamplers.pop(key, None)
            if entry is not None:
                self._queue_pcm(response_id, key, entry[0].flush())
        self._finished.add(response_id)
        self._check_stopped()

    def next_frame(self) -> bytes:
        """The next 20 ms to play: queued audio, padded with silence when there is too little."""
        if not self._queue:
            return self._silence
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            seg = self._queue[0]
            take = min(FRAME_SAMPLES - filled, len(seg.pcm) - seg.pos)
            out[filled:filled + take] = seg.pcm[seg.pos:seg.pos + take]
            filled += take
            seg.pos += take
            if seg.pos >= len(seg.pcm):
                self._queue.popleft()
        self._check_stopped()
        return out.tobytes()

    def _check_stopped(self) -> None:
        waiting = {s.response_id for s in self._queue}
        for rid in [r for r in self._finished if r not in waiting]:
            self._finished.discard(rid)
            if self._started.pop(rid, None) is not None:
                self._on_event(PlayoutStopped(rid))

    def clear(self) -> PlayoutCleared:
        """Stop now: drop everything queued and say what was playing and how far it got."""
        head = self._queue[0] if self._queue else None
        if head is not None:
            result = PlayoutCleared(head.response_id, head.item_id, head.content_index, head.played_ms())
        elif self._started:
            rid, (item_id, index) = next(iter(self._started.items()))
            result = PlayoutCleared(rid, item_id, index, self._queued.get((item_id, index), 0) * 1000 / RATE)
        else:
            result = PlayoutCleared()
        self._queue.clear()
        self._started.clear()
        self._finished.clear()
        for resampler, _ in self._resamplers.values():
            resampler.flush()
        self._resamplers.clear()
        self._parts.clear()
        return result
