"""The text-to-speech engine interface.

A TTS engine turns one piece of text (typically a sentence from the response text chunker)
into a stream of PCM16 mono little-endian chunks at the engine's own `sample_rate`; the runtime
resamples and encodes for the client.  Engines raise only `EngineError`.

Clients ask for one of OpenAI's voice names; `VoiceMap` turns it into a voice the engine
knows.  Each engine ships defaults for all ten names, and settings can override any of them.
Names outside the map pass through unchanged, so a client (or a setting) may name an engine's
native voice directly; the engine raises `EngineError` if it does not know it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


@dataclass(frozen=True)
class VoiceMap:
    """OpenAI voice name -> engine voice.  `defaults` must cover all of `OPENAI_VOICES`;
    `overrides` (from settings) win over them and may add names of their own."""

    defaults: Mapping[str, str]
    overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [v for v in OPENAI_VOICES if v not in self.defaults]
        if missing:
            raise ValueError(f"voice map has no default for {missing}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def resolve(self, voice: str) -> str:
        """The engine voice for `voice`; unknown names are returned unchanged."""
        if voice in self.overrides:
            return self.overrides[voice]
        return self.defaults.get(voice, voice)

    def with_overrides(self, overrides: Mapping[str, str]) -> VoiceMap:
        """A copy whose overrides are these on top of the current ones."""
        return VoiceMap(self.defaults, {**self.overrides, **overrides})


def primary_language(tag: str | None) -> str | None:
    """"pt-BR" -> "pt", "en_US" -> "en", "" -> None."""
    if not tag:
        return None
    return tag.replace("_", "-").split("-")[0].lower() or None


@runtime_checkable
class TTSEngine(Protocol):
    """One method does the work; `aclose` releases processes, connections or model memory."""

    name: str
    sample_rate: int

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0,
                   language: str | None = None) -> AsyncIterator[bytes]:
        """Stream `text` spoken in `voice` (an OpenAI voice name or an engine-native one) as
        PCM16 mono little-endian chunks at `sample_rate`, each a whole number of samples.
        `speed` is the Realtime API's speaking-rate factor (0.25-1.5; 1.0 is normal).
        `language` (ISO 639-1 such as "es", or a tag such as "pt-BR"; None: the voice's own) is
        the language of `text`: the engine speaks it in that language, with the voice's
        character where it has one (see each engine).
        Cancelling the consuming task, or closing the iterator, must stop the work."""
        ...

    async def aclose(self) -> None: ...
