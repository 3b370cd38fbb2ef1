"""The speech-to-text engine interface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TranscriptDelta:
    text: str


@dataclass(frozen=True)
class Transcript:
    """The whole transcript (always the last item of a transcription stream)."""

    text: str
    language: str | None = None
    audio_seconds: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None


@runtime_checkable
class STTEngine(Protocol):
    name: str
    sample_rate: int  # the rate transcribe() expects
    streams_partials: bool  # True if it can emit TranscriptDelta before the end

    def transcribe(self, pcm: np.ndarray, *, language: str | None = None,
                   prompt: str | None = None) -> AsyncIterator[TranscriptDelta | Transcript]:
        """int16 mono at `sample_rate`: zero or more deltas, then exactly one Transcript.
        Cancelling the consumer stops work."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class AnyRateSTTEngine(STTEngine, Protocol):
    """An engine that takes audio at any rate (a server that decodes a WAV file resamples it
    itself): when `takes_any_rate` is true, the runtime sends the user's audio as it arrived,
    without resampling it first."""

    takes_any_rate: bool

    def transcribe(self, pcm: np.ndarray, *, language: str | None = None, prompt: str | None = None,
                   sample_rate: int | None = None) -> AsyncIterator[TranscriptDelta | Transcript]:
        """int16 mono at `sample_rate` (default: the engine's `sample_rate`)."""
        ...
