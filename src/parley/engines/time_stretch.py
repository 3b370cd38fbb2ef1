"""Speaking speed beyond what a TTS engine does natively, by time-stretching that keeps pitch.

The Realtime API's `audio.output.speed` runs from 0.25 to 1.5.  espeak-ng speaks 80-450 words a
minute (0.46x-2.6x) and Kokoro 0.5x-2x, so the slowest speeds are out of their reach: each engine
speaks at the nearest speed it has (`native_speed`) and the rest is made up by stretching that
piece's audio with Rubber Band (through Spotify's `pedalboard`), which keeps the voice's pitch.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import EngineError


def check_speed(speed: float) -> float:
    if not (isinstance(speed, int | float) and not isinstance(speed, bool) and math.isfinite(speed) and speed > 0):
        raise EngineError(f"speed must be a positive number, got {speed!r}", code="invalid_speed")
    return float(speed)


def native_speed(speed: float, lowest: float, highest: float) -> tuple[float, float]:
    """(the engine's own speed, the factor left for `stretch`) for a requested `speed`."""
    speed = check_speed(speed)
    native = max(lowest, min(highest, speed))
    return native, speed / native


def stretch(pcm16: bytes, sample_rate: int, factor: float) -> bytes:
    """PCM16 mono spoken `factor` times as fast (0.5: twice as long), at the same pitch."""
    if abs(factor - 1.0) < 1e-3 or len(pcm16) < 4:
        return pcm16
    import pedalboard

    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
    out = pedalboard.time_stretch(samples[np.newaxis, :], float(sample_rate), float(factor))[0]
    return (np.clip(out, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
