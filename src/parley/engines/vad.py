"""The voice-activity-detection interface.

VAD inference is tiny (~100 µs per 32 ms window), so it is synchronous and runs inline, right
after the audio arrives; each session gets its own stream (the model keeps state per stream).
"""

from __future__ import annotations

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
