"""Test speech: real (synthetic) spoken sentences with known boundaries, made with flite.

    speech = make_speech("turn off the lights in the kitchen", rate=16000)
    speech.pcm                # int16 mono: lead_ms of digital silence, the sentence, tail_ms
    speech.speech_start_ms    # where the sentence really starts and ends in `pcm`
    for chunk in speech.chunks(20): ...   # PCM16 little-endian bytes, 20 ms each

flite's `slt` voice is the one pocketsphinx understands best (see the field notes).  flite
comes from Debian (`apt-get install -y flite`); it takes 10-30 ms per sentence, and its WAV for
each (text, voice) is cached in a temporary directory, so only the first test run pays.

The boundaries are the first and last sample whose magnitude exceeds `SPEECH_THRESHOLD`
(-50 dBFS).  flite starts and ends its output with up to ~200 ms of very quiet breath noise
(|x| < 50); that counts as silence, as any listener (and any VAD) would count it.

Digital silence says nothing about robustness to noise: tests about noise use `add_noise`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parley.audio.formats import PCMA, PCMU
from parley.audio.resample import resample

__all__ = ["SPEECH_THRESHOLD", "FliteMissing", "Speech", "add_noise", "flite_voices", "make_speech", "silence",
           "speech_bounds", "to_g711"]

SPEECH_THRESHOLD = 100  # |sample| above this (-50 dBFS) is speech
_CACHE_DIR = Path(tempfile.gettempdir()) / "parley-test-speech"


class FliteMissing(RuntimeError):
    """The `flite` command is not installed."""


@dataclass(frozen=True)
class Speech:
    pcm: np.ndarray  # int16 mono at `rate`, padded with digital silence
    rate: int
    text: str
    speech_start_ms: float  # first sample above SPEECH_THRESHOLD
    speech_end_ms: float  # just after the last sample above SPEECH_THRESHOLD

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.pcm.size / self.rate

    def pcm_bytes(self) -> bytes:
        """The whole clip as PCM16 little-endian bytes."""
        return self.pcm.astype("<i2", copy=False).tobytes()

    def chunks(self, ms: float) -> Iterator[bytes]:
        """The clip as consecutive PCM16 chunks of `ms` milliseconds (the last may be shorter),
        the way a real-time client would send it."""
        step = round(self.rate * ms / 1000)
        if step <= 0:
            raise ValueError(f"chunk of {ms} ms is shorter than one sample at {self.rate} Hz")
        data = self.pcm_bytes()
        for start in range(0, len(data), 2 * step):
            yield data[start : start + 2 * step]


def silence(ms: float, rate: int = 24000) -> np.ndarray:
    """`ms` milliseconds of digital silence (int16 zeros)."""
    return np.zeros(round(rate * ms / 1000), dtype=np.int16)


def speech_bounds(pcm: np.ndarray, rate: int, threshold: int = SPEECH_THRESHOLD) -> tuple[float, float]:
    """(start_ms, end_ms) of the samples above `threshold`: the first one's start and the last
    one's end.  Raises ValueError if there is none."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    if loud.size == 0:
        raise ValueError("no sample above the speech threshold")
    return 1000.0 * loud[0] / rate, 1000.0 * (loud[-1] + 1) / rate


def add_noise(pcm: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """`pcm` plus white Gaussian noise at `snr_db` below the speech's power.

    The speech's power is the mean square over the span between its boundaries (the padding
    would otherwise dilute it); the noise covers the whole clip, silence included.  Clipped to
    int16; the same seed gives the same noise.
    """
    x = np.asarray(pcm, dtype=np.int16).astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > SPEECH_THRESHOLD)
    if loud.size == 0:
        raise ValueError("no speech to measure the noise against")
    power = np.mean(x[loud[0] : loud[-1] + 1] ** 2)
    sigma = np.sqrt(power / 10 ** (snr_db / 10))
    noise = np.random.default_rng(seed).normal(0.0, sigma, x.size)
    return np.clip(np.rint(x + noise), -32768, 32767).astype(np.int16)


_G711 = {"ulaw": PCMU, "pcmu": PCMU, "g711_ulaw": PCMU, "alaw": PCMA, "pcma": PCMA, "g711_alaw": PCMA}


def to_g711(pcm24k: np.ndarray, law: str = "ulaw", *, rate: int = 24000) -> bytes:
    """int16 audio at `rate` (the wire's 24 kHz by default) -> G.711 bytes at 8 kHz, as a phone
    bridge would send them.  `law` is "ulaw"/"pcmu"/"g711_ulaw" or "alaw"/"pcma"/"g711_alaw"."""
    fmt = _G711.get(law.lower())
    if fmt is None:
        raise ValueError(f"unknown G.711 law {law!r}; use one of {sorted(_G711)}")
    return fmt.encode(resample(np.asarray(pcm24k), rate, fmt.rate))


def make_speech(text: str, *, voice: str = "slt", lead_ms: float = 500, tail_ms: float = 800,
                rate: int = 24000) -> Speech:
    """`text` spoken by flite's `voice`, at `rate`, with `lead_ms` and `tail_ms` of silence."""
    raw, raw_rate = _flite(text, voice)
    spoken = resample(raw, raw_rate, rate)
    pcm = np.concatenate((silence(lead_ms, rate), spoken, silence(tail_ms, rate)))
    start_ms, end_ms = speech_bounds(pcm, rate)
    return Speech(pcm=pcm, rate=rate, text=text, speech_start_ms=start_ms, speech_end_ms=end_ms)


@functools.lru_cache(maxsize=64)
def _flite(text: str, voice: str) -> tuple[np.ndarray, int]:
    """flite's output for (text, voice) as (int16 samples, rate), cached on disk and in memory."""
    key = hashlib.sha256(f"{voice}\0{text}".encode()).hexdigest()[:24]
    path = _CACHE_DIR / f"{voice}-{key}.wav"
    if not path.exists():
        _synthesize(text, voice, path)
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise RuntimeError(f"flite wrote {wav.getnchannels()} channels of {wav.getsampwidth()} bytes")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        rate = wav.getframerate()
    pcm.flags.writeable = False  # shared by every caller through the cache
    return pcm, rate


def _flite_command() -> str:
    flite = shutil.which("flite")
    if flite is None:
        raise FliteMissing("test speech needs the flite command: apt-get install -y flite")
    return flite


@functools.lru_cache(maxsize=1)
def flite_voices() -> frozenset[str]:
    """The voices built into flite (`flite -lv`)."""
    out = subprocess.run([_flite_command(), "-lv"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(out.split(":", 1)[-1].split())


def _synthesize(text: str, voice: str, path: Path) -> None:
    flite = _flite_command()
    # flite silently falls back to its default voice for names it does not know.
    if voice not in flite_voices() and not voice.endswith(".flitevox"):
        raise ValueError(f"flite has no voice {voice!r}; it has {sorted(flite_voices())}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        result = subprocess.run([flite, "-voice", voice, "-t", text, "-o", tmp],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or os.path.getsize(tmp) <= 44:
            raise RuntimeError(f"flite failed for voice {voice!r}: {result.stderr.strip() or result.returncode}")
        os.replace(tmp, path)  # atomic: parallel test processes never read half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
