"""Client events: parse a WebSocket/data-channel message into one typed event, once, at the edge.

`parse_client_event` never raises for bad input: it returns a `ProtocolError` carrying the
client's `event_id`, which the core turns into an `error` event.  Beta events are mapped onto
their GA equivalents here, so the core speaks GA only.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter

from . import item_models as im
from . import session_models as sm
from .errors import ProtocolError
from .strict import Strict, parse_strict

EventId = Annotated[str, Field(max_length=512)]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class _Event(Strict):
    event_id: EventId | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: sm.GASessionUpdate


class InputAudioBufferAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class OutputAudioBufferClear(_Event):
    type: Literal["output_audio_buffer.clear"]
    response_id: str | None = None


class ConversationItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: im.GAItem
    previous_item_id: str | None = None


class ConversationItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: Annotated[int, Field(ge=0)]
    audio_end_ms: Annotated[int, Field(ge=0)]


class ConversationItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ResponseAudioOutput(Strict):
    format: sm.AudioFormat | None = None
    voice: sm.Voice | None = None


class ResponseAudio(Strict):
    output: ResponseAudioOutput | None = None


class ResponseParams(Strict):
    """GA `RealtimeResponseCreateParams`; beta params are mapped onto this."""

    output_modalities: sm.Modalities | None = None
    instructions: str | None = None
    audio: ResponseAudio | None = None
    tools: list[sm.Tool] | None = None
    tool_choice: sm.ToolChoice | None = None
    max_output_tokens: sm.MaxTokens | None = None
    conversation: Annotated[str, Field(min_length=1)] | None = None
    metadata: Metadata | None = None
    prompt: sm.Prompt | None = None
    input: list[im.GAInputItem] | None = None
    reasoning: sm.Reasoning | None = None
    parallel_tool_calls: bool | None = None


class MappedResponseParams(ResponseParams):
    """What a beta `response.create` maps to: GA params plus the beta-only `temperature`."""

    temperature: float | None = None


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class MappedSessionUpdate(SessionUpdate):
    """What a beta `session.update` maps to: the GA update plus the beta-only `temperature`."""

    temperature: float | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Union[
    SessionUpdate,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    InputAudioBufferClear,
    OutputAudioBufferClear,
    ConversationItemCreate,
    ConversationItemRetrieve,
    ConversationItemTruncate,
    ConversationItemDelete,
    ResponseCreate,
    ResponseCancel,
]

_GA_MODELS: dict[str, type[Strict]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in ClientEvent.__args__  # type: ignore[attr-defined]
}

# ---- beta wrappers: validated in beta shape, then mapped to the GA models above --------------


class BetaSessionUpdateEvent(_Event):
    type: Literal["session.update"]
    session: sm.BetaSessionUpdate


class BetaTranscriptionSessionUpdateEvent(_Event):
    type: Literal["transcription_session.update"]
    session: sm.BetaTranscriptionSessionUpdate


class BetaConversationItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: im.BetaItem
    previous_item_id: str | None = None


class BetaResponseParams(Strict):
    modalities: Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=2)] | None = None
    instructions: str | None = None
    voice: sm.Voice | None = None
    output_audio_format: sm.BetaAudioFormat | None = None
    tools: list[sm.BetaFunctionTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], sm.BetaToolChoiceFunction] | None = None
    temperature: Annotated[float, Field(ge=0.6, le=1.2)] | None = None
    max_response_output_tokens: sm.MaxTokens | None = None
    max_output_tokens: sm.MaxTokens | None = None
    conversation: str | None = None
    metadata: Metadata | None = None
    input: list[im.BetaItem] | None = None
    prompt: sm.Prompt | None = None


class BetaResponseCreate(_Event):
    type: Literal["response.create"]
    response: BetaResponseParams | None = None


_BETA_MODELS: dict[str, type[Strict]] = {
    **_GA_MODELS,
    "session.update": BetaSessionUpdateEvent,
    "transcription_session.update": BetaTranscriptionSessionUpdateEvent,
    "conversation.item.create": BetaConversationItemCreate,
    "response.create": BetaResponseCreate,
}



def parse_client_event(message: str | bytes, dialect: str = "ga") -> ClientEvent | ProtocolError:
    """One client message in, one typed GA event (or the error to report) out."""
    if isinstance(message, (bytes, bytearray)):
        return ProtocolError(
            "Expected a text WebSocket message; binary frames are not supported.", "invalid_event"
        )
    try:
        data = json.loads(message, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return ProtocolError(f"Invalid event: failed to parse JSON value. {exc}", "invalid_json",
                             event_id=_lenient_event_id(message))
    problem = _structure_problem(data)
    if problem:
        return ProtocolError(f"Invalid event: {problem}.", "invalid_json", event_id=_event_id(data))
    return parse_client_dict(data, dialect)


MAX_DEPTH = 64


def _event_id(data: Any) -> str | None:
    value = data.get("event_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _lenient_event_id(message: str) -> str | None:
    """The event_id of a message we refuse only for NaN/Infinity, so the error can name it."""
    try:
        return _event_id(json.loads(message))
    except (ValueError, RecursionError):
        return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _structure_problem(data: Any) -> str | None:
    """What JSON allows but we refuse: nesting deeper than MAX_DEPTH, and escaped lone UTF-16
    surrogates (half an emoji), which cannot be echoed back as UTF-8."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"JSON nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            # isascii() is O(1) in CPython and an ASCII string has no surrogates: base64 audio
            # (most of what clients send) skips the scan.
            if not value.isascii() and _LONE_SURROGATE.search(value):
                return "a string contains a lone UTF-16 surrogate"
        elif isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def parse_client_dict(data: Any, dialect: str = "ga") -> ClientEvent | ProtocolError:
    if not isinstance(data, dict):
        return ProtocolError("Invalid event: expected a JSON object.", "invalid_event")
    raw_id = data.get("event_id")
    event_id = raw_id if isinstance(raw_id, str) else None
    kind = data.get("type")
    if kind is None:
        return ProtocolError("The 'type' field is missing.", "invalid_event", "type", event_id)
    table = _BETA_MODELS if dialect == "beta" else _GA_MODELS
    if not isinstance(kind, str) or kind not in table:
        supported = ", ".join(f"'{t}'" for t in sorted(table))
        return ProtocolError(
            f"Invalid value: {str(kind)[:80]!r}. Supported values are: {supported}.",
            "invalid_value",
            "type",
            event_id,
        )
    try:
        event = parse_strict(table[kind], data)
        if dialect == "beta":
            event = _beta_to_ga(event, data)
        return event
    except ProtocolError as err:
        return err.with_event_id(event_id)


# ---- beta -> GA mapping -----------------------------------------------------------------------

_BETA_FORMAT = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_BETA_NULLABLE = {"turn_detection", "input_audio_transcription", "input_audio_noise_reduction", "tracing",
                  "prompt", "include"}
_ga_item = TypeAdapter(im.GAItem)
_ga_input_item = TypeAdapter(im.GAInputItem)


def beta_session_to_ga(s: sm.BetaSessionUpdate | sm.BetaTranscriptionSessionUpdate, transcription: bool) -> dict[str, Any]:
    """Flat beta session fields -> a GA session-update dict (only the fields that were set)."""
    given = s.model_dump(exclude_unset=True)
    if getattr(s, "tools", None) is not None:
        given["tools"] = [t.model_dump(exclude_none=True) for t in s.tools]  # keep the defaulted "type"
    out: dict[str, Any] = {"type": "transcription" if transcription else "realtime"}
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None and key not in _BETA_NULLABLE:
            continue  # beta clients send null for "unchanged"; GA has no null for these
        if key == "input_audio_format":
            audio_in["format"] = _BETA_FORMAT[value]
        elif key == "output_audio_format":
            audio_out["format"] = _BETA_FORMAT[value]
        elif key == "input_audio_transcription":
            audio_in["transcription"] = value
        elif key == "input_audio_noise_reduction":
            audio_in["noise_reduction"] = value
        elif key == "turn_detection":
            audio_in["turn_detection"] = value
        elif key in ("voice", "speed"):
            audio_out[key] = value
        elif key == "modalities":
            if not transcription:
                out["output_modalities"] = ["audio"] if "audio" in value else ["text"]
        elif key == "max_response_output_tokens":
            out["max_output_tokens"] = value
        elif key == "client_secret":
            continue
        elif key == "temperature":
            out["_temperature"] = value
        elif not transcription or key == "include":
            out[key] = value
    if audio_in or audio_out:
        out["audio"] = {}
        if audio_in:
            out["audio"]["input"] = audio_in
        if audio_out and not transcription:
            out["audio"]["output"] = audio_out
    return out


def _beta_item(item: im.BetaItem, param: str, adapter: TypeAdapter[Any]) -> Any:
    return parse_strict(adapter, im.beta_item_to_ga(item), param)


def _beta_to_ga(event: Any, raw: dict[str, Any]) -> ClientEvent:
    if isinstance(event, (BetaSessionUpdateEvent, BetaTranscriptionSessionUpdateEvent)):
        ga = beta_session_to_ga(event.session, isinstance(event, BetaTranscriptionSessionUpdateEvent))
        temperature = ga.pop("_temperature", None)
        return parse_strict(  # type: ignore[no-any-return]
            MappedSessionUpdate,
            {"type": "session.update", "event_id": event.event_id, "session": ga, "temperature": temperature},
        )
    if isinstance(event, BetaConversationItemCreate):
        item = _beta_item(event.item, "item", _ga_item)
        return ConversationItemCreate(
            type="conversation.item.create", event_id=event.event_id, item=item,
            previous_item_id=event.previous_item_id,
        )
    if isinstance(event, BetaResponseCreate):
        if event.response is None:
            return ResponseCreate(type="response.create", event_id=event.event_id)
        r = event.response
        params: dict[str, Any] = {}
        given = r.model_dump(exclude_unset=True)
        if given.get("modalities") is not None:
            params["output_modalities"] = ["audio"] if "audio" in r.modalities else ["text"]  # type: ignore[operator]
        for key in ("instructions", "tool_choice", "conversation", "metadata", "prompt", "temperature"):
            if key in given:
                params[key] = given[key]
        if r.tools is not None:
            params["tools"] = [t.model_dump(exclude_none=True) for t in r.tools]
        limit = given.get("max_response_output_tokens", given.get("max_output_tokens"))
        if limit is not None:
            params["max_output_tokens"] = limit
        output: dict[str, Any] = {}
        if given.get("voice") is not None:
            output["voice"] = given["voice"]
        if given.get("output_audio_format") is not None:
            output["format"] = _BETA_FORMAT[given["output_audio_format"]]
        if output:
            params["audio"] = {"output": output}
        if r.input is not None:
            params["input"] = [_beta_item(it, f"response.input[{i}]", _ga_input_item) for i, it in enumerate(r.input)]
        resp = parse_strict(MappedResponseParams, params, "response")
        return ResponseCreate(type="response.create", event_id=event.event_id, response=resp)
    return event  # type: ignore[no-any-return]
