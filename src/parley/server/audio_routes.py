"""`POST /v1/audio/speech`, `/v1/audio/transcriptions` and `/v1/audio/translations`, over the
same TTS and STT engines the realtime sessions use.

Speech streams as the engine speaks: each sentence (runtime/chunker.py) is synthesized in turn,
resampled to 24 kHz and encoded (audio/codec.py) piece by piece, as plain bytes or, with
`stream_format: "sse"`, as `speech.audio.delta` / `speech.audio.done` events.  Transcriptions
decode the upload with PyAV to the engine's rate; the engines give text, not timings, so
`verbose_json`, `srt` and `vtt` have one segment spanning the whole file and no words.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from ..audio.codec import CONTENT_TYPES, SPEECH_FORMATS, AudioDecodeError, StreamEncoder
from ..core.context import estimate_tokens
from ..engines.errors import EngineError
from ..engines.stt import Transcript, TranscriptDelta
from .audio_common import (OUT_RATE, api_error, app_state, count_audio, count_request, decode_upload, engine_error,
                           observe_first_audio, require_api_key, speak, speech_voice)
from .transcript_formats import RESPONSE_FORMATS, render, usage

router = APIRouter()

MAX_SPEECH_INPUT = 4096  # characters, as the hosted API
UPLOAD_FORMATS = ["flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm"]


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


# ---- speech -----------------------------------------------------------------------------------


def _speech_request(body: Any) -> dict[str, Any] | JSONResponse:
    if not isinstance(body, dict):
        return api_error(400, "The request body must be a JSON object.", code="invalid_json")
    known = {"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"}
    if unknown := sorted(set(body) - known):
        return api_error(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                         code="unknown_parameter")
    for name in ("model", "input", "voice"):
        if body.get(name) in (None, ""):
            return api_error(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    text = body["input"]
    if not isinstance(text, str):
        return api_error(400, "Invalid type for 'input': expected a string.", param="input", code="invalid_type")
    if len(text) > MAX_SPEECH_INPUT:
        return api_error(400, f"Invalid 'input': string too long. Expected a string with maximum length "
                         f"{MAX_SPEECH_INPUT}, but got a string with length {len(text)} instead.",
                         param="input", code="string_above_max_length")
    voice = speech_voice(body["voice"])
    fmt = body.get("response_format", "mp3")
    speed = body.get("speed", 1.0)
    stream_format = body.get("stream_format", "audio")
    if voice is None:
        return api_error(400, "Invalid 'voice': expected a voice name or {\"id\": ...}.", param="voice", code="invalid_value")
    if fmt not in SPEECH_FORMATS:
        return api_error(400, f"Invalid value: '{fmt}'. Supported values are: {', '.join(map(repr, SPEECH_FORMATS))}.",
                         param="response_format", code="invalid_value")
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        return api_error(400, "Invalid 'speed': expected a number between 0.25 and 4.0.", param="speed",
                         code="invalid_value")
    if stream_format not in ("audio", "sse"):
        return api_error(400, f"Invalid value: '{stream_format}'. Supported values are: 'sse' and 'audio'.",
                         param="stream_format", code="invalid_value")
    if "instructions" in body and not isinstance(body["instructions"], str):
        return api_error(400, "Invalid type for 'instructions': expected a string.", param="instructions",
                         code="invalid_type")
    return {"text": text, "voice": voice, "format": fmt, "speed": float(speed), "sse": stream_format == "sse"}


@router.post("/v1/audio/speech")
async def speech(request: Request) -> Any:
    began = time.perf_counter()
    answer = await _speech(request, began)
    if isinstance(answer, JSONResponse):
        count_request("audio.speech", answer.status_code)
    return answer


async def _speech(request: Request, began: float) -> Any:
    if (denied := require_api_key(request)) is not None:
        return denied
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        return api_error(400, f"We could not parse the JSON body of your request. ({exc})", code="invalid_json")
    req = _speech_request(body)
    if isinstance(req, JSONResponse):
        return req
    engines = app_state(request).engines
    tts = engines.tts if engines else None
    if tts is None:
        return api_error(503, "No text-to-speech engine is available (see PARLEY_TTS_ENGINE and /readyz).",
                         kind="server_error", code="tts_unavailable")
    audio = speak(tts, req["text"], voice=req["voice"], speed=req["speed"])
    encoder = StreamEncoder(req["format"], OUT_RATE)
    try:  # the first piece before the answer starts, so a refused voice or speed is a 400
        first = await anext(audio, None)
    except EngineError as err:
        return engine_error(err)
    if first is None:
        await audio.aclose()
    count_request("audio.speech", 200)

    async def encoded() -> AsyncIterator[bytes]:
        samples = 0
        try:
            if first is not None:
                samples += first.size
                yield encoder.feed(first)
                async for pcm in audio:
                    samples += pcm.size
                    yield encoder.feed(pcm)
            yield encoder.finish()
        finally:
            count_audio("audio.speech", "out", samples / OUT_RATE)

    async def timed(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        first_sent = False
        async for data in pieces:
            if data:
                if not first_sent:
                    first_sent = True
                    observe_first_audio("audio.speech", time.perf_counter() - began)
                yield data

    if not req["sse"]:
        return StreamingResponse(timed(encoded()), media_type=CONTENT_TYPES[req["format"]])

    async def events() -> AsyncIterator[bytes]:
        async for data in timed(encoded()):
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        tokens = estimate_tokens(req["text"])
        yield _sse({"type": "speech.audio.done", "usage": {"input_tokens": tokens, "output_tokens": 0,
                                                           "total_tokens": tokens}})

    return StreamingResponse(events(), media_type="text/event-stream")


# ---- transcriptions and translations ---------------------------------------------------------


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def _form_request(request: Request, *, translate: bool) -> dict[str, Any] | JSONResponse:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return api_error(415, "Unsupported Content-Type: expected multipart/form-data with a 'file' field.",
                         code="unsupported_media_type")
    try:
        form = await request.form(max_files=1, max_fields=64)
    except (ValueError, AssertionError) as exc:  # starlette's MultiPartException is not a ValueError
        return api_error(400, f"The multipart body could not be parsed ({exc}).", code="invalid_multipart")
    except Exception as exc:  # noqa: BLE001 - starlette raises HTTPException(400) for a bad body
        if type(exc).__name__ not in ("HTTPException", "MultiPartException"):
            raise
        return api_error(400, f"The multipart body could not be parsed ({getattr(exc, 'detail', exc)}).",
                         code="invalid_multipart")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        return api_error(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    if not _field(form, "model"):
        return api_error(400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    fmt = _field(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        return api_error(400, f"Invalid value: '{fmt}'. Supported values are: {', '.join(map(repr, RESPONSE_FORMATS))}.",
                         param="response_format", code="invalid_value")
    temperature = _field(form, "temperature")
    if temperature is not None:
        try:
            t = float(temperature)
            if not 0 <= t <= 1:
                raise ValueError
        except ValueError:
            return api_error(400, "Invalid 'temperature': expected a number between 0 and 1.", param="temperature",
                             code="invalid_value")
    granularities = [g for g in form.getlist("timestamp_granularities[]") if isinstance(g, str)]
    if bad := [g for g in granularities if g not in ("word", "segment")]:
        return api_error(400, f"Invalid value: '{bad[0]}'. Supported values are: 'word' and 'segment'.",
                         param="timestamp_granularities", code="invalid_value")
    if granularities and fmt != "verbose_json":
        return api_error(400, "timestamp_granularities requires response_format 'verbose_json'.",
                         param="timestamp_granularities", code="invalid_value")
    stream = (_field(form, "stream") or "false").lower() == "true"
    data = await upload.read()
    if not data:
        return api_error(400, "The audio file is empty.", param="file", code="invalid_value")
    return {"data": data, "filename": upload.filename or "audio", "model": _field(form, "model"), "format": fmt,
            "language": None if translate else _field(form, "language"), "prompt": _field(form, "prompt"),
            "stream": stream and not translate, "granularities": granularities}


async def _transcribe_route(request: Request, route: str, *, translate: bool) -> Any:
    if (denied := require_api_key(request)) is not None:
        return denied
    req = await _form_request(request, translate=translate)
    if isinstance(req, JSONResponse):
        return req
    engines = app_state(request).engines
    engine = engines.speech.stt_for({"model": req["model"]}) if engines else None
    if engine is None:
        return api_error(503, "No speech-to-text engine is available (see PARLEY_STT_ENGINE and /readyz).",
                         kind="server_error", code="stt_unavailable")
    if translate and not callable(getattr(engine, "translate", None)):
        return api_error(400, f"The speech-to-text engine ({engine.name}) cannot translate; translations need a "
                         "Whisper model (PARLEY_STT_ENGINE=faster-whisper with PARLEY_STT_MODEL).",
                         param="model", code="translation_unsupported")
    try:
        pcm = await decode_upload(req["data"], engine.sample_rate)
    except AudioDecodeError as err:
        return api_error(400, f"Invalid file format. Supported formats: {UPLOAD_FORMATS} ({err})", param="file",
                         code="invalid_value")
    seconds = pcm.size / engine.sample_rate
    count_audio(route, "in", seconds)
    run = (engine.translate(pcm, prompt=req["prompt"]) if translate  # type: ignore[attr-defined]
           else engine.transcribe(pcm, language=req["language"], prompt=req["prompt"]))
    if req["stream"]:
        return await _streamed(run, seconds)
    try:
        final = Transcript("")
        async for event in run:
            if isinstance(event, Transcript):
                final = event
    except EngineError as err:
        return engine_error(err)
    body, media = render(final, req["format"], seconds=seconds, task="translate" if translate else "transcribe",
                         granularities=req["granularities"])
    if media == "application/json":
        return JSONResponse(body)
    return PlainTextResponse(body, media_type=media)


async def _streamed(run: AsyncIterator[Any], seconds: float) -> Any:
    try:  # the first event before the answer starts, so a refused language is a 400
        first = await anext(run, None)
    except EngineError as err:
        return engine_error(err)

    async def events() -> AsyncIterator[bytes]:
        event = first
        try:
            while event is not None:
                if isinstance(event, TranscriptDelta) and event.text:
                    yield _sse({"type": "transcript.text.delta", "delta": event.text})
                elif isinstance(event, Transcript):
                    yield _sse({"type": "transcript.text.done", "text": event.text, "usage": usage(event, seconds)})
                event = await anext(run, None)
        except EngineError as err:
            yield _sse({"type": "error", "error": {"message": err.message, "type": "server_error", "code": err.code,
                                                   "param": None}})

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Any:
    answer = await _transcribe_route(request, "audio.transcriptions", translate=False)
    count_request("audio.transcriptions", answer.status_code if isinstance(answer, Response) else 200)
    return answer


@router.post("/v1/audio/translations")
async def translations(request: Request) -> Any:
    answer = await _transcribe_route(request, "audio.translations", translate=True)
    count_request("audio.translations", answer.status_code if isinstance(answer, Response) else 200)
    return answer
