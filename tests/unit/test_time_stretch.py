"""Time-stretching for speeds beyond an engine's own (engines/time_stretch.py)."""

from __future__ import annotations

import numpy as np
import pytest

from parley.engines.errors import EngineError
from parley.engines.time_stretch import native_speed, stretch

RATE = 24000


def tone(seconds: float, hz: float) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (8000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def peak_hz(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * RATE / len(x))


@pytest.mark.parametrize("factor", [0.25, 0.5, 1.5])
def test_stretch_changes_length_not_pitch(factor: float) -> None:
    out = stretch(tone(1.0, 220.0), RATE, factor)
    assert len(out) % 2 == 0
    assert len(out) / 2 / RATE == pytest.approx(1.0 / factor, rel=0.02)
    assert peak_hz(out) == pytest.approx(220.0, abs=3.0)


def test_factor_one_is_untouched() -> None:
    pcm = tone(0.2, 440.0)
    assert stretch(pcm, RATE, 1.0) is pcm


def test_native_speed_splits_what_the_engine_cannot_do() -> None:
    assert native_speed(1.0, 0.5, 2.0) == (1.0, 1.0)
    assert native_speed(0.25, 0.5, 2.0) == (0.5, 0.5)
    for bad in (0, -1, float("nan"), True):
        with pytest.raises(EngineError):
            native_speed(bad, 0.5, 2.0)
