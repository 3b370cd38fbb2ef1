"""The session state machine, driven like the runtime drives it: client JSON through
`parse_client_event`, runtime inputs directly.  No I/O, no clock, no sleeping.

Every `Send` the core produces is validated against the openai SDK's GA or beta server-event
union (`tests/support/event_schema.py`), and every `error` must carry the event_id of the client
event that caused it.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest

from parley.core.io import (
    Close,
    Expired,
    ModelAudio,
    ModelDone,
    ModelFailed,
    ModelText,
    ModelToolCall,
    SessionChanged,
    Send,
    StartResponse,
    StopResponse,
    Transcribe,
    TranscriptDone,
    UsageReport,
)
from parley.core.session import Session, SessionSetup
from parley.core.chat import Usage
from parley.protocol.client_events import parse_client_event
from parley.protocol.ids import IdFactory
from parley.protocol.session_config import DEFAULT_INSTRUCTIONS
from tests.support.event_schema import validate_server_event

BETA_MODEL = "gpt-4o-realtime-preview"
ID_RE = {p: re.compile(rf"^{p}_[A-Za-z0-9]{{{n}}}$") for p, n in
         {"event": 21, "sess": 21, "conv": 21, "item": 21, "resp": 21, "call": 16}.items()}


# ---- harness ---------------------------------------------------------------------------------


class Harness:
    """One session plus the checks every test wants on every output."""

    def __init__(self, dialect: str = "ga", seed: int = 7, **setup: Any) -> None:
        setup.setdefault("model", BETA_MODEL if dialect == "beta" else "gpt-realtime")
        self.dialect = dialect
        self.session = Session(SessionSetup(dialect=dialect, **setup), IdFactory(seed))
        self._n = 0
        self.event_ids: set[str] = set()
        self.created = self._check(self.session.start(), None)

    def _check(self, outs: list[Any], client_event_id: str | None) -> list[Any]:
        for o in outs:
            if isinstance(o, Send):
                validate_server_event(o.event, self.dialect)
                eid = o.event["event_id"]
                assert ID_RE["event"].match(eid), eid
                assert eid not in self.event_ids, "server event ids must be unique"
                self.event_ids.add(eid)
                if o.event["type"] == "error":
                    assert o.event["error"]["event_id"] == client_event_id
        return outs

    def client(self, event: dict[str, Any] | str) -> list[Any]:
        """Send one client event (an event_id is added unless given or `event` is raw text)."""
        if isinstance(event, dict):
            event = dict(event)
            if "event_id" not in event:
                self._n += 1
                event["event_id"] = f"client_evt_{self._n}"
            eid = event["event_id"]
            text = json.dumps(event)
        else:
            text, eid = event, None
        return self._check(self.session.handle(parse_client_event(text, self.dialect)), eid)

    def runtime(self, inp: Any) -> list[Any]:
        return self._check(self.session.handle(inp), None)

    # -- shorthands --

    def update(self, **session: Any) -> list[Any]:
        if self.dialect == "ga":
            session.setdefault("type", "realtime")
        return self.client({"type": "session.update", "session": session})

    def text_mode(self) -> None:
        if self.dialect == "ga":
            outs = self.update(output_modalities=["text"], audio={"input": {"turn_detection": None}})
        else:
            outs = self.update(modalities=["text"], turn_detection=None)
        assert types(outs)[0] == "session.updated"

    def user_text(self, text: str, **extra: Any) -> list[Any]:
        part = {"type": "input_text", "text": text}  # the same in both dialects
        return self.client({"type": "conversation.item.create",
                            "item": {"type": "message", "role": "user", "content": [part], **extra}})

    def create_response(self, **params: Any) -> list[Any]:
        ev: dict[str, Any] = {"type": "response.create"}
        if params:
            ev["response"] = params
        return self.client(ev)

    def append(self, data: bytes) -> list[Any]:
        return self.client({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})

    def retrieve(self, item_id: str) -> dict[str, Any]:
        outs = self.client({"type": "conversation.item.retrieve", "item_id": item_id})
        (ev,) = events(outs)
        assert ev["type"] == "conversation.item.retrieved", ev
        return ev["item"]


def events(outs: list[Any]) -> list[dict[str, Any]]:
    return [o.event for o in outs if isinstance(o, Send)]


def types(outs: list[Any]) -> list[str]:
    return [o.event["type"] if isinstance(o, Send) else type(o).__name__ for o in outs]


def only(outs: list[Any], kind: str) -> dict[str, Any]:
    found = [e for e in events(outs) if e["type"] == kind]
    assert len(found) == 1, (kind, types(outs))
    return found[0]


def error_of(outs: list[Any]) -> dict[str, Any]:
    assert types(outs) == ["error"], types(outs)
    return events(outs)[0]["error"]


def start_of(outs: list[Any]) -> StartResponse:
    found = [o for o in outs if isinstance(o, StartResponse)]
    assert len(found) == 1, types(outs)
    return found[0]


def pcm(ms: int) -> bytes:
    """Silence in PCM16 at 24 kHz: 48 bytes per millisecond."""
    return b"\x00\x00" * (24 * ms)


def response_id_of(outs: list[Any]) -> str:
    return only(outs, "response.created")["response"]["id"]


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.text_mode()
    return harness


def text_turn(h: Harness, words: list[str], user: str = "hi") -> tuple[str, list[Any]]:
    h.user_text(user)
    outs = h.create_response()
    rid = response_id_of(outs)
    for w in words:
        outs += h.runtime(ModelText(rid, w))
    outs += h.runtime(ModelDone(rid))
    return rid, outs


# ---- session.created -------------------------------------------------------------------------


def test_session_created_carries_the_full_default_session() -> None:
    h = Harness(expires_at=1_900_000_000)
    (ev,) = events(h.created)
    assert ev["type"] == "session.created"
    s = ev["session"]
    assert ID_RE["sess"].match(s["id"])
    assert s["object"] == "realtime.session" and s["type"] == "realtime"
    assert s["model"] == "gpt-realtime"
    assert s["expires_at"] == 1_900_000_000
    assert s["output_modalities"] == ["audio"]
    assert s["instructions"] == DEFAULT_INSTRUCTIONS
    assert s["tools"] == [] and s["tool_choice"] == "auto"
    assert s["max_output_tokens"] == "inf"
    assert s["tracing"] is None and s["prompt"] is None and s["include"] is None
    assert s["truncation"] == "auto"
    assert s["audio"] == {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 200, "idle_timeout_ms": None,
                               "create_response": True, "interrupt_response": True},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
    }


def test_session_created_honours_setup_voice_and_instructions() -> None:
    h = Harness(voice="marin", instructions="Be brief.")
    s = events(h.created)[0]["session"]
    assert s["audio"]["output"]["voice"] == "marin"
    assert s["instructions"] == "Be brief."


def test_transcription_session_created() -> None:
    h = Harness(kind="transcription")
    s = events(h.created)[0]["session"]
    assert s["type"] == "transcription" and s["object"] == "realtime.transcription_session"
    assert "output" not in s["audio"] and "model" not in s


# ---- session.update --------------------------------------------------------------------------


def current(h: Harness) -> dict[str, Any]:
    return copy.deepcopy(h.session.config)


def test_update_merges_nested_audio_fields_and_echoes_the_full_session() -> None:
    h = Harness()
    before = current(h)
    outs = h.update(audio={"output": {"speed": 1.25}})
    assert types(outs) == ["session.updated", "SessionChanged"]
    s = outs[0].event["session"]
    assert s["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.25}
    assert s["audio"]["input"] == before["audio"]["input"]
    expected = copy.deepcopy(before)
    expected["audio"]["output"]["speed"] = 1.25
    assert s == expected, "session.updated must echo the whole effective session"
    assert isinstance(outs[1], SessionChanged) and outs[1].session == expected

    outs = h.update(audio={"input": {"noise_reduction": {"type": "far_field"}}})
    s = outs[0].event["session"]
    assert s["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert s["audio"]["input"]["turn_detection"] == before["audio"]["input"]["turn_detection"]
    assert s["audio"]["output"]["speed"] == 1.25
    assert s["instructions"] == before["instructions"]


def test_update_replaces_turn_detection_and_fills_its_defaults() -> None:
    h = Harness()
    s = h.update(audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}})[0].event["session"]
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 300, "silence_duration_ms": 200,
        "idle_timeout_ms": None, "create_response": True, "interrupt_response": True}
    s = h.update(audio={"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 500}}})[0].event["session"]
    assert s["audio"]["input"]["turn_detection"]["threshold"] == 0.5, "replaced whole, not merged"
    assert s["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 500
    s = h.update(audio={"input": {"turn_detection": {"type": "semantic_vad"}}})[0].event["session"]
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}


def test_null_empty_string_and_empty_list_clear_fields() -> None:
    h = Harness()
    tool = {"type": "function", "name": "get_weather", "description": "Weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    s = h.update(tools=[tool], audio={"input": {"transcription": {"model": "whisper-1"}}})[0].event["session"]
    assert s["tools"] == [tool]
    assert s["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": None, "prompt": None}

    s = h.update(audio={"input": {"turn_detection": None}})[0].event["session"]
    assert s["audio"]["input"]["turn_detection"] is None
    assert s["audio"]["input"]["transcription"] is not None, "siblings untouched"
    s = h.update(instructions="")[0].event["session"]
    assert s["instructions"] == ""
    s = h.update(tools=[])[0].event["session"]
    assert s["tools"] == []
    s = h.update(audio={"input": {"transcription": None}})[0].event["session"]
    assert s["audio"]["input"]["transcription"] is None

    # cleared instructions mean no system message at all
    h.update(output_modalities=["text"])
    h.user_text("hi")
    request = start_of(h.create_response()).plan.request
    assert request.messages == [{"role": "user", "content": "hi"}]
    assert request.tools == [] and request.tool_choice is None


@pytest.mark.parametrize("session, param", [
    ({"type": "realtime", "instructions": "new", "bogus": 1}, "session.bogus"),
    ({"type": "realtime", "instructions": "new", "audio": {"output": {"speed": 1.1, "pitch": 2}}},
     "session.audio.output.pitch"),
    ({"type": "realtime", "instructions": "new", "input_audio_format": "pcm16"}, "session.input_audio_format"),
    ({"type": "realtime", "instructions": "new", "tools": [{"type": "function", "name": "f", "strict": True}]},
     "session.tools[0].strict"),
])
def test_unknown_parameter_discards_the_whole_update(session: dict[str, Any], param: str) -> None:
    h = Harness()
    before = current(h)
    err = error_of(h.client({"type": "session.update", "session": session, "event_id": "evt_bad"}))
    assert err["code"] == "unknown_parameter"
    assert err["param"] == param
    assert err["message"] == f"Unknown parameter: '{param}'."
    assert err["event_id"] == "evt_bad"
    assert current(h) == before


def test_missing_session_type() -> None:
    h = Harness()
    before = current(h)
    err = error_of(h.client({"type": "session.update", "session": {"instructions": "x"}}))
    assert err["code"] == "missing_required_parameter"
    assert err["param"] == "session.type"
    assert current(h) == before


def test_session_type_mismatch() -> None:
    h = Harness()
    err = error_of(h.update(type="transcription", audio={"input": {"turn_detection": None}}))
    assert err["code"] == "invalid_value" and err["param"] == "session.type"
    t = Harness(kind="transcription")
    before = current(t)
    err = error_of(t.update(type="realtime", instructions="x"))
    assert err["code"] == "invalid_value" and err["param"] == "session.type"
    assert current(t) == before


def test_invalid_model_is_refused_and_the_update_discarded() -> None:
    h = Harness(accept_model=lambda m: m.startswith("gpt-"))
    before = current(h)
    err = error_of(h.update(model="llama-nope", instructions="changed"))
    assert err["code"] == "invalid_model" and err["param"] == "session.model"
    assert "llama-nope" in err["message"]
    assert current(h) == before
    s = h.update(model="gpt-realtime-mini")[0].event["session"]
    assert s["model"] == "gpt-realtime-mini"


def test_wrong_types_and_out_of_range_values_are_errors() -> None:
    h = Harness()
    before = current(h)
    err = error_of(h.update(instructions=5))
    assert err["code"] == "invalid_type" and err["param"] == "session.instructions"
    err = error_of(h.update(audio={"input": {"format": {"type": "audio/pcm", "rate": 16000}}}))
    assert err["code"] == "integer_below_min_value" and err["param"] == "session.audio.input.format.rate"
    err = error_of(h.update(output_modalities=["text", "audio"]))
    assert err["param"] == "session.output_modalities"
    assert current(h) == before


def audio_response(h: Harness, chunks: list[tuple[str, int]], *, done: bool = True) -> tuple[str, str, list[Any]]:
    """An audio response that speaks `chunks` of (words, ms); returns (response id, item id, outputs)."""
    outs = h.create_response(output_modalities=["audio"]) if h.dialect == "ga" else h.create_response(modalities=["text", "audio"])
    rid = response_id_of(outs)
    for words, ms in chunks:
        outs += h.runtime(ModelAudio(rid, pcm(ms), words, float(ms)))
    if done:
        outs += h.runtime(ModelDone(rid))
    item_id = only(outs, "response.output_item.added")["item"]["id"]
    return rid, item_id, outs


def test_voice_can_change_until_audio_was_produced() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    assert h.update(audio={"output": {"voice": "cedar"}})[0].event["session"]["audio"]["output"]["voice"] == "cedar"
    audio_response(h, [("Hello.", 300)])
    before = current(h)
    err = error_of(h.update(instructions="changed", audio={"output": {"voice": "marin"}}))
    assert err["code"] == "cannot_update_voice"
    assert err["param"] == "session.audio.output.voice"
    assert current(h) == before, "the whole update is rejected"
    # the same voice, or other fields, are still fine
    assert types(h.update(audio={"output": {"voice": "cedar", "speed": 1.1}}))[0] == "session.updated"


def test_voice_is_locked_as_soon_as_audio_is_streamed() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    audio_response(h, [("Hello.", 300)], done=False)
    err = error_of(h.update(audio={"output": {"voice": "marin"}}))
    assert err["code"] == "cannot_update_voice"


@pytest.mark.parametrize("session", [
    {"output_modalities": None},
    {"tools": None},
    {"audio": None},
    {"audio": {"input": None}},
    {"audio": {"output": None}},
    {"audio": {"input": {"format": None}}},
    {"audio": {"output": {"format": None}}},
    {"audio": {"output": {"speed": None}}},
])
def test_null_for_a_non_nullable_field_never_breaks_the_session(session: dict[str, Any]) -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    outs = h.update(**session)
    assert types(outs)[0] in ("session.updated", "error")
    h.append(pcm(120))
    h.user_text("hi")
    outs = h.create_response()
    rid = response_id_of(outs)
    assert any(isinstance(o, StartResponse) for o in outs)
    h.runtime(ModelDone(rid))


# ---- input audio buffer ----------------------------------------------------------------------


def test_commit_needs_100_ms() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    err = error_of(h.client({"type": "input_audio_buffer.commit", "event_id": "evt_c0"}))
    assert err["code"] == "input_audio_buffer_commit_empty"
    assert "0.00ms" in err["message"] and err["event_id"] == "evt_c0"
    assert h.append(pcm(99)) == []
    err = error_of(h.client({"type": "input_audio_buffer.commit"}))
    assert err["code"] == "input_audio_buffer_commit_empty" and "99.00ms" in err["message"]


def test_commit_creates_a_user_audio_item_chained_to_the_previous_one() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    h.append(pcm(60))
    h.append(pcm(40))
    outs = h.client({"type": "input_audio_buffer.commit"})
    assert types(outs) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done", "Transcribe"]
    committed, added, done = events(outs)
    item = added["item"]
    assert ID_RE["item"].match(item["id"])
    assert committed["item_id"] == item["id"] and committed["previous_item_id"] is None
    assert added["previous_item_id"] is None and done["previous_item_id"] is None
    assert item == {"id": item["id"], "object": "realtime.item", "type": "message", "status": "completed",
                    "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
    assert done["item"] == item
    tr = outs[-1]
    assert isinstance(tr, Transcribe) and tr.item_id == item["id"] and len(tr.audio) == len(pcm(100))

    h.append(pcm(150))
    outs = h.client({"type": "input_audio_buffer.commit"})
    committed2 = events(outs)[0]
    assert committed2["previous_item_id"] == item["id"]
    assert events(outs)[1]["previous_item_id"] == item["id"]
    # the buffer is empty again
    assert error_of(h.client({"type": "input_audio_buffer.commit"}))["code"] == "input_audio_buffer_commit_empty"


def test_clear_empties_the_buffer() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    h.append(pcm(200))
    assert types(h.client({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert error_of(h.client({"type": "input_audio_buffer.commit"}))["code"] == "input_audio_buffer_commit_empty"


@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_g711_counts_8_bytes_per_ms(fmt: str) -> None:
    h = Harness()
    h.update(audio={"input": {"format": {"type": fmt}, "turn_detection": None}})
    h.append(b"\x7f" * 799)  # odd lengths are fine for 8-bit samples
    err = error_of(h.client({"type": "input_audio_buffer.commit"}))
    assert "99.88ms" in err["message"]
    h.append(b"\x7f")
    outs = h.client({"type": "input_audio_buffer.commit"})
    assert types(outs)[0] == "input_audio_buffer.committed"
    tr = outs[-1]
    assert isinstance(tr, Transcribe) and tr.fmt == {"type": fmt} and len(tr.audio) == 800
    item_id = events(outs)[0]["item_id"]
    assert base64.b64decode(h.retrieve(item_id)["content"][0]["audio"]) == b"\x7f" * 800


def test_bad_audio_is_refused() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    err = error_of(h.client({"type": "input_audio_buffer.append", "audio": "not base64!!", "event_id": "evt_b64"}))
    assert err["code"] == "invalid_value" and err["param"] == "audio" and err["event_id"] == "evt_b64"
    err = error_of(h.append(b"\x00\x00\x00"))  # PCM16 needs whole samples
    assert err["code"] == "invalid_value"
    err = error_of(h.client({"type": "input_audio_buffer.append"}))
    assert err["code"] == "missing_required_parameter" and err["param"] == "audio"
    assert error_of(h.client({"type": "input_audio_buffer.commit"}))["code"] == "input_audio_buffer_commit_empty"


def test_append_with_server_vad_asks_for_speech_detection() -> None:
    h = Harness()
    outs = h.append(pcm(20))
    assert types(outs) == ["DetectSpeech"]
    assert outs[0].audio == pcm(20)


# ---- conversation items ----------------------------------------------------------------------


def test_item_create_keeps_the_client_id(h: Harness) -> None:
    outs = h.user_text("hello", id="my_item_1")
    assert types(outs) == ["conversation.item.added", "conversation.item.done"]
    added, done = events(outs)
    assert added["item"] == {"type": "message", "role": "user", "id": "my_item_1", "object": "realtime.item",
                             "status": "completed", "content": [{"type": "input_text", "text": "hello"}]}
    assert done["item"] == added["item"] and added["previous_item_id"] is None
    outs = h.user_text("again")
    assert events(outs)[0]["previous_item_id"] == "my_item_1"
    assert ID_RE["item"].match(events(outs)[0]["item"]["id"])


def test_previous_item_id_places_the_item(h: Harness) -> None:
    h.user_text("A", id="a")
    h.user_text("B", id="b")
    outs = h.client({"type": "conversation.item.create", "previous_item_id": "root",
                     "item": {"type": "message", "role": "system", "id": "first",
                              "content": [{"type": "input_text", "text": "S"}]}})
    assert events(outs)[0]["previous_item_id"] is None
    outs = h.client({"type": "conversation.item.create", "previous_item_id": "a",
                     "item": {"type": "message", "role": "user", "id": "mid",
                              "content": [{"type": "input_text", "text": "M"}]}})
    assert [e["previous_item_id"] for e in events(outs)] == ["a", "a"]
    messages = start_of(h.create_response(instructions="")).plan.request.messages
    assert messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "A"},
                        {"role": "user", "content": "M"}, {"role": "user", "content": "B"}]


def test_item_create_errors(h: Harness) -> None:
    h.user_text("A", id="a")
    err = error_of(h.client({"type": "conversation.item.create", "previous_item_id": "nope", "event_id": "e1",
                             "item": {"type": "message", "role": "user", "id": "x",
                                      "content": [{"type": "input_text", "text": "X"}]}}))
    assert err["code"] == "invalid_value" and err["param"] == "previous_item_id" and err["event_id"] == "e1"
    assert error_of(h.client({"type": "conversation.item.retrieve", "item_id": "x"}))["code"] == "invalid_value"

    err = error_of(h.user_text("dup", id="a"))
    assert err["code"] == "invalid_value" and err["param"] == "item.id"

    err = error_of(h.client({"type": "conversation.item.create",
                             "item": {"type": "function_call_output", "call_id": "call_missing", "output": "{}"}}))
    assert err["code"] == "invalid_value" and err["param"] == "item.call_id"

    err = error_of(h.user_text("long", id="x" * 33))
    assert err["code"] == "string_above_max_length" and err["param"] == "item.id"
    assert "maximum length 32" in err["message"] and "length 33" in err["message"]
    assert types(h.user_text("ok", id="y" * 32)) == ["conversation.item.added", "conversation.item.done"]

    err = error_of(h.client({"type": "conversation.item.create",
                             "item": {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]}}))
    assert err["code"] == "invalid_value"
    err = error_of(h.client({"type": "conversation.item.create",
                             "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}],
                                      "extra": 1}}))
    assert err["code"] == "unknown_parameter" and err["param"] == "item.extra"


def test_function_call_output_for_a_known_call(h: Harness) -> None:
    outs = h.client({"type": "conversation.item.create",
                     "item": {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "call_abc"}})
    assert events(outs)[0]["item"]["call_id"] == "call_abc"
    outs = h.client({"type": "conversation.item.create",
                     "item": {"type": "function_call_output", "call_id": "call_abc", "output": "42"}})
    assert types(outs) == ["conversation.item.added", "conversation.item.done"]
    # a call created without call_id gets one
    outs = h.client({"type": "conversation.item.create", "item": {"type": "function_call", "name": "g", "arguments": ""}})
    assert ID_RE["call"].match(events(outs)[0]["item"]["call_id"])


def test_retrieve_returns_audio_and_delete_removes(h: Harness) -> None:
    audio = pcm(250)
    b64 = base64.b64encode(audio).decode()
    h.client({"type": "conversation.item.create",
              "item": {"type": "message", "role": "user", "id": "withaudio",
                       "content": [{"type": "input_audio", "audio": b64, "transcript": "hi there"}]}})
    item = h.retrieve("withaudio")
    assert item["content"] == [{"type": "input_audio", "audio": b64, "transcript": "hi there"}]
    # events never carry the audio bytes
    outs = h.user_text("x")
    assert "audio" not in json.dumps(events(outs)[0]["item"])

    outs = h.client({"type": "conversation.item.delete", "item_id": "withaudio"})
    assert types(outs) == ["conversation.item.deleted"] and events(outs)[0]["item_id"] == "withaudio"
    for kind in ("conversation.item.retrieve", "conversation.item.delete"):
        err = error_of(h.client({"type": kind, "item_id": "withaudio", "event_id": "evt_gone"}))
        assert err["code"] == "invalid_value" and err["param"] == "item_id" and err["event_id"] == "evt_gone"


def test_bad_inline_audio_is_refused(h: Harness) -> None:
    err = error_of(h.client({"type": "conversation.item.create",
                             "item": {"type": "message", "role": "user",
                                      "content": [{"type": "input_audio", "audio": "@@@"}]}}))
    assert err["code"] == "invalid_value" and err["param"] == "item.content[0].audio"


def test_mcp_approval_response_needs_its_request(h: Harness) -> None:
    """(Answers to real requests, and their echo: tests/unit/test_core_mcp.py.)"""
    err = error_of(h.client({"type": "conversation.item.create",
                             "item": {"type": "mcp_approval_response", "id": "appr_1", "approval_request_id": "mcpr_1",
                                      "approve": True}}))
    assert err["code"] == "invalid_value" and err["param"] == "item.approval_request_id"


# ---- responses: event order and ids ----------------------------------------------------------


def test_text_turn_event_order_and_indexes(h: Harness) -> None:
    rid, outs = text_turn(h, ["Hel", "lo", "!"])
    assert types(outs) == [
        "response.created", "StartResponse",
        "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "conversation.item.done",
        "response.output_item.done", "response.done", "UsageReport",
    ]
    assert ID_RE["resp"].match(rid)
    evs = events(outs)
    item_id = evs[1]["item"]["id"]
    assert ID_RE["item"].match(item_id)
    for ev in evs[1:-1]:
        if "response_id" in ev:
            assert ev["response_id"] == rid
        if "output_index" in ev:
            assert ev["output_index"] == 0
        if "content_index" in ev:
            assert ev["content_index"] == 0
        if "item_id" in ev:
            assert ev["item_id"] == item_id
    assert evs[1]["item"]["status"] == "in_progress" and evs[1]["item"]["content"] == []
    assert evs[3]["part"] == {"type": "text", "text": ""}
    assert [e["delta"] for e in evs[4:7]] == ["Hel", "lo", "!"]
    assert evs[7]["text"] == "Hello!" and evs[8]["part"] == {"type": "text", "text": "Hello!"}
    final_item = evs[9]["item"]
    assert final_item["status"] == "completed"
    assert final_item["content"] == [{"type": "output_text", "text": "Hello!"}]
    assert evs[10]["item"] == final_item
    done = evs[11]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"] == [final_item]
    assert ID_RE["conv"].match(done["conversation_id"])
    created = evs[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["conversation_id"] == done["conversation_id"]
    # the assistant message is in the conversation, after the user message
    prev = evs[2]["previous_item_id"]
    assert prev is not None and h.retrieve(item_id) == final_item


def test_start_response_plan(h: Harness) -> None:
    h.update(instructions="Be brief.", tools=[{"type": "function", "name": "f"}], tool_choice="required")
    h.user_text("hi")
    start = start_of(h.create_response(max_output_tokens=50))
    assert start.plan.modality == "text"
    req = start.plan.request
    assert req.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert req.max_tokens == 50 and req.model == "gpt-realtime" and req.tool_choice == "required"
    assert req.tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def test_function_call_turn_event_order(h: Harness) -> None:
    h.user_text("weather?")
    outs = h.create_response()
    rid = response_id_of(outs)
    outs += h.runtime(ModelToolCall(rid, 0, "", "get_weather"))
    outs += h.runtime(ModelToolCall(rid, 0, '{"city":'))
    outs += h.runtime(ModelToolCall(rid, 0, '"Paris"}'))
    outs += h.runtime(ModelDone(rid, "tool_calls"))
    assert types(outs) == [
        "response.created", "StartResponse",
        "response.output_item.added", "conversation.item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "conversation.item.done", "response.output_item.done",
        "response.done", "UsageReport",
    ]
    evs = events(outs)
    added = evs[1]["item"]
    call_id = added["call_id"]
    assert ID_RE["call"].match(call_id)
    assert added == {"id": added["id"], "object": "realtime.item", "type": "function_call", "status": "in_progress",
                     "name": "get_weather", "call_id": call_id, "arguments": ""}
    assert all(e["call_id"] == call_id and e["output_index"] == 0 for e in evs[3:6])
    args_done = evs[5]
    assert args_done["name"] == "get_weather" and args_done["arguments"] == '{"city":"Paris"}'
    done = evs[-1]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"][0]["arguments"] == '{"city":"Paris"}' and done["output"][0]["status"] == "completed"

    # the client answers; the next request carries the call and its result
    h.client({"type": "conversation.item.create",
              "item": {"type": "function_call_output", "call_id": call_id, "output": '{"temp": 21}'}})
    msgs = start_of(h.create_response(instructions="")).plan.request.messages
    assert msgs == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
    ]


def test_text_then_tool_calls_get_increasing_output_indexes(h: Harness) -> None:
    h.user_text("go")
    rid = response_id_of(h.create_response())
    outs = h.runtime(ModelText(rid, "Let me check."))
    outs += h.runtime(ModelToolCall(rid, 0, "{}", "a"))
    outs += h.runtime(ModelToolCall(rid, 1, "{}", "b"))
    outs += h.runtime(ModelDone(rid))
    added = [e for e in events(outs) if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]
    assert [e["item"]["type"] for e in added] == ["message", "function_call", "function_call"]
    # the message closed before the first call was added
    t = types(outs)
    assert t.index("response.output_text.done") < t.index("response.function_call_arguments.delta")
    done = only(outs, "response.done")["response"]
    assert [i["type"] for i in done["output"]] == ["message", "function_call", "function_call"]
    assert len({i["call_id"] for i in done["output"][1:]}) == 2


def test_audio_turn_event_order() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    h.user_text("hi")
    rid, item_id, outs = audio_response(h, [("Hello", 200), (" there.", 300)])
    assert types(outs) == [
        "response.created", "StartResponse",
        "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_audio_transcript.delta", "response.output_audio.delta",
        "response.output_audio_transcript.delta", "response.output_audio.delta",
        "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
        "conversation.item.done", "response.output_item.done", "response.done", "UsageReport",
    ]
    evs = events(outs)
    assert evs[3]["part"] == {"type": "audio", "transcript": ""}
    assert base64.b64decode(evs[5]["delta"]) == pcm(200)
    assert evs[9]["transcript"] == "Hello there."
    assert evs[10]["part"] == {"type": "audio", "transcript": "Hello there."}
    assert evs[11]["item"]["content"] == [{"type": "output_audio", "transcript": "Hello there."}]
    done = evs[-1]["response"]
    assert done["output_modalities"] == ["audio"]
    assert done["usage"]["output_token_details"]["audio_tokens"] == 10  # 500 ms at 20 tokens/s
    start = start_of(outs)
    assert start.plan.modality == "audio" and start.plan.voice == "alloy"
    assert start.plan.output_format == {"type": "audio/pcm", "rate": 24000}
    retrieved = h.retrieve(item_id)
    assert base64.b64decode(retrieved["content"][0]["audio"]) == pcm(500)


def test_metadata_is_echoed(h: Harness) -> None:
    h.user_text("hi")
    meta = {"topic": "weather", "n": "1"}
    outs = h.create_response(metadata=meta)
    rid = response_id_of(outs)
    assert only(outs, "response.created")["response"]["metadata"] == meta
    outs = h.runtime(ModelDone(rid))
    assert only(outs, "response.done")["response"]["metadata"] == meta


def test_usage_is_reported(h: Harness) -> None:
    rid, outs = text_turn(h, ["one two three"])
    usage = only(outs, "response.done")["response"]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert usage["output_token_details"]["text_tokens"] == usage["output_tokens"]
    report = [o for o in outs if isinstance(o, UsageReport)]
    assert report == [UsageReport(rid, usage["total_tokens"])]
    # engine-reported counts win over estimates
    h.user_text("again")
    rid = response_id_of(h.create_response())
    outs = h.runtime(ModelDone(rid, "stop", Usage(input_tokens=100, output_tokens=7, cached_tokens=40)))
    usage = only(outs, "response.done")["response"]["usage"]
    assert usage["input_tokens"] == 100 and usage["output_tokens"] == 7 and usage["total_tokens"] == 107
    assert usage["input_token_details"]["cached_tokens"] == 40


def test_all_ids_have_their_prefixes(h: Harness) -> None:
    text_turn(h, ["ok"])
    h.user_text("x")
    rid = response_id_of(h.create_response())
    outs = h.runtime(ModelToolCall(rid, 0, "{}", "f"))
    outs += h.runtime(ModelDone(rid))
    for ev in events(outs):
        for key in ("item_id", "response_id", "call_id"):
            if key in ev:
                assert ID_RE[{"item_id": "item", "response_id": "resp", "call_id": "call"}[key]].match(ev[key])
    assert len(h.event_ids) > 10  # all checked unique and `event_` + 21 by the harness


# ---- concurrent, out-of-band and cancelled responses -----------------------------------------


def test_second_default_response_is_refused(h: Harness) -> None:
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    err = error_of(h.client({"type": "response.create", "event_id": "evt_second"}))
    assert err["code"] == "conversation_already_has_active_response"
    assert rid in err["message"] and err["event_id"] == "evt_second"
    h.runtime(ModelDone(rid))
    assert "response.created" in types(h.create_response())


def test_out_of_band_response_beside_a_default_one(h: Harness) -> None:
    h.user_text("first", id="a")
    h.user_text("second", id="b")
    default = h.create_response()
    default_id = response_id_of(default)
    outs = h.create_response(conversation="none", instructions="", metadata={"purpose": "classify"},
                             input=[{"type": "item_reference", "id": "a"},
                                    {"type": "message", "role": "user",
                                     "content": [{"type": "input_text", "text": "inline"}]}])
    assert types(outs) == ["response.created", "StartResponse"]
    created = events(outs)[0]["response"]
    oob_id = created["id"]
    assert created["conversation_id"] is None and created["metadata"] == {"purpose": "classify"}
    assert start_of(outs).plan.request.messages == [{"role": "user", "content": "first"},
                                                    {"role": "user", "content": "inline"}]
    # interleaved output: the out-of-band one never touches the conversation
    oob = h.runtime(ModelText(oob_id, "positive"))
    dflt = h.runtime(ModelText(default_id, "Hi!"))
    oob += h.runtime(ModelDone(oob_id))
    assert "conversation.item.added" not in types(oob) and "conversation.item.done" not in types(oob)
    assert "response.output_item.added" in types(oob)
    done = only(oob, "response.done")["response"]
    assert done["conversation_id"] is None and done["metadata"] == {"purpose": "classify"}
    assert done["output"][0]["content"] == [{"type": "output_text", "text": "positive"}]
    oob_item = done["output"][0]["id"]
    assert error_of(h.client({"type": "conversation.item.retrieve", "item_id": oob_item}))["code"] == "invalid_value"
    assert "conversation.item.added" in types(dflt)
    dflt += h.runtime(ModelDone(default_id))
    assert only(dflt, "response.done")["response"]["status"] == "completed"
    # the default conversation holds exactly the two user items and the default answer
    msgs = start_of(h.create_response(instructions="")).plan.request.messages
    assert msgs == [{"role": "user", "content": "first"}, {"role": "user", "content": "second"},
                    {"role": "assistant", "content": "Hi!"}]


def test_out_of_band_reference_to_unknown_item(h: Harness) -> None:
    err = error_of(h.create_response(conversation="none", input=[{"type": "item_reference", "id": "ghost"}]))
    assert err["code"] == "invalid_value" and err["param"] == "response.input[0].id"
    err = error_of(h.create_response(conversation="other"))
    assert err["code"] == "invalid_value" and err["param"] == "response.conversation"


def test_cancel_default_response_without_id(h: Harness) -> None:
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    h.runtime(ModelText(rid, "partial"))
    outs = h.client({"type": "response.cancel"})
    assert isinstance(outs[0], StopResponse) and outs[0].response_id == rid
    assert types(outs)[1:] == ["response.output_text.done", "response.content_part.done", "conversation.item.done",
                               "response.output_item.done", "response.done", "UsageReport"]
    done = only(outs, "response.done")["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    # late model output for the cancelled response is dropped
    assert h.runtime(ModelText(rid, "more")) == []
    assert h.runtime(ModelToolCall(rid, 0, "{}", "f")) == []
    assert h.runtime(ModelDone(rid)) == []
    assert h.runtime(ModelFailed(rid, "late")) == []
    assert error_of(h.client({"type": "response.cancel"}))["code"] == "response_cancel_not_active"
    assert "response.created" in types(h.create_response())


def test_cancel_by_id(h: Harness) -> None:
    h.user_text("hi")
    default_id = response_id_of(h.create_response())
    oob_id = response_id_of(h.create_response(conversation="none"))
    outs = h.client({"type": "response.cancel", "response_id": oob_id})
    assert outs[0] == StopResponse(oob_id)
    assert only(outs, "response.done")["response"]["id"] == oob_id
    assert h.runtime(ModelText(oob_id, "late")) == []
    # the default response is unaffected
    assert "response.output_text.delta" in types(h.runtime(ModelText(default_id, "still here")))
    err = error_of(h.client({"type": "response.cancel", "response_id": oob_id, "event_id": "evt_again"}))
    assert err["code"] == "response_cancel_not_active" and err["event_id"] == "evt_again"


def test_cancel_with_nothing_active(h: Harness) -> None:
    err = error_of(h.client({"type": "response.cancel", "event_id": "evt_cancel"}))
    assert err == {"type": "invalid_request_error", "code": "response_cancel_not_active",
                   "message": "Cancellation failed: no active response found", "param": None,
                   "event_id": "evt_cancel"}


def test_length_limit_makes_the_response_incomplete(h: Harness) -> None:
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    h.runtime(ModelText(rid, "trunc"))
    outs = h.runtime(ModelDone(rid, "length"))
    done = only(outs, "response.done")["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert done["output"][0]["status"] == "incomplete"
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    done = only(h.runtime(ModelDone(rid, "content_filter")), "response.done")["response"]
    assert done["status_details"] == {"type": "incomplete", "reason": "content_filter"}


def test_model_failure_fails_the_response(h: Harness) -> None:
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    outs = h.runtime(ModelFailed(rid, "the model server is down", "llm_unavailable"))
    done = only(outs, "response.done")["response"]
    assert done["status"] == "failed"
    assert done["status_details"] == {"type": "failed", "error": {
        "type": "server_error", "code": "llm_unavailable", "message": "the model server is down"}}
    assert done["usage"] is not None
    assert h.session.default_response is None
    assert "response.created" in types(h.create_response())


def test_truncation_disabled_fails_a_response_that_does_not_fit() -> None:
    h = Harness(context_tokens=600)
    h.text_mode()
    h.update(truncation="disabled", instructions="")
    h.user_text("word " * 2000)
    outs = h.create_response()
    assert not any(isinstance(o, StartResponse) for o in outs)
    done = only(outs, "response.done")["response"]
    assert done["status"] == "failed" and done["status_details"]["error"]["code"] == "context_length_exceeded"
    assert h.session.default_response is None


def test_deferred_response_waits_for_the_user_transcript() -> None:
    h = Harness()
    h.update(output_modalities=["text"], audio={"input": {"turn_detection": None}})
    h.append(pcm(200))
    item_id = events(h.client({"type": "input_audio_buffer.commit"}))[0]["item_id"]
    outs = h.create_response(instructions="")
    assert types(outs) == ["response.created"], "the model waits for the words"
    outs = h.runtime(TranscriptDone(item_id, "turn the lights off"))
    assert start_of(outs).plan.request.messages == [{"role": "user", "content": "turn the lights off"}]


# ---- truncation of assistant audio -----------------------------------------------------------


def spoken(h: Harness) -> tuple[str, str]:
    """An audio answer of three 1 s chunks, as the runtime feeds them (later chunks lead with a space)."""
    h.update(audio={"input": {"turn_detection": None}})
    h.user_text("how are you?")
    rid, item_id, _ = audio_response(h, [("Hello there.", 1000), (" How are you today?", 1000), (" I am fine.", 1000)])
    return rid, item_id


def truncate(h: Harness, item_id: str, ms: int, content_index: int = 0, event_id: str | None = None) -> list[Any]:
    ev: dict[str, Any] = {"type": "conversation.item.truncate", "item_id": item_id,
                          "content_index": content_index, "audio_end_ms": ms}
    if event_id:
        ev["event_id"] = event_id
    return h.client(ev)


def test_truncate_errors() -> None:
    h = Harness()
    _, item_id = spoken(h)
    err = error_of(truncate(h, "item_unknown", 10, event_id="evt_tr"))
    assert err["code"] == "item_truncate_invalid_item_id" and err["event_id"] == "evt_tr"
    h.user_text("text only", id="user_text")
    assert error_of(truncate(h, "user_text", 0))["code"] == "invalid_value"
    assert error_of(truncate(h, item_id, 10, content_index=1))["code"] == "invalid_value"
    err = error_of(truncate(h, item_id, 3500))
    assert err["code"] == "invalid_value" and err["param"] == "audio_end_ms"
    # a text answer has no audio to truncate
    h.update(output_modalities=["text"])
    h.user_text("hi")
    _, outs = text_turn(h, ["Sure."])
    text_item = only(outs, "response.output_item.added")["item"]["id"]
    assert error_of(truncate(h, text_item, 0))["code"] == "invalid_value"


def test_truncate_keeps_only_the_heard_words() -> None:
    h = Harness()
    _, item_id = spoken(h)
    full = "Hello there. How are you today? I am fine."
    assert h.retrieve(item_id)["content"][0]["transcript"] == full
    outs = truncate(h, item_id, 1500)
    assert types(outs) == ["conversation.item.truncated"]
    assert events(outs)[0] == {**events(outs)[0], "item_id": item_id, "content_index": 0, "audio_end_ms": 1500}
    part = h.retrieve(item_id)["content"][0]
    heard = part["transcript"]
    assert full.startswith(heard) and heard.startswith("Hello there.")
    assert "today" not in heard and "fine" not in heard
    assert len(base64.b64decode(part["audio"])) == len(pcm(1500))
    # the model now sees just what the user heard
    h.update(output_modalities=["text"])
    h.user_text("what?")
    msgs = start_of(h.create_response(instructions="")).plan.request.messages
    assert msgs == [{"role": "user", "content": "how are you?"}, {"role": "assistant", "content": heard},
                    {"role": "user", "content": "what?"}]
    # truncating beyond what is left now fails
    assert error_of(truncate(h, item_id, 2000))["code"] == "invalid_value"


@pytest.mark.parametrize("ms, heard", [(0, ""), (999, "Hello there."[:0]), (1000, "Hello there."),
                                       (2000, "Hello there. How are you today?"),
                                       (3000, "Hello there. How are you today? I am fine.")])
def test_truncate_at_chunk_boundaries(ms: int, heard: str) -> None:
    h = Harness()
    _, item_id = spoken(h)
    truncate(h, item_id, ms)
    got = h.retrieve(item_id)["content"][0]["transcript"]
    if ms == 999:  # inside the first chunk: at most a few of its words
        assert "Hello there.".startswith(got) and got != "Hello there."
    else:
        assert got == heard


def test_truncate_twice_at_the_same_point_is_idempotent() -> None:
    h = Harness()
    _, item_id = spoken(h)
    truncate(h, item_id, 1500)
    first = h.retrieve(item_id)["content"][0]["transcript"]
    assert first != "Hello there."  # the precondition: some words of chunk two were heard
    truncate(h, item_id, 1500)
    assert h.retrieve(item_id)["content"][0]["transcript"] == first


def test_truncate_uses_the_format_the_response_spoke_in() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    h.user_text("hi")
    outs = h.create_response(audio={"output": {"format": {"type": "audio/pcmu"}}})
    rid = response_id_of(outs)
    outs += h.runtime(ModelAudio(rid, b"\xff" * 800, "Hello there.", 100.0))  # 100 ms of G.711
    outs += h.runtime(ModelDone(rid))
    item_id = only(outs, "response.output_item.added")["item"]["id"]
    truncate(h, item_id, 50)
    assert len(base64.b64decode(h.retrieve(item_id)["content"][0]["audio"])) == 400


@pytest.mark.parametrize("then", ["cancel", "more audio", "done"])
def test_truncate_during_the_response_sticks(then: str) -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    h.user_text("hi")
    rid, item_id, _ = audio_response(h, [("Hello there.", 1000), (" How are you today?", 1000)], done=False)
    truncate(h, item_id, 500)
    heard = h.retrieve(item_id)["content"][0]["transcript"]
    assert "How" not in heard
    if then == "cancel":
        h.client({"type": "response.cancel"})
    elif then == "more audio":
        h.runtime(ModelAudio(rid, pcm(300), " I am fine.", 300.0))
        h.runtime(ModelDone(rid))
    else:
        h.runtime(ModelDone(rid))
    part = h.retrieve(item_id)["content"][0]
    assert part["transcript"] == heard
    assert len(base64.b64decode(part["audio"])) == len(pcm(500))


# ---- expiry ----------------------------------------------------------------------------------


def test_expiry_cancels_errors_and_closes(h: Harness) -> None:
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    outs = h.runtime(Expired())
    assert outs[0] == StopResponse(rid)
    assert only(outs, "response.done")["response"]["status"] == "cancelled"
    err = [e for e in events(outs) if e["type"] == "error"][0]["error"]
    assert err["code"] == "session_expired" and err["event_id"] is None
    assert "60 minutes" in err["message"]
    assert outs[-1] == Close(1000, "session_expired")
    assert h.runtime(ModelText(rid, "late")) == []
    assert h.user_text("anyone?") == []


# ---- protocol errors at the edge -------------------------------------------------------------


def test_edge_errors_carry_the_event_id() -> None:
    h = Harness()
    err = error_of(h.client({"type": "nope", "event_id": "evt_nope"}))
    assert err["code"] == "invalid_value" and err["param"] == "type" and err["event_id"] == "evt_nope"
    err = error_of(h.client("{not json"))
    assert err["code"] == "invalid_json" and err["event_id"] is None
    err = error_of(h.client({"event_id": "evt_notype"}))
    assert err["code"] == "invalid_event" and err["event_id"] == "evt_notype"
    err = error_of(h.client('["a list"]'))
    assert err["code"] == "invalid_event"
    err = error_of(h.client({"type": "output_audio_buffer.clear", "event_id": "evt_oab"}))
    assert err["event_id"] == "evt_oab"
    outs = h.session.handle(parse_client_event(b"binary", "ga"))
    assert error_of(outs)["code"] == "invalid_event"


# ---- beta dialect ----------------------------------------------------------------------------


@pytest.fixture
def beta() -> Harness:
    return Harness("beta")


def test_beta_session_created_is_flat(beta: Harness) -> None:
    assert types(beta.created) == ["session.created", "conversation.created"]
    s = events(beta.created)[0]["session"]
    assert "audio" not in s and "output_modalities" not in s and "type" not in s
    assert s["modalities"] == ["text", "audio"] and s["voice"] == "alloy"
    assert s["input_audio_format"] == "pcm16" and s["output_audio_format"] == "pcm16"
    assert s["model"] == BETA_MODEL and s["temperature"] == 0.8
    assert s["max_response_output_tokens"] == "inf"
    assert "idle_timeout_ms" not in s["turn_detection"]
    conv = events(beta.created)[1]["conversation"]
    assert ID_RE["conv"].match(conv["id"])


def test_beta_session_update(beta: Harness) -> None:
    outs = beta.update(modalities=["text"], input_audio_format="g711_ulaw", voice="sage", temperature=0.7,
                       turn_detection=None, max_response_output_tokens=100,
                       input_audio_transcription={"model": "whisper-1"})
    assert types(outs) == ["session.updated", "SessionChanged"]
    s = events(outs)[0]["session"]
    assert s["modalities"] == ["text"] and s["input_audio_format"] == "g711_ulaw" and s["voice"] == "sage"
    assert s["temperature"] == 0.7 and s["turn_detection"] is None and s["max_response_output_tokens"] == 100
    assert s["input_audio_transcription"] == {"model": "whisper-1", "language": None, "prompt": None}
    ga = outs[1].session
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcmu"} and ga["output_modalities"] == ["text"]
    err = error_of(beta.update(output_modalities=["text"]))  # a GA field in a beta session
    assert err["code"] == "unknown_parameter" and err["param"] == "session.output_modalities"
    err = error_of(beta.update(temperature=2.0))
    assert err["code"] == "decimal_above_max_value"


def test_beta_text_turn(beta: Harness) -> None:
    beta.text_mode()
    outs = beta.user_text("hi", id="u1")
    assert types(outs) == ["conversation.item.created"]
    item = events(outs)[0]["item"]
    assert item["id"] == "u1" and item["content"] == [{"type": "input_text", "text": "hi"}]
    outs = beta.create_response(metadata={"k": "v"})
    rid = response_id_of(outs)
    for w in ["Hi", " there"]:
        outs += beta.runtime(ModelText(rid, w))
    outs += beta.runtime(ModelDone(rid))
    assert types(outs) == [
        "response.created", "StartResponse", "response.output_item.added", "conversation.item.created",
        "response.content_part.added", "response.text.delta", "response.text.delta", "response.text.done",
        "response.content_part.done", "response.output_item.done", "response.done", "UsageReport",
    ]
    done = only(outs, "response.done")["response"]
    assert done["modalities"] == ["text"] and done["metadata"] == {"k": "v"} and done["temperature"] == 0.8
    assert done["output"][0]["content"] == [{"type": "text", "text": "Hi there"}]
    assert "audio" not in done and "output_modalities" not in done
    assert start_of(outs).plan.request.temperature == 0.8


def test_beta_audio_and_function_call_turns(beta: Harness) -> None:
    beta.update(turn_detection=None)
    beta.user_text("hi")
    rid, item_id, outs = audio_response(beta, [("Hello.", 200)])
    assert "response.audio.delta" in types(outs) and "response.audio_transcript.delta" in types(outs)
    assert "response.audio.done" in types(outs) and "response.audio_transcript.done" in types(outs)
    assert not any(t.startswith("response.output_audio") or t == "conversation.item.done" for t in types(outs))
    assert only(outs, "response.output_item.done")["item"]["content"] == [{"type": "audio", "transcript": "Hello."}]
    outs = truncate(beta, item_id, 100)
    assert types(outs) == ["conversation.item.truncated"]
    assert beta.retrieve(item_id)["content"][0]["type"] == "audio"

    outs = beta.create_response(modalities=["text"], temperature=1.0)
    rid = response_id_of(outs)
    assert start_of(outs).plan.request.temperature == 1.0
    outs = beta.runtime(ModelToolCall(rid, 0, '{"a":1}', "f"))
    outs += beta.runtime(ModelDone(rid))
    done_args = only(outs, "response.function_call_arguments.done")
    assert "name" not in done_args and done_args["arguments"] == '{"a":1}'
    call_id = done_args["call_id"]
    outs = beta.client({"type": "conversation.item.create",
                        "item": {"type": "function_call_output", "call_id": call_id, "output": "ok"}})
    assert types(outs) == ["conversation.item.created"]


def test_beta_voice_lock_and_errors(beta: Harness) -> None:
    beta.update(turn_detection=None)
    beta.user_text("hi")
    audio_response(beta, [("Hello.", 200)])
    err = error_of(beta.update(voice="echo"))
    assert err["code"] == "cannot_update_voice"
    err = error_of(beta.client({"type": "response.cancel", "event_id": "b1"}))
    assert err["code"] == "response_cancel_not_active" and err["event_id"] == "b1"


def test_beta_commit_and_out_of_band(beta: Harness) -> None:
    beta.update(turn_detection=None, modalities=["text"])
    beta.append(pcm(100))
    outs = beta.client({"type": "input_audio_buffer.commit"})
    assert types(outs) == ["input_audio_buffer.committed", "conversation.item.created", "Transcribe"]
    item = events(outs)[1]["item"]
    assert item["content"] == [{"type": "input_audio", "transcript": None}]
    beta.runtime(TranscriptDone(item["id"], "hello"))
    outs = beta.create_response(conversation="none", instructions="",
                                input=[{"type": "item_reference", "id": item["id"]}])
    assert start_of(outs).plan.request.messages == [{"role": "user", "content": "hello"}]
    rid = response_id_of(outs)
    outs = beta.runtime(ModelText(rid, "x")) + beta.runtime(ModelDone(rid))
    assert "conversation.item.created" not in types(outs)
    assert only(outs, "response.done")["response"]["conversation_id"] is None


@pytest.mark.parametrize("event", [
    {"type": "session.update", "session": {"modalities": None}},
    {"type": "session.update", "session": {"input_audio_format": None}},
    {"type": "session.update", "session": {"output_audio_format": None}},
    {"type": "transcription_session.update", "session": {"input_audio_format": None}},
    {"type": "response.create", "response": {"modalities": None}},
    {"type": "response.create", "response": {"output_audio_format": None}},
])
def test_beta_null_fields_never_raise_from_the_parser(event: dict[str, Any]) -> None:
    h = Harness("beta")
    outs = h.client(event)  # validated by the harness
    assert types(outs)[0] in ("session.updated", "response.created", "error")


@pytest.mark.parametrize("event", [
    {"type": "session.update", "session": {"tools": [{"name": "get_weather"}]}},
    {"type": "response.create", "response": {"tools": [{"name": "get_weather"}]}},
])
def test_beta_tools_without_type_never_raise_from_the_parser(event: dict[str, Any]) -> None:
    h = Harness("beta")
    h.update(turn_detection=None, modalities=["text"])
    outs = h.client(event)
    assert types(outs)[0] in ("session.updated", "response.created")
    if types(outs)[0] == "session.updated":  # the beta `type` default is filled in
        assert events(outs)[0]["session"]["tools"] == [{"type": "function", "name": "get_weather"}]


def test_a_reply_budget_larger_than_the_context_never_drops_the_whole_conversation() -> None:
    h = Harness(context_tokens=4096)
    h.text_mode()
    h.update(max_output_tokens=4096, instructions="")
    h.user_text("hello")
    outs = h.create_response()
    starts = [o for o in outs if isinstance(o, StartResponse)]
    if starts:
        assert starts[0].plan.request.messages[-1:] == [{"role": "user", "content": "hello"}]
    else:
        assert only(outs, "response.done")["response"]["status"] == "failed"


def test_metadata_keys_are_at_most_64_chars(h: Harness) -> None:
    err = error_of(h.create_response(metadata={"k" * 65: "v"}))
    assert err["param"] is not None and err["param"].startswith("response.metadata")


def test_metadata_limits(h: Harness) -> None:
    err = error_of(h.create_response(metadata={f"k{i}": "v" for i in range(17)}))
    assert err["param"] == "response.metadata"
    err = error_of(h.create_response(metadata={"k": "v" * 513}))
    assert err["code"] == "string_above_max_length"


def test_the_transcription_language_reaches_the_speech_plan() -> None:
    h = Harness()
    h.user_text("hola")
    assert start_of(h.create_response()).plan.language is None
    h2 = Harness()
    h2.update(audio={"input": {"transcription": {"model": "whisper-1", "language": "es"}}})
    h2.user_text("hola")
    assert start_of(h2.create_response()).plan.language == "es"


def test_the_detected_language_of_the_last_user_turn_reaches_the_speech_plan() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})

    def spoken_turn(text: str, language: str | None) -> StartResponse:
        h.append(pcm(200))
        item_id = events(h.client({"type": "input_audio_buffer.commit"}))[0]["item_id"]
        h.runtime(TranscriptDone(item_id, text, language=language))
        outs = h.create_response()
        h.runtime(ModelDone(response_id_of(outs)))
        return start_of(outs)

    assert spoken_turn("hola, ¿qué tal?", "es").plan.language == "es"
    assert spoken_turn("guten Tag", "de").plan.language == "de", "the latest turn's language wins"
    assert spoken_turn("", "en").plan.language == "de", "an empty transcript says nothing of the language"
    assert spoken_turn("ja", None).plan.language == "de", "an engine that detects nothing keeps the last one"
    h.update(audio={"input": {"transcription": {"model": "whisper-1", "language": "fr"}}})
    assert spoken_turn("bonjour", "en").plan.language == "fr", "the configured language comes first"
