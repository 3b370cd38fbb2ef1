"""Media tracks for a session (WebRTC, SIP): microphone audio in, response audio out.

A transport that carries audio as media, not as JSON, gives the runner a `Media`: a source of
microphone audio (mono PCM16 at 48 kHz, the WebRTC rate) and a `Playout` that its outgoing
track drains.  The runner converts the microphone to the session's input format, so the core
hears WebRTC audio exactly as it hears `input_audio_buffer.append`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..audio.formats import AudioFormat
from ..audio.resample import StreamResampler
from .playout import RATE, Playout


class MicrophoneSource(Protocol):
    async def read(self) -> np.ndarray | None:
        """The next chunk of microphone audio (mono int16 at 48 kHz); None once the track ended."""
        ...


class Media:
    def __init__(self, source: MicrophoneSource, playout: Playout) -> None:
        self.source = source
        self.playout = playout


class MicrophoneConverter:
    """48 kHz mono PCM16 -> bytes in the session's current input format (which may change)."""

    def __init__(self) -> None:
        self._wire: AudioFormat | None = None
        self._resampler: StreamResampler | None = None

    def convert(self, pcm: np.ndarray, session_format: dict[str, Any]) -> bytes:
        wire = AudioFormat.from_session(session_format)
        if wire != self._wire or self._resampler is None:
            self._wire, self._resampler = wire, StreamResampler(RATE, wire.rate)
        return wire.encode(self._resampler.push(pcm))


async def pump_microphone(source: MicrophoneSource, session_format: Callable[[], dict[str, Any]],
                          deliver: Callable[[bytes], Any]) -> None:
    """Feed the microphone to the session until the track ends (`deliver` may block: back-pressure)."""
    converter = MicrophoneConverter()
    while True:
        pcm = await source.read()
        if pcm is None:
            return
        audio = converter.convert(pcm, session_format())
        if audio:
            await deliver(audio)
