"""`POST /v1/chat/completions` over the LLM engine the realtime sessions use, with audio out
(`modalities: ["text", "audio"]`) spoken by the TTS engine and audio in (`input_audio` parts)
read by the STT engine (chat_request.py).

As the hosted API does, an audio answer carries its text as `message.audio.transcript` (and
`content` is null); streamed, the text arrives as `delta.audio.transcript` pieces at once and
the audio as `delta.audio.data` (base64 PCM16 24 kHz) as each sentence is spoken, then a last
audio delta with `expires_at`.  Tool calls pass through as the engine streams them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..audio.codec import encode
from ..core.context import OUTPUT_AUDIO_TOKENS_PER_S, INPUT_AUDIO_TOKENS_PER_S, estimate_tokens, message_tokens
from ..engines.errors import EngineError
from ..core.chat import Usage
from ..engines.llm import Finished, LLMEngine, TextDelta, ToolCallDelta
from ..runtime.chunker import SentenceChunker
from .audio_common import (OUT_RATE, api_error, app_state, count_audio, count_request, engine_error,
                           observe_first_audio, require_api_key, speak, speech_voice)
from .audio_store import AudioStore
from .chat_request import Prepared, RequestError, prepare

router = APIRouter()
ROUTE = "chat.completions"


def _store(request: Request) -> AudioStore:
    store = getattr(request.app.state, "chat_audio", None)
    if store is None:
        store = request.app.state.chat_audio = AudioStore()
    return store


@dataclass
class _Answer:
    text: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish: str = "stop"
    usage: Usage | None = None
    audio_samples: int = 0

    def add_call(self, delta: ToolCallDelta) -> dict[str, Any]:
        """Fold a tool-call delta in; returns the chunk's `tool_calls` entry."""
        call = self.calls.get(delta.index)
        entry: dict[str, Any] = {"index": delta.index, "function": {"arguments": delta.arguments}}
        if call is None:
            call = self.calls[delta.index] = {"id": delta.id or "call_" + uuid.uuid4().hex[:24], "type": "function",
                                              "function": {"name": delta.name or "", "arguments": ""}}
            entry.update(id=call["id"], type="function")
            entry["function"]["name"] = call["function"]["name"]
        call["function"]["arguments"] += delta.arguments
        return entry


def _usage(prep: Prepared, answer: _Answer) -> dict[str, Any]:
    text_in = answer.usage.input_tokens if answer.usage else sum(message_tokens(m) for m in prep.request.messages)
    text_out = answer.usage.output_tokens if answer.usage else estimate_tokens(answer.text)
    audio_in = int(prep.input_audio_seconds * INPUT_AUDIO_TOKENS_PER_S)
    audio_out = int(answer.audio_samples / OUT_RATE * OUTPUT_AUDIO_TOKENS_PER_S)
    prompt, completion = text_in + audio_in, text_out + audio_out
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": answer.usage.cached_tokens if answer.usage else 0,
                                      "audio_tokens": audio_in},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": audio_out,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    began = time.perf_counter()
    answer = await _chat(request, began)
    count_request(ROUTE, answer.status_code)
    return answer


async def _chat(request: Request, began: float) -> Any:
    if (denied := require_api_key(request)) is not None:
        return denied
    state = app_state(request)
    engines = state.engines
    if engines is None:
        return api_error(503, "The server is starting.", kind="server_error", code="not_ready")
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        return api_error(400, f"We could not parse the JSON body of your request. ({exc})", code="invalid_json")
    store = _store(request)
    try:
        prep = await prepare(body, stt=engines.speech.stt_for(None), store=store, now=state.clock())
    except RequestError as err:
        return api_error(err.status, err.message, param=err.param, code=err.code,
                         kind="invalid_request_error" if err.status < 500 else "server_error")
    except EngineError as err:
        return engine_error(err)
    if prep.input_audio_seconds:
        count_audio(ROUTE, "in", prep.input_audio_seconds)
    if prep.audio_format and engines.tts is None:
        return api_error(503, "No text-to-speech engine is available for audio output (see /readyz).",
                         kind="server_error", code="tts_unavailable")
    events = engines.llm.stream(prep.request)
    try:  # the first event before the answer starts: an engine that refuses is an HTTP error
        first = await anext(events, None)
    except EngineError as err:
        return engine_error(err)
    meta = {"id": "chatcmpl-" + uuid.uuid4().hex[:29], "created": int(state.clock()), "model": prep.model,
            "system_fingerprint": None, "service_tier": "default"}
    if prep.stream:
        chunks = _Stream(prep, meta, engines.tts, store, state.clock, began).run(first, events)
        return StreamingResponse(chunks, media_type="text/event-stream")
    try:
        return JSONResponse(await _whole(prep, meta, first, events, engines.tts, store, state.clock()))
    except EngineError as err:
        return engine_error(err)


async def _collect(answer: _Answer, first: Any, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Every engine event, folded into `answer` as it passes."""
    event = first
    while event is not None:
        if isinstance(event, TextDelta):
            answer.text += event.text
        elif isinstance(event, Finished):
            answer.finish, answer.usage = event.reason, event.usage
        yield event
        event = await anext(events, None)


async def _whole(prep: Prepared, meta: dict[str, Any], first: Any, events: AsyncIterator[Any], tts: Any,
                 store: AudioStore, now: float) -> dict[str, Any]:
    answer = _Answer()
    async for event in _collect(answer, first, events):
        if isinstance(event, ToolCallDelta):
            answer.add_call(event)
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None, "refusal": None, "annotations": []}
    if answer.calls:
        message["tool_calls"] = [answer.calls[i] for i in sorted(answer.calls)]
    if prep.audio_format and answer.text.strip():
        pcm = [p async for p in speak(tts, answer.text, voice=speech_voice(prep.voice) or "alloy")]
        samples = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
        answer.audio_samples = samples.size
        count_audio(ROUTE, "out", samples.size / OUT_RATE)
        audio_id, expires_at = store.put(answer.text, now=now)
        message["content"] = None
        message["audio"] = {"id": audio_id, "data": base64.b64encode(encode(samples, OUT_RATE, prep.audio_format)).decode(),
                            "expires_at": expires_at, "transcript": answer.text}
    return {**meta, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": answer.finish, "logprobs": None}],
            "usage": _usage(prep, answer)}


class _Stream:
    """The chunks of a streamed answer, as server-sent events."""

    def __init__(self, prep: Prepared, meta: dict[str, Any], tts: Any, store: AudioStore, clock: Any,
                 began: float) -> None:
        self.prep, self.meta, self.tts, self.store, self.clock, self.began = prep, meta, tts, store, clock, began
        self.answer = _Answer()
        self.first_audio = False

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        body = {**self.meta, "object": "chat.completion.chunk",
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                      "logprobs": None}]}
        if usage is not None or self.prep.include_usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    async def _speak(self, piece: str) -> AsyncIterator[bytes]:
        async for pcm in speak(self.tts, piece, voice=speech_voice(self.prep.voice) or "alloy"):
            self.answer.audio_samples += pcm.size
            if not self.first_audio:
                self.first_audio = True
                observe_first_audio(ROUTE, time.perf_counter() - self.began)
            yield self._chunk({"audio": {"data": base64.b64encode(pcm.astype("<i2").tobytes()).decode()}})

    async def run(self, first: Any, events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        audio = self.prep.audio_format is not None
        audio_id, expires_at = self.store.put("", now=self.clock()) if audio else (None, 0)
        chunker = SentenceChunker()
        yield self._chunk({"role": "assistant", "content": None if audio else "", "refusal": None})
        sent_id = False
        try:
            async for event in _collect(self.answer, first, events):
                if isinstance(event, TextDelta) and event.text:
                    if not audio:
                        yield self._chunk({"content": event.text})
                        continue
                    delta: dict[str, Any] = {"transcript": event.text}
                    if not sent_id:
                        delta, sent_id = {"id": audio_id, **delta}, True
                    yield self._chunk({"audio": delta})
                    for piece in chunker.push(event.text):
                        async for chunk in self._speak(piece):
                            yield chunk
                elif isinstance(event, ToolCallDelta):
                    yield self._chunk({"tool_calls": [self.answer.add_call(event)]})
            if audio:
                for piece in chunker.flush():
                    async for chunk in self._speak(piece):
                        yield chunk
                self.store.put_transcript(audio_id, self.answer.text)
                count_audio(ROUTE, "out", self.answer.audio_samples / OUT_RATE)
                if sent_id:
                    yield self._chunk({"audio": {"expires_at": expires_at}})
        except EngineError as err:
            error = {"message": err.message, "type": "server_error", "param": None, "code": err.code}
            yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
            return
        yield self._chunk({}, finish=self.answer.finish)
        if self.prep.include_usage:
            yield self._chunk(None, usage=_usage(self.prep, self.answer))
        yield b"data: [DONE]\n\n"
