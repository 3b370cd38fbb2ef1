"""The audio formats of the Realtime API wire.

GA sessions name a format with a dict: `{"type": "audio/pcm", "rate": 24000}` (PCM16
little-endian mono; 24 kHz is the only rate the API accepts), `{"type": "audio/pcmu"}` (G.711
µ-law, 8 kHz) or `{"type": "audio/pcma"}` (G.711 A-law, 8 kHz).  The beta API names the same
three `"pcm16"`, `"g711_ulaw"` and `"g711_alaw"`.  `AudioFormat` converts between a format's
bytes and int16 samples at the format's own rate; resampling is `parley.audio.resample`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from parley.audio import g711

__all__ = ["PCM16", "PCMA", "PCMU", "AudioFormat"]

_PCM, _PCMU, _PCMA = "audio/pcm", "audio/pcmu", "audio/pcma"
_G711_RATE = 8000
_PCM_RATES = frozenset({24000})  # what the hosted API accepts for audio/pcm
_BETA_NAMES = {"pcm16": _PCM, "g711_ulaw": _PCMU, "g711_alaw": _PCMA}
_SAMPLE_WIDTH = {_PCM: 2, _PCMU: 1, _PCMA: 1}


def _pcm_decode(data: bytes | bytearray | memoryview) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {raw.size}")
    return raw.view("<i2").astype(np.int16)


def _pcm_encode(pcm: np.ndarray) -> bytes:
    return pcm.astype("<i2", copy=False).tobytes()


_DECODERS: dict[str, Callable[[bytes | bytearray | memoryview], np.ndarray]] = {
    _PCM: _pcm_decode,
    _PCMU: g711.ulaw_decode,
    _PCMA: g711.alaw_decode,
}
_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    _PCM: _pcm_encode,
    _PCMU: g711.ulaw_encode,
    _PCMA: g711.alaw_encode,
}


@dataclass(frozen=True)
class AudioFormat:
    """A wire format: `kind` is the GA type name (`"audio/pcm"`, `"audio/pcmu"`,
    `"audio/pcma"`), `rate` its sample rate in Hz (always 8000 for the G.711 kinds)."""

    kind: str
    rate: int

    def __post_init__(self) -> None:
        if self.kind not in _SAMPLE_WIDTH:
            raise ValueError(f"unknown audio format {self.kind!r}")
        if self.kind != _PCM and self.rate != _G711_RATE:
            raise ValueError(f"{self.kind} is always {_G711_RATE} Hz, got {self.rate}")
        if self.rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.rate}")

    @classmethod
    def from_session(cls, fmt: Mapping[str, Any] | str) -> AudioFormat:
        """Parse a GA format dict (`{"type": "audio/pcm", "rate": 24000}`, `{"type":
        "audio/pcmu"}`, ...) or a beta format name (`"pcm16"`, `"g711_ulaw"`, `"g711_alaw"`).
        Raises ValueError for anything the hosted API would refuse."""
        if isinstance(fmt, str):
            if fmt not in _BETA_NAMES:
                raise ValueError(f"unknown audio format {fmt!r}")
            kind, rate = _BETA_NAMES[fmt], None
        else:
            extra = set(fmt) - {"type", "rate"}
            if extra:
                raise ValueError(f"unknown audio format fields: {sorted(extra)}")
            kind, rate = fmt.get("type"), fmt.get("rate")
        if kind == _PCM:
            rate = 24000 if rate is None else rate
            if rate not in _PCM_RATES:
                raise ValueError(f"audio/pcm supports rates {sorted(_PCM_RATES)}, got {rate!r}")
            return cls(_PCM, rate)
        if kind in (_PCMU, _PCMA):
            if rate is not None and rate != _G711_RATE:
                raise ValueError(f"{kind} is always {_G711_RATE} Hz, got {rate!r}")
            return cls(kind, _G711_RATE)
        raise ValueError(f"unknown audio format {kind!r}")

    def to_session(self) -> dict[str, Any]:
        """The GA format dict."""
        return {"type": self.kind, "rate": self.rate} if self.kind == _PCM else {"type": self.kind}

    @property
    def sample_width(self) -> int:
        """Bytes per sample: 2 for PCM16, 1 for G.711."""
        return _SAMPLE_WIDTH[self.kind]

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.sample_width / 1000

    def duration_ms(self, nbytes: int) -> float:
        """How long `nbytes` of this format play, in milliseconds."""
        return nbytes / self.bytes_per_ms

    def bytes_for_ms(self, ms: float) -> int:
        """The number of bytes in `ms` milliseconds, rounded down to a whole sample."""
        return int(ms * self.rate // 1000) * self.sample_width

    def decode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Wire bytes -> int16 samples at `self.rate`."""
        return _DECODERS[self.kind](data)

    def encode(self, pcm: np.ndarray) -> bytes:
        """int16 samples at `self.rate` -> wire bytes."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {pcm.dtype}")
        return _ENCODERS[self.kind](pcm)


PCM16 = AudioFormat(_PCM, 24000)
PCMU = AudioFormat(_PCMU, _G711_RATE)
PCMA = AudioFormat(_PCMA, _G711_RATE)
