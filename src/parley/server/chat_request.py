"""A `/v1/chat/completions` request checked and turned into the LLM engine's `ChatRequest`.

`input_audio` content parts (base64 wav or mp3) are decoded (PyAV) and transcribed by the
default STT engine, and the model sees the transcript as text; an assistant message that names
an earlier answer's audio (`"audio": {"id": ...}`) gets that answer's transcript as its content;
`developer` messages become `system` ones (chat templates and most servers know only those).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from ..audio.codec import AudioDecodeError
from ..core.chat import ChatRequest
from ..engines.stt import STTEngine, Transcript
from .audio_common import decode_upload
from .audio_store import AudioStore

OUTPUT_FORMATS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus", "aac": "aac", "pcm16": "pcm"}
INPUT_FORMATS = ("wav", "mp3")
# accepted; those the engines cannot honour (logprobs, n > 1, ...) are refused or ignored below
KNOWN = {"model", "messages", "modalities", "audio", "stream", "stream_options", "tools", "tool_choice",
         "parallel_tool_calls", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
         "user", "metadata", "store", "frequency_penalty", "presence_penalty", "logit_bias", "response_format",
         "service_tier", "reasoning_effort", "prompt_cache_key", "safety_identifier", "verbosity", "logprobs",
         "top_logprobs"}


class RequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = "invalid_value",
                 status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


@dataclass
class Prepared:
    request: ChatRequest
    model: str
    stream: bool
    include_usage: bool
    audio_format: str | None  # the codec/format name for audio out, None for text only
    voice: str | None
    input_audio_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def check(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", code="invalid_json")
    if unknown := sorted(set(body) - KNOWN):
        raise RequestError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                           code="unknown_parameter")
    for name in ("model", "messages"):
        if name not in body:
            raise RequestError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(body["model"], str) or not body["model"]:
        raise RequestError("Invalid type for 'model': expected a string.", param="model", code="invalid_type")
    if not isinstance(body["messages"], list) or not body["messages"]:
        raise RequestError("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                           param="messages", code="empty_array")
    if body.get("n", 1) != 1:
        raise RequestError("Parley answers one choice per request: 'n' must be 1.", param="n",
                           code="unsupported_value")
    if body.get("logprobs"):
        raise RequestError("logprobs are not supported by Parley's LLM engines.", param="logprobs",
                           code="unsupported_value")
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or any(m not in ("text", "audio") for m in modalities):
        raise RequestError("Invalid 'modalities': expected 'text' and/or 'audio'.", param="modalities")
    return body


def output_audio(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(format, voice) of the audio answer, or (None, None) when only text is asked for."""
    if "audio" not in (body.get("modalities") or ["text"]):
        return None, None
    audio = body.get("audio")
    if not isinstance(audio, dict):
        raise RequestError("The 'audio' parameter (voice and format) is required when modalities includes 'audio'.",
                           param="audio", code="missing_required_parameter")
    fmt, voice = audio.get("format"), audio.get("voice")
    if fmt not in OUTPUT_FORMATS:
        raise RequestError(f"Invalid value: '{fmt}'. Supported values are: {', '.join(map(repr, OUTPUT_FORMATS))}.",
                           param="audio.format")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice:
        raise RequestError("Missing required parameter: 'audio.voice'.", param="audio.voice",
                           code="missing_required_parameter")
    if body.get("stream") and fmt != "pcm16":
        raise RequestError(f"Audio format '{fmt}' is not supported with stream=true; use 'pcm16'.",
                           param="audio.format", code="unsupported_value")
    return OUTPUT_FORMATS[fmt], voice


async def _transcribe(part: dict[str, Any], stt: STTEngine | None, param: str) -> tuple[str, float]:
    spec = part.get("input_audio")
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise RequestError("Invalid 'input_audio': expected {\"data\": <base64>, \"format\": \"wav\"|\"mp3\"}.",
                           param=param)
    if spec.get("format") not in INPUT_FORMATS:
        raise RequestError(f"Invalid value: '{spec.get('format')}'. Supported values are: 'wav' and 'mp3'.",
                           param=f"{param}.input_audio.format")
    if stt is None:
        raise RequestError("No speech-to-text engine is available to read input_audio (see /readyz).",
                           code="stt_unavailable", status=503)
    try:
        pcm = await decode_upload(base64.b64decode(spec["data"], validate=True), stt.sample_rate)
    except (binascii.Error, ValueError) as exc:
        if not isinstance(exc, AudioDecodeError):
            exc = AudioDecodeError("the data is not valid base64")
        raise RequestError(f"The input audio could not be decoded: {exc}", param=f"{param}.input_audio.data") from None
    final = Transcript("")
    async for event in stt.transcribe(pcm):
        if isinstance(event, Transcript):
            final = event
    return final.text.strip(), pcm.size / stt.sample_rate


async def messages(raw: list[Any], *, stt: STTEngine | None, store: AudioStore, now: float) -> tuple[list[dict[str, Any]], float]:
    """The engine's messages, and the seconds of input audio they held."""
    out: list[dict[str, Any]] = []
    seconds = 0.0
    for i, message in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant",
                                                                         "tool", "function"):
            raise RequestError(f"Invalid '{param}': expected a message with a role.", param=param)
        msg = {k: v for k, v in message.items() if k not in ("audio", "name") or message["role"] == "function"}
        if msg["role"] == "developer":
            msg["role"] = "system"
        content = message.get("content")
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "input_audio":
                    text, s = await _transcribe(part, stt, f"{param}.content[{j}]")
                    seconds += s
                    parts.append({"type": "text", "text": text})
                else:
                    parts.append(part)
            msg["content"] = ("\n".join(p.get("text", "") for p in parts)
                              if all(isinstance(p, dict) and p.get("type") == "text" for p in parts) else parts)
        ref = message.get("audio")
        if message["role"] == "assistant" and ref is not None:
            audio_id = ref.get("id") if isinstance(ref, dict) else None
            transcript = store.get(audio_id, now=now) if isinstance(audio_id, str) else None
            if transcript is None:
                raise RequestError(f"Audio with id '{audio_id}' was not found or has expired.",
                                   param=f"{param}.audio.id", code="audio_not_found")
            if not msg.get("content"):
                msg["content"] = transcript
        out.append(msg)
    return out, seconds


async def prepare(body: Any, *, stt: STTEngine | None, store: AudioStore, now: float) -> Prepared:
    body = check(body)
    fmt, voice = output_audio(body)
    msgs, seconds = await messages(body["messages"], stt=stt, store=store, now=now)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request = ChatRequest(messages=msgs, tools=list(body.get("tools") or []), tool_choice=body.get("tool_choice"),
                          max_tokens=max_tokens if isinstance(max_tokens, int) else None,
                          temperature=body.get("temperature"), model=body["model"])
    options = body.get("stream_options") or {}
    return Prepared(request=request, model=body["model"], stream=bool(body.get("stream")),
                    include_usage=bool(options.get("include_usage")) if isinstance(options, dict) else False,
                    audio_format=fmt, voice=voice, input_audio_seconds=seconds)
