"""A TTS engine for any OpenAI-compatible `/v1/audio/speech` server.

speaches, Kokoro-FastAPI, openedai-speech and OpenAI itself answer
`POST {base_url}/audio/speech` with the audio as the response body.  We always ask for
`response_format="pcm"` (raw PCM16 mono little-endian at 24 kHz, OpenAI's definition) and
stream the body through the official `openai` client as it arrives, so the first audio reaches
the client while the server is still synthesising the rest.

OpenAI voice names are sent unchanged by default (the servers above either know them or map
them themselves); `voice_overrides` (the `PARLEY_TTS_VOICE_MAP` setting) can send, say,
`alloy=af_heart` to a Kokoro server.

The client's own retry (with backoff) covers connection errors, timeouts, 408/409/429 and 5xx
*before* the body starts; once audio flows, a failure is reported (retryable) rather than
retried, since the consumer has already played part of the sentence.  Closing the iterator or
cancelling its consumer leaves the `async with` around the response, which closes the HTTP
stream, so the server can stop synthesising.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

from parley.engines.errors import EngineError
from parley.engines.openai_common import KeylessRepr, make_client, map_error
from parley.engines.tts import OPENAI_VOICES, VoiceMap

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000  # what OpenAI's "pcm" format means
_SPEED_MIN, _SPEED_MAX = 0.25, 4.0  # what /v1/audio/speech accepts
# Content types that show the server ignored response_format="pcm" and sent an encoded file.
_ENCODED_TYPES = ("audio/mpeg", "audio/mp3", "audio/ogg", "audio/opus", "audio/aac", "audio/flac",
                  "audio/wav", "audio/x-wav", "audio/wave", "application/json", "text/")  # fmt: skip


class OpenAICompatibleTTS(KeylessRepr):
    """TTSEngine over `base_url` (e.g. "http://127.0.0.1:8000/v1") speaking with `model`
    (e.g. "tts-1", "kokoro", "speaches-ai/Kokoro-82M-v1.0-ONNX").

    `chunk_ms` caps the size of the yielded chunks (bigger network reads are split); smaller
    reads are yielded as they arrive, cut to whole samples.
    """

    name = "openai"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        voice_overrides: Mapping[str, str] | None = None,
        chunk_ms: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.voices = VoiceMap({v: v for v in OPENAI_VOICES}, voice_overrides or {})
        self._chunk_bytes = max(1, SAMPLE_RATE * chunk_ms // 1000) * 2
        self._closed = False
        self._client = make_client(self.base_url, api_key, timeout_s, max_retries)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.close()

    async def synthesize(self, text: str, *, voice: str, speed: float = 1.0,
                         language: str | None = None) -> AsyncIterator[bytes]:
        """`language` is not sent: /v1/audio/speech has no such field (its voices speak the text's
        language)."""
        if self._closed:
            raise EngineError("the OpenAI-compatible TTS engine is closed", code="engine_closed")
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            raise EngineError(f"speed must be a positive number, got {speed!r}", code="invalid_speed")
        if not text.strip():
            return  # the API refuses empty input; there is nothing to say
        params: dict[str, Any] = {
            "model": self.model,
            "voice": self.voices.resolve(voice),
            "input": text,
            "response_format": "pcm",
            "speed": max(_SPEED_MIN, min(_SPEED_MAX, float(speed))),
        }
        started = False
        try:
            async with self._client.audio.speech.with_streaming_response.create(**params) as response:
                self._check_content_type(response.headers.get("content-type", ""))
                started = True
                carry = b""
                async for data in response.iter_bytes():
                    data, carry = _split_whole_samples(carry + data)
                    for start in range(0, len(data), self._chunk_bytes):
                        yield data[start : start + self._chunk_bytes]
                if carry:
                    log.debug("%s sent an odd number of PCM bytes; dropped the last one", self._where())
        except EngineError:
            raise
        except Exception as exc:  # CancelledError and GeneratorExit are not Exceptions: they pass
            raise self._error(exc, started=started) from exc

    def _check_content_type(self, content_type: str) -> None:
        if content_type.lower().startswith(_ENCODED_TYPES):
            raise EngineError(
                f"{self._where()} answered {content_type!r} to response_format='pcm'; "
                "it must support raw PCM16 24 kHz output",
                code="tts_bad_format",
            )

    def _where(self) -> str:
        return f"TTS server {self.base_url} (model {self.model!r})"

    def _error(self, exc: Exception, *, started: bool) -> EngineError:
        """Translate an `openai` or httpx exception into an `EngineError`."""
        return map_error(exc, where=self._where(), prefix="tts", timeout_s=self.timeout_s, started=started)


def _split_whole_samples(data: bytes) -> tuple[bytes, bytes]:
    """(the whole 16-bit samples in `data`, the odd byte left over)."""
    cut = len(data) - len(data) % 2
    return data[:cut], data[cut:]
