"""Audio files for the REST audio routes: decoding uploads and encoding answers, with PyAV.

`decode(data, rate)` turns an uploaded file (wav, mp3, flac, ogg/opus, m4a, webm, ... anything
FFmpeg reads) into int16 mono samples at `rate`.  `StreamEncoder(fmt, rate)` turns int16 mono
samples into a file of one of the hosted API's speech formats, piece by piece, so a streamed
answer can send each piece as soon as it is encoded: `feed(pcm) -> bytes`, `finish() -> bytes`.

`pcm` is the raw samples; `wav` is a RIFF header then the samples (a streamed WAV cannot know
its length in advance, so its sizes say 0xFFFFFFFF, as the hosted API's streamed WAV does);
mp3, opus (in Ogg), aac (ADTS) and flac are FFmpeg's encoders through PyAV.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["SPEECH_FORMATS", "CONTENT_TYPES", "AudioDecodeError", "StreamEncoder", "decode", "encode"]


class AudioDecodeError(ValueError):
    """The upload is not audio FFmpeg can read."""


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    rate: int | None  # the encoder's own rate, when it needs one (opus: 48 kHz)
    bit_rate: int | None = None
    options: dict[str, str] | None = None  # the muxer's options


_CODECS = {
    "mp3": _Codec("mp3", "libmp3lame", None, 64_000),
    "opus": _Codec("ogg", "libopus", 48000, 32_000, {"page_duration": "100000"}),  # an Ogg page per 100 ms, not 1 s
    "aac": _Codec("adts", "aac", None, 64_000),
    "flac": _Codec("flac", "flac", None),
}
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


def decode(data: bytes, rate: int) -> np.ndarray:
    """An audio file's samples as int16 mono at `rate` (all channels mixed down)."""
    import av

    out: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for part in resampler.resample(frame):
                    out.append(part.to_ndarray().reshape(-1))
            for part in resampler.resample(None):
                out.append(part.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise AudioDecodeError(f"the audio file could not be decoded ({exc})") from None
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def _wav_header(rate: int, nbytes: int | None) -> bytes:
    data = 0xFFFFFFFF if nbytes is None else nbytes
    riff = 0xFFFFFFFF if nbytes is None else 36 + nbytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data))


class _Sink(io.RawIOBase):
    """A write-only file that hands back what was written since the last `take()`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


class StreamEncoder:
    """int16 mono at `rate` in, pieces of a `fmt` file out (see the module docstring)."""

    def __init__(self, fmt: str, rate: int, *, streamed: bool = True) -> None:
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unknown audio format {fmt!r}")
        self.fmt, self.rate, self.streamed = fmt, rate, streamed
        self._started = False
        self._pending: list[bytes] = []  # a WAV that is not streamed waits for its length
        self._codec = _CODECS.get(fmt)
        if self._codec is not None:
            self._open_av(self._codec)

    def _open_av(self, spec: _Codec) -> None:
        import av

        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container, options=spec.options or {})
        stream = self._container.add_stream(spec.codec, rate=spec.rate or self.rate)
        stream.layout = "mono"
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        self._stream = stream
        self._resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                            rate=spec.rate or self.rate)
        self._pts = 0

    def feed(self, pcm: np.ndarray) -> bytes:
        pcm = np.asarray(pcm, dtype=np.int16)
        if self._codec is None:
            raw = pcm.astype("<i2", copy=False).tobytes()
            if self.fmt == "wav" and not self.streamed:
                self._pending.append(raw)
                return b""
            if self.fmt == "wav" and not self._started:
                self._started = True
                return _wav_header(self.rate, None) + raw
            return raw
        if pcm.size:
            self._encode(pcm)
        return self._sink.take()

    def _encode(self, pcm: np.ndarray | None) -> None:
        import av

        frames = []
        if pcm is not None:
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frames = self._resampler.resample(frame)
        else:
            frames = self._resampler.resample(None)
        for out in frames:
            out.pts = self._pts
            self._pts += out.samples
            for packet in self._stream.encode(out):
                self._container.mux(packet)

    def finish(self) -> bytes:
        """The file's last bytes (an encoder's buffered frames, a container's trailer)."""
        if self._codec is None:
            if self.fmt == "wav" and not self.streamed:
                body = b"".join(self._pending)
                return _wav_header(self.rate, len(body)) + body
            if self.fmt == "wav" and not self._started:
                self._started = True
                return _wav_header(self.rate, None)
            return b""
        self._encode(None)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()


def encode(pcm: np.ndarray, rate: int, fmt: str) -> bytes:
    """A whole file at once (a WAV with its real length)."""
    encoder = StreamEncoder(fmt, rate, streamed=False)
    return encoder.feed(pcm) + encoder.finish()
