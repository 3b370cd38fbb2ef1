"""An STT engine for any OpenAI-compatible `/v1/audio/transcriptions` server.

speaches, vLLM, whisper.cpp's server, LocalAI and OpenAI itself answer
`POST {base_url}/audio/transcriptions` (a multipart form with the audio file) with the
transcript.  We send the audio as a PCM16 mono WAV file at the rate it arrived (24 kHz PCM,
8 kHz G.711: the runtime does not resample it first, the server does; 16 kHz when no rate is
given) with `model`, and `language` and `prompt` when given, through the official `openai`
client.

Streaming: by default we ask for `stream=true`.  A server that streams answers with server-sent
events -- OpenAI's `transcript.text.delta` ... `transcript.text.done`, vLLM's
`transcription.chunk` objects (`choices[0].delta.content`) or speaches' `{"text": segment}`
events -- and every piece of text becomes a `TranscriptDelta` as it arrives.  A server that
ignores the flag (OpenAI's `whisper-1`, many Whisper servers) answers with plain JSON, which we
take as it is, in the same request.  A server that refuses the flag (HTTP 400/415/422/501) is
asked again without it.  Either way, once such a server has answered plainly, this engine stops
asking it to stream (and `streams_partials` turns False).

The client's own retry (with backoff) covers connection errors, timeouts, 408/409/429 and 5xx
*before* the response starts; a failure after deltas were yielded is reported (retryable)
rather than retried.  Every failure leaves as an `EngineError`.
"""

from __future__ import annotations

import io
import json
import logging
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai

from parley.engines.errors import EngineError
from parley.engines.openai_common import KeylessRepr, make_client, map_error
from parley.engines.stt import Transcript, TranscriptDelta

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# How servers that do not stream transcriptions refuse `stream=true`.
_STREAM_REFUSED_STATUS = frozenset({400, 415, 422, 501})


def wav_bytes(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono int16 samples as a PCM16 WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return out.getvalue()


class OpenAICompatibleSTT(KeylessRepr):
    """STTEngine over `base_url` (e.g. "http://127.0.0.1:8000/v1") transcribing with `model`
    (e.g. "whisper-1", "Systran/faster-whisper-small", "gpt-4o-mini-transcribe").

    `stream=False` never asks the server to stream (one plain request per transcription).
    """

    name = "openai"
    sample_rate = SAMPLE_RATE
    takes_any_rate = True  # the WAV file says its rate; the server resamples

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        stream: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.stream = stream
        # True while we ask the server to stream; False once it has shown it will not.
        self.streams_partials = stream
        self._closed = False
        self._client = make_client(self.base_url, api_key, timeout_s, max_retries)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.close()

    async def transcribe(
        self, pcm: np.ndarray, *, language: str | None = None, prompt: str | None = None,
        sample_rate: int | None = None,
    ) -> AsyncIterator[TranscriptDelta | Transcript]:
        """`pcm` at `sample_rate` (default 16 kHz): the WAV file says its rate and the server
        resamples, so the runtime sends the user's audio as it arrived (`AnyRateSTTEngine`)."""
        if self._closed:
            raise EngineError("the OpenAI-compatible STT engine is closed", code="engine_closed")
        pcm = _check_pcm(pcm)
        rate = sample_rate or SAMPLE_RATE
        seconds = pcm.size / rate
        if pcm.size == 0:  # servers refuse an empty file; there is nothing to hear
            yield Transcript(text="", language=language, audio_seconds=0.0)
            return
        params: dict[str, Any] = {
            "model": self.model,
            "file": ("audio.wav", wav_bytes(pcm, rate), "audio/wav"),
            "response_format": "json",
        }
        if language:
            params["language"] = language
        if prompt:
            params["prompt"] = prompt
        if self.stream:
            try:
                async for event in self._request(params, stream=True, language=language, seconds=seconds):
                    yield event
                return
            except _StreamRefused as refused:
                log.info("%s refused stream=true (HTTP %d); asking without it", self._where(), refused.status)
        async for event in self._request(params, stream=False, language=language, seconds=seconds):
            yield event
        self._stop_streaming()  # it refused to stream and then answered: stop asking

    def _stop_streaming(self) -> None:
        if self.stream:
            log.info("%s does not stream transcripts; sending plain requests from now on", self._where())
        self.stream = self.streams_partials = False

    async def _request(
        self, params: dict[str, Any], *, stream: bool, language: str | None, seconds: float
    ) -> AsyncIterator[TranscriptDelta | Transcript]:
        """One HTTP request: deltas (if the server streams), then the Transcript."""
        started = False
        extra = {"stream": True} if stream else {}
        try:
            create = self._client.audio.transcriptions.with_streaming_response.create
            async with create(**params, **extra) as response:
                content_type = response.headers.get("content-type", "").lower()
                if content_type.startswith("text/event-stream"):
                    sse = await response.parse(to=openai.AsyncStream[dict[str, Any]])
                    reply = _Reply()
                    async for data in sse:
                        if delta := reply.add_event(data):
                            started = True
                            yield TranscriptDelta(delta)
                else:
                    reply = _Reply.from_body(await response.read(), content_type)
                    if stream:  # it ignored stream=true
                        self._stop_streaming()
        except EngineError:
            raise
        except openai.APIStatusError as exc:
            if stream and exc.status_code in _STREAM_REFUSED_STATUS:
                raise _StreamRefused(exc.status_code) from exc
            raise self._error(exc, started=started) from exc
        except Exception as exc:  # CancelledError and GeneratorExit are not Exceptions: they pass
            raise self._error(exc, started=started) from exc
        yield Transcript(
            text=reply.final_text(),
            language=reply.language or language,
            audio_seconds=seconds,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
        )

    def _where(self) -> str:
        return f"STT server {self.base_url} (model {self.model!r})"

    def _error(self, exc: Exception, *, started: bool) -> EngineError:
        """Translate an `openai`, httpx or decoding exception into an `EngineError`."""
        return map_error(exc, where=self._where(), prefix="stt", timeout_s=self.timeout_s, started=started,
                         malformed_code="stt_bad_response")  # fmt: skip


class _StreamRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Reply:
    """What a server said: streamed events folded in one by one, or one plain body."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.text: str | None = None  # the whole text, when the server said it
        self.language: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    @classmethod
    def from_body(cls, body: bytes, content_type: str) -> _Reply:
        reply = cls()
        if "json" in content_type or body.lstrip().startswith(b"{"):
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("text"), str):
                raise ValueError(f"expected a JSON object with a 'text' string, got {str(data)[:200]}")
            reply.text = data["text"]
            reply.take_details(data)
        else:  # response_format "text" answered as text/plain by lenient servers
            reply.text = body.decode("utf-8")
        return reply

    def add_event(self, data: dict[str, Any]) -> str:
        """Fold one SSE event in; return its new text (maybe "")."""
        kind = data.get("type")
        if kind == "transcript.text.delta":
            delta = data.get("delta") or ""
        elif kind == "transcript.text.done":
            self.text = data.get("text") or "".join(self.deltas)
            self.take_details(data)
            return ""
        elif data.get("object") == "transcription.chunk" or "choices" in data:  # vLLM
            choices = data.get("choices") or [{}]
            delta = ((choices[0] or {}).get("delta") or {}).get("content") or ""
            self.take_details(data)
        elif kind is None and isinstance(data.get("text"), str):  # speaches: a whole segment
            delta = data["text"]
            previous = self.deltas[-1] if self.deltas else ""
            if previous and delta and not previous[-1].isspace() and not delta[0].isspace():
                delta = " " + delta  # segments are separate sentences
        else:  # transcript.text.segment and events we do not know
            return ""
        if not isinstance(delta, str):
            raise ValueError(f"a transcript delta that is not a string: {delta!r}")
        if delta:
            self.deltas.append(delta)
        return delta

    def take_details(self, data: dict[str, Any]) -> None:
        language = data.get("language")
        if isinstance(language, str) and language:
            self.language = language
        usage = data.get("usage")
        if isinstance(usage, dict):
            # OpenAI: {"type": "tokens", "input_tokens", "output_tokens"}; vLLM: prompt/completion
            tokens_in = usage.get("input_tokens", usage.get("prompt_tokens"))
            tokens_out = usage.get("output_tokens", usage.get("completion_tokens"))
            if isinstance(tokens_in, int):
                self.input_tokens = tokens_in
            if isinstance(tokens_out, int):
                self.output_tokens = tokens_out

    def final_text(self) -> str:
        text = self.text if self.text is not None else "".join(self.deltas)
        return text.strip()


def _check_pcm(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise EngineError(
            f"expected 1-D int16 samples, got {pcm.dtype} {pcm.shape}",
            code="invalid_audio",
        )
    return pcm
