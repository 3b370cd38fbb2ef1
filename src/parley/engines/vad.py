"""The voice-activity-detection interface.

VAD inference is small (~50-130 µs per 32 ms window), so it runs in the event loop, right after
the audio arrives; each session gets its own stream (the model keeps state per stream).

An engine may also run many streams' windows in one model call (`BatchVADEngine`): a stream is
then `feed` audio, and `step(streams)` decides the next waiting window of each stream at once.
The runtime's `VadBatcher` (parley.runtime.vad_batch) collects the windows of all sessions that
arrive together and makes one such call for them, which costs far less than one call each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VADStream(Protocol):
    sample_rate: int  # the rate process() expects (16000 for Silero)
    window_samples: int  # samples per decision (512 at 16 kHz for Silero)

    def process(self, pcm: np.ndarray) -> list[float]:
        """int16 mono at `sample_rate`; one speech probability (0..1) per completed window,
        buffering any remainder for the next call."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class VADEngine(Protocol):
    name: str

    def stream(self) -> VADStream:
        """A new stream with its own state, one per session."""
        ...


@runtime_checkable
class BatchVADStream(VADStream, Protocol):
    def feed(self, pcm: np.ndarray) -> int:
        """Buffer int16 audio at `sample_rate` without deciding anything; returns how many whole
        windows now wait for `BatchVADEngine.step`.  `process(pcm)` is `feed` and then one
        `step` per waiting window."""
        ...

    @property
    def waiting(self) -> int:
        """Whole windows buffered and not decided yet."""
        ...


@runtime_checkable
class BatchVADEngine(VADEngine, Protocol):
    def stream(self) -> BatchVADStream: ...

    def step(self, streams: Sequence[BatchVADStream]) -> list[float]:
        """Decide the next waiting window of each stream (distinct streams of this engine, each
        with `waiting` >= 1) in one model call; one probability per stream, in order.  The
        result is the same as each stream deciding its window alone."""
        ...


@runtime_checkable
class MultiRateVADEngine(VADEngine, Protocol):
    """An engine whose model runs natively at several rates (Silero: 16 and 8 kHz): the runtime
    asks for a stream at the wire rate when it is one of them, instead of resampling."""

    rates: tuple[int, ...]

    def stream(self, sample_rate: int | None = None) -> VADStream: ...
