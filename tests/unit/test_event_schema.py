"""The strict server-event validator in tests/support/event_schema.py, tested on hand-made events."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.support.event_schema import collect_and_validate, validate_server_event

# GA `session.created`, verbatim from docs/realtime-protocol.md §4.1 (a real hosted-API frame).
GA_SESSION_CREATED: dict[str, Any] = {
    "type": "session.created",
    "event_id": "event_Ct1OVqJmiaDhg4nkh3JWr",
    "session": {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_Ct1OVZ9vNW62W3cUpSCqj",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10. …",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 1767233035,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    },
}

# GA transcription session default (docs §4.2, PROBE1).
GA_TRANSCRIPTION_SESSION_CREATED: dict[str, Any] = {
    "type": "session.created",
    "event_id": "event_T1",
    "session": {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": "sess_T1",
        "expires_at": 1767233035,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": None, "prompt": None},
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                },
            }
        },
        "include": None,
    },
}

GA_TEXT_DELTA: dict[str, Any] = {
    "type": "response.output_text.delta",
    "event_id": "event_2",
    "response_id": "resp_1",
    "item_id": "item_1",
    "output_index": 0,
    "content_index": 0,
    "delta": "Hel",
}

GA_ITEM_ADDED_USER: dict[str, Any] = {
    "type": "conversation.item.added",
    "event_id": "event_3",
    "previous_item_id": None,
    "item": {
        "id": "item_u1",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_audio", "transcript": None}],
    },
}

GA_ERROR: dict[str, Any] = {
    "type": "error",
    "event_id": "event_4",
    "error": {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "Invalid value: 'nope'.",
        "param": "type",
        "event_id": None,
    },
}

GA_RESPONSE_DONE: dict[str, Any] = {
    "type": "response.done",
    "event_id": "event_5",
    "response": {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "completed",
        "status_details": None,
        "output": [
            {
                "id": "item_a1",
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "Hi there."}],
            },
            {
                "id": "item_f1",
                "object": "realtime.item",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_abc",
                "name": "get_weather",
                "arguments": "{\"city\": \"Paris\"}",
            },
        ],
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "usage": {
            "total_tokens": 320,
            "input_tokens": 132,
            "output_tokens": 188,
            "input_token_details": {
                "text_tokens": 59,
                "audio_tokens": 73,
                "image_tokens": 0,
                "cached_tokens": 64,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": 41, "audio_tokens": 147},
        },
        "metadata": None,
    },
}

BETA_TEXT_DELTA: dict[str, Any] = {**GA_TEXT_DELTA, "type": "response.text.delta"}

# Beta `session.created`, docs §4.9 example (OAS 2025-04) wrapped in an event.
BETA_SESSION_CREATED: dict[str, Any] = {
    "type": "session.created",
    "event_id": "event_b1",
    "session": {
        "id": "sess_001",
        "object": "realtime.session",
        "model": "gpt-4o-realtime-preview",
        "modalities": ["text", "audio"],
        "instructions": "…",
        "voice": "sage",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": None,
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200},
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
    },
}

VALID_GA = [
    GA_SESSION_CREATED,
    GA_TRANSCRIPTION_SESSION_CREATED,
    GA_TEXT_DELTA,
    GA_ITEM_ADDED_USER,
    GA_ERROR,
    GA_RESPONSE_DONE,
    {"type": "rate_limits.updated", "event_id": "e6",
     "rate_limits": [{"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}]},
    {"type": "response.content_part.added", "event_id": "e7", "response_id": "resp_1", "item_id": "item_a1",
     "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": ""}},
    {"type": "response.function_call_arguments.done", "event_id": "e8", "response_id": "resp_1",
     "item_id": "item_f1", "output_index": 1, "call_id": "call_abc", "name": "get_weather", "arguments": "{}"},
    {"type": "conversation.item.input_audio_transcription.completed", "event_id": "e9", "item_id": "item_u1",
     "content_index": 0, "transcript": "hello",
     "usage": {"type": "tokens", "total_tokens": 24, "input_tokens": 16, "output_tokens": 8,
               "input_token_details": {"text_tokens": 0, "audio_tokens": 16}}},
    {**GA_TEXT_DELTA, "obfuscation": "xYz"},  # documented extra, hosted API sends it
    {"type": "input_audio_buffer.dtmf_event_received", "event": "5", "received_at": 1767233035},
]


def mutated(event: dict[str, Any], change) -> dict[str, Any]:
    event = copy.deepcopy(event)
    change(event)
    return event


def fails(event: Any, dialect: str = "ga", **kwargs: Any) -> str:
    with pytest.raises(AssertionError) as info:
        validate_server_event(event, dialect, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("event", VALID_GA, ids=lambda e: e["type"])
def test_valid_ga_events_pass(event: dict[str, Any]) -> None:
    validate_server_event(event)
    validate_server_event(event, "ga")


def test_json_text_frames_are_accepted() -> None:
    validate_server_event(json.dumps(GA_TEXT_DELTA))
    validate_server_event(json.dumps(GA_TEXT_DELTA).encode())


def test_unknown_event_type_fails() -> None:
    message = fails({**GA_TEXT_DELTA, "type": "response.bogus"})
    assert "'response.bogus'" in message and "not a ga server event type" in message


def test_missing_type_fails() -> None:
    event = dict(GA_TEXT_DELTA)
    del event["type"]
    assert "type: missing" in fails(event)


def test_extra_top_level_field_fails() -> None:
    message = fails({**GA_TEXT_DELTA, "bogus": 1})
    assert "'response.output_text.delta'" in message
    assert "bogus: unknown field (ResponseTextDeltaEvent has no field 'bogus')" in message


def test_extra_field_deep_in_session_fails() -> None:
    event = mutated(GA_SESSION_CREATED, lambda e: e["session"]["audio"]["input"]["turn_detection"].update(bogus=1))
    message = fails(event)
    assert "'session.created'" in message
    assert "session.audio.input.turn_detection.bogus: unknown field" in message


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda e: e["response"]["output"][0]["content"][0].update(bogus=1), "response.output[0].content[0].bogus"),
        (lambda e: e["response"]["usage"]["input_token_details"]["cached_tokens_details"].update(video_tokens=1),
         "response.usage.input_token_details.cached_tokens_details.video_tokens"),
        (lambda e: e["response"]["output"][1].update(bogus=None), "response.output[1].bogus"),
        (lambda e: e["response"].update(status_details={"type": "completed", "extra": 1}),
         "response.status_details.extra"),
        (lambda e: e["response"]["audio"]["output"]["format"].update(type="audio/pcmu"),
         "response.audio.output.format.rate"),  # AudioPCMU has no `rate`
    ],
    ids=["list-item", "nested-model", "union-member", "null-able-model", "union-without-rate"],
)
def test_extra_fields_in_lists_and_nested_unions_fail(change, path: str) -> None:
    assert f"{path}: unknown field" in fails(mutated(GA_RESPONSE_DONE, change))


def test_nested_mcp_error_union_extra_fails() -> None:
    event = {
        "type": "response.output_item.done", "event_id": "e1", "response_id": "r", "output_index": 0,
        "item": {"type": "mcp_call", "id": "mcp_1", "server_label": "s", "name": "n", "arguments": "{}",
                 "error": {"type": "http_error", "code": 500, "message": "boom", "extra": True}},
    }
    assert "item.error.extra: unknown field (RealtimeMcphttpError" in fails(event)
    event["item"]["error"].pop("extra")
    validate_server_event(event)


@pytest.mark.parametrize(
    ("event", "path"),
    [
        ({**GA_TEXT_DELTA, "output_index": "0"}, "output_index"),
        ({**GA_TEXT_DELTA, "output_index": 0.0}, "output_index"),  # strict: no float for int
        ({**GA_TEXT_DELTA, "delta": None}, "delta"),
        (mutated(GA_SESSION_CREATED, lambda e: e["session"]["audio"]["input"]["turn_detection"].update(threshold="x")),
         "session.audio.input.turn_detection.threshold (as ServerVad)"),
        (mutated(GA_SESSION_CREATED, lambda e: e["session"]["audio"]["input"]["turn_detection"].update(
            create_response=1)), "session.audio.input.turn_detection.create_response"),  # strict: no int for bool
        (mutated(GA_RESPONSE_DONE, lambda e: e["response"].update(metadata={"k": 1})), "response.metadata.k"),
        (mutated(GA_ITEM_ADDED_USER, lambda e: e["item"]["content"][0].update(type="output_text")),
         "item.content[0].type"),
    ],
    ids=["str-for-int", "float-for-int", "null", "nested", "int-for-bool", "dict-value", "user-output_text"],
)
def test_wrong_field_type_fails(event: dict[str, Any], path: str) -> None:
    message = fails(event)
    assert f"\n  - {path}" in message, message


def test_content_part_type_must_be_text_or_audio() -> None:
    event = next(e for e in VALID_GA if e["type"] == "response.content_part.added")
    message = fails(mutated(event, lambda e: e["part"].update(type="output_audio")))
    assert "part.type" in message and "'text' or 'audio'" in message


@pytest.mark.parametrize("event_id", [None, "", 7])
def test_missing_or_bad_event_id_fails(event_id: Any) -> None:
    event = mutated(GA_TEXT_DELTA, lambda e: e.update(event_id=event_id))
    assert "event_id: every server event needs a non-empty string event_id" in fails(event)
    del event["event_id"]
    message = fails(event)
    assert "event_id: every server event needs" in message
    assert message.count("\n  - event_id") == 1  # not reported twice


def test_dtmf_event_has_no_event_id_field() -> None:
    # the dtmf event is the one server event without event_id; its SDK type has no such field,
    # so sending one there is an unknown field
    dtmf = VALID_GA[-1]
    assert "event_id: unknown field" in fails({**dtmf, "event_id": "e"})


def test_documented_extras_can_be_disallowed_and_are_value_checked() -> None:
    message = fails(GA_SESSION_CREATED, allow_documented_extras=False)
    for key in ("object", "id", "expires_at"):
        assert f"session.{key}: unknown field (RealtimeSessionCreateRequest" in message
    wrong = mutated(GA_SESSION_CREATED, lambda e: e["session"].update(object="realtime.transcription_session"))
    assert "session.object: bad value for documented extra field" in fails(wrong)
    assert "obfuscation: bad value" in fails({**GA_TEXT_DELTA, "obfuscation": 1})
    # documented extras are bound to their event: `obfuscation` is not known on output_audio.delta
    audio_delta = {**GA_TEXT_DELTA, "type": "response.output_audio.delta", "obfuscation": "x"}
    assert "obfuscation: unknown field" in fails(audio_delta)


def test_beta_events_pass_in_beta_mode() -> None:
    validate_server_event(BETA_TEXT_DELTA, "beta")
    validate_server_event(BETA_SESSION_CREATED, "beta")


def test_beta_names_fail_in_ga_and_ga_names_fail_in_beta() -> None:
    assert "'response.text.delta' is not a ga server event type" in fails(BETA_TEXT_DELTA, "ga")
    assert "not a beta server event type" in fails(GA_TEXT_DELTA, "beta")
    assert "not a beta server event type" in fails(GA_ITEM_ADDED_USER, "beta")
    # the GA session shape is not a beta session
    assert "session.audio: unknown field" in fails(GA_SESSION_CREATED, "beta")


def test_beta_quirks() -> None:
    args_done = next(e for e in VALID_GA if e["type"] == "response.function_call_arguments.done")
    assert "name: unknown field" in fails(args_done, "beta")  # beta type has no `name`
    validate_server_event({k: v for k, v in args_done.items() if k != "name"}, "beta")
    other_model = mutated(BETA_SESSION_CREATED, lambda e: e["session"].update(model="parley-local"))
    assert "session.model" in fails(other_model, "beta")  # beta model is a closed Literal


def test_collect_and_validate_returns_events_and_reports_all_failures() -> None:
    events = [GA_SESSION_CREATED, GA_TEXT_DELTA, GA_RESPONSE_DONE]
    assert collect_and_validate(events) == events
    assert collect_and_validate([BETA_TEXT_DELTA], "beta") == [BETA_TEXT_DELTA]
    with pytest.raises(AssertionError) as info:
        collect_and_validate([GA_TEXT_DELTA, {**GA_TEXT_DELTA, "x": 1}, BETA_TEXT_DELTA])
    message = str(info.value)
    assert message.startswith("2 of 3 server events failed validation")
    assert "event #1:" in message and "event #2:" in message and "event #0:" not in message


def test_unknown_dialect_is_a_usage_error() -> None:
    with pytest.raises(ValueError):
        validate_server_event(GA_TEXT_DELTA, "v2")
