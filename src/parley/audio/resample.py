"""Resampling of mono int16 audio with libsoxr (the `soxr` package).

`resample` converts a whole buffer; `StreamResampler` converts a stream pushed in chunks of
any size, keeping the filter state between them, so chunk boundaries leave no clicks.  Both
give int16 out for int16 in, with soxr's "HQ" quality by default (`StreamResampler` takes
another, e.g. "QQ" in front of the VAD).  Equal rates pass samples through.  SIP's 48 <-> 8 kHz
audio uses its own FIR instead (`transports/rtp.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["StreamResampler", "resample"]

_QUALITY = "HQ"
_EMPTY = np.zeros(0, dtype=np.int16)


def _check(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {pcm.dtype}")
    if pcm.ndim != 1:
        raise ValueError(f"expected mono (1-D) samples, got shape {pcm.shape}")
    return pcm


def _check_rates(from_rate: int, to_rate: int) -> None:
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole mono int16 buffer; the result has about `len * to_rate / from_rate`
    samples."""
    import soxr

    pcm = _check(pcm)
    _check_rates(from_rate, to_rate)
    if from_rate == to_rate or pcm.size == 0:
        return pcm.copy()
    return soxr.resample(pcm, from_rate, to_rate, quality=_QUALITY)


class StreamResampler:
    """Resample a mono int16 stream chunk by chunk.

    `push` returns whatever output is ready (possibly nothing: the filter has a delay of a few
    milliseconds); `flush` drains the filter at the end of the stream and resets the state, so
    the same object can then take the next stream.
    """

    def __init__(self, from_rate: int, to_rate: int, *, quality: str = _QUALITY) -> None:
        """`quality` is soxr's: the default "HQ" for what people hear; "QQ" (cubic, no filter
        delay) where latency matters more than fidelity, as in front of the VAD."""
        _check_rates(from_rate, to_rate)
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream: Any = None
        if from_rate != to_rate:
            import soxr

            self._stream = soxr.ResampleStream(
                from_rate, to_rate, num_channels=1, dtype="int16", quality=quality
            )

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = _check(chunk)
        if self._stream is None:
            return chunk.copy()
        if chunk.size == 0:
            return _EMPTY.copy()
        return self._stream.resample_chunk(chunk, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return _EMPTY.copy()
        out = self._stream.resample_chunk(_EMPTY, last=True)
        self._stream.clear()
        return out
