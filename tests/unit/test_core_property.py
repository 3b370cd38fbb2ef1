"""Property test of the session core: whatever a client sends, in whatever order, interleaved with
whatever the runtime reports for the responses that are running, the core

* never raises (an exception out of `Session.handle` is a Parley bug),
* sends only events that validate against the openai SDK's GA or beta server-event union,
* echoes the client's event_id in every error it causes,
* keeps at most one response writing to the default conversation, and `default_response` is
  None or one of the active responses,
* ignores runtime output for responses that are no longer active,
* and afterwards still answers a fresh text turn exactly as the protocol says.

Bounded for CI (150 examples per dialect); soak with e.g. `PARLEY_FUZZ_EXAMPLES=20000`.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core.io import (
    CallMcpTool,
    Close,
    DetectSpeech,
    ListMcpTools,
    McpToolResult,
    McpToolsListed,
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
    TranscriptDelta,
    TranscriptDone,
    TranscriptFailed,
    TurnTranscript,
    UsageReport,
    VadResult,
)
from parley.core.session import Session, SessionSetup
from parley.protocol.ids import IdFactory
from parley.protocol.client_events import parse_client_event
from parley.protocol.session_config import VOICES
from tests.support.event_schema import validate_server_event

EXAMPLES = int(os.environ.get("PARLEY_FUZZ_EXAMPLES", "150"))
BETA_MODELS = ["gpt-realtime", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview"]
OUTPUT_TYPES = (Send, StartResponse, StopResponse, SessionChanged, UsageReport, Close, DetectSpeech, Transcribe,
                ListMcpTools, CallMcpTool)
MCP_TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
             {"name": "lookup", "input_schema": {"type": "object"}, "annotations": {"readOnlyHint": True}}]

# ---- value strategies ------------------------------------------------------------------------

short_text = st.text(max_size=24)
json_ish = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | short_text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


def optional_fields(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


fmt_ga = st.sampled_from([{"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcm"}, {"type": "audio/pcmu"},
                          {"type": "audio/pcma"}])
fmt_beta = st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw"])
server_vad = optional_fields(threshold=st.floats(0, 1), prefix_padding_ms=st.integers(0, 1000),
                             silence_duration_ms=st.integers(0, 2000), create_response=st.booleans(),
                             interrupt_response=st.booleans(),
                             idle_timeout_ms=st.none() | st.integers(5000, 30000)).map(
    lambda d: {"type": "server_vad", **d})
semantic_vad = optional_fields(eagerness=st.sampled_from(["low", "medium", "high", "auto"]),
                               create_response=st.booleans(), interrupt_response=st.booleans()).map(
    lambda d: {"type": "semantic_vad", **d})
turn_detection = st.none() | server_vad | semantic_vad
transcription = st.none() | optional_fields(model=st.sampled_from(["whisper-1", "gpt-4o-transcribe"]),
                                            language=st.sampled_from(["en", "fr"]), prompt=short_text)
noise = st.none() | st.fixed_dictionaries({"type": st.sampled_from(["near_field", "far_field"])})
function_tool = st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.sampled_from(["get_weather", "lookup", "f"])},
    optional={"description": short_text, "parameters": st.just({"type": "object", "properties": {}})})
mcp_tool = st.fixed_dictionaries({"type": st.just("mcp"), "server_label": st.sampled_from(["a", "b"]),
                                  "server_url": st.just("https://mcp.example/")},
                                 optional={"require_approval": st.sampled_from(["always", "never"]),
                                           "allowed_tools": st.sampled_from([["get_weather"], {"read_only": True}])})
tool_choice = st.sampled_from(["auto", "none", "required"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.sampled_from(["get_weather", "f"])})
max_tokens = st.integers(1, 4096) | st.just("inf")
truncation = st.sampled_from(["auto", "disabled"]) | st.fixed_dictionaries(
    {"type": st.just("retention_ratio"), "retention_ratio": st.floats(0, 1)},
    optional={"token_limits": optional_fields(post_instructions=st.integers(0, 10000))})
metadata = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=16), max_size=3)
voice = st.sampled_from(VOICES[:8])

ga_session = optional_fields(
    model=st.sampled_from(["gpt-realtime", "gpt-realtime-mini"]),
    instructions=short_text,
    output_modalities=st.sampled_from([["text"], ["audio"]]),
    audio=optional_fields(
        input=optional_fields(format=fmt_ga, transcription=transcription, noise_reduction=noise,
                              turn_detection=turn_detection),
        output=optional_fields(format=fmt_ga, voice=voice, speed=st.floats(0.25, 1.5)),
    ),
    tools=st.lists(function_tool | mcp_tool, max_size=2),
    tool_choice=tool_choice,
    max_output_tokens=max_tokens,
    tracing=st.none() | st.just("auto") | optional_fields(workflow_name=short_text),
    truncation=truncation,
    prompt=st.none() | st.fixed_dictionaries({"id": st.just("pmpt_1")}),
    include=st.none() | st.just(["item.input_audio_transcription.logprobs"]),
).map(lambda d: {"type": "realtime", **d})

beta_session = optional_fields(
    model=st.sampled_from(BETA_MODELS),
    modalities=st.sampled_from([["text"], ["text", "audio"], ["audio"]]),
    instructions=short_text,
    voice=voice,
    input_audio_format=fmt_beta,
    output_audio_format=fmt_beta,
    input_audio_transcription=transcription,
    input_audio_noise_reduction=noise,
    turn_detection=turn_detection,
    tools=st.lists(function_tool, max_size=2),
    tool_choice=st.sampled_from(["auto", "none", "required"]),
    temperature=st.floats(0.6, 1.2),
    max_response_output_tokens=max_tokens,
    speed=st.floats(0.25, 1.5),
)


def audio_b64() -> st.SearchStrategy[str]:
    ms = st.sampled_from([0, 20, 60, 100, 150]) | st.integers(0, 300)
    sizes = st.one_of(ms.map(lambda n: b"\x01\x00" * (24 * n)), ms.map(lambda n: b"\x01\x00" * (24 * n)),
                      st.binary(max_size=64))
    return sizes.map(lambda b: base64.b64encode(b).decode())


_known_item = st.integers(0, 40).map(lambda i: f"@item{i}")
ITEM_REF = st.one_of(_known_item, _known_item, _known_item, st.text(min_size=1, max_size=34),
                     st.sampled_from(["root", "item_x"]))
_known_call = st.integers(0, 40).map(lambda i: f"@call{i}")
CALL_REF = st.one_of(_known_call, _known_call, st.sampled_from(["call_nope", "x"]))
RESP_REF = st.integers(0, 40).map(lambda i: f"@resp{i}") | st.just("resp_nope")


class Known:
    """Ids the session has mentioned, so valid events can refer to real things.  Strategies stay
    static (fast): they draw placeholders such as `@item3`, resolved here when sent."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {"item": [], "call": [], "resp": []}

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, str) and value.startswith("@"):
            for kind, ids in self.ids.items():
                if value.startswith("@" + kind) and value[len(kind) + 1:].isdigit():
                    return ids[int(value[len(kind) + 1:]) % len(ids)] if ids else f"{kind}_unknown"
        return value

    def _add(self, kind: str, value: Any) -> None:
        if isinstance(value, str) and value and value not in self.ids[kind]:
            self.ids[kind].append(value)

    def learn(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if isinstance(item, dict):
            self._add("item", item.get("id"))
            self._add("call", item.get("call_id"))
        if event["type"] == "response.created":
            self._add("resp", event["response"]["id"])


def ga_item(*, beta: bool) -> st.SearchStrategy[dict[str, Any]]:
    text_part = st.builds(lambda t: {"type": "input_text", "text": t}, short_text)
    audio_part = st.fixed_dictionaries({"type": st.just("input_audio")},
                                       optional={"audio": audio_b64(), "transcript": short_text})
    out_text = st.builds(lambda t: {"type": "text" if beta else "output_text", "text": t}, short_text)
    out_audio = st.builds(lambda t: {"type": "audio" if beta else "output_audio", "transcript": t}, short_text)
    image = st.just({"type": "input_image", "image_url": "data:image/png;base64,AAAA"})
    message = st.one_of(
        st.lists(text_part, min_size=1, max_size=2).map(lambda c: {"role": "system", "content": c}),
        st.lists(text_part | audio_part | (st.nothing() if beta else image), min_size=1, max_size=2).map(
            lambda c: {"role": "user", "content": c}),
        st.lists(out_text | out_audio, min_size=1, max_size=1).map(lambda c: {"role": "assistant", "content": c}),
    ).map(lambda m: {"type": "message", **m})
    call = st.fixed_dictionaries({"type": st.just("function_call"), "name": st.just("f"), "arguments": st.just("{}")},
                                 optional={"call_id": st.sampled_from(["call_a", "call_b"])})
    result = st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": CALL_REF,
                                    "output": short_text})
    kinds = [message, call, result]
    if not beta:
        kinds.append(st.fixed_dictionaries({"type": st.just("mcp_approval_response"), "id": st.just("appr_1"),
                                            "approval_request_id": st.sampled_from(["mcpr_1", "@item0", "@item1", "@item2"]),
                                            "approve": st.booleans()}))
    with_id = st.fixed_dictionaries({}, optional={"id": ITEM_REF})
    return st.tuples(st.one_of(kinds), with_id).map(lambda t: {**t[0], **t[1]})


def response_params(*, beta: bool) -> st.SearchStrategy[dict[str, Any]]:
    ref = ITEM_REF.map(lambda i: {"type": "item_reference", "id": i})
    inputs = st.lists(ref | ga_item(beta=beta), max_size=3)
    common = dict(instructions=short_text, conversation=st.sampled_from(["auto", "none"]), metadata=metadata,
                  input=inputs, tool_choice=tool_choice if not beta else st.sampled_from(["auto", "none"]),
                  tools=st.lists(function_tool if beta else function_tool | mcp_tool, max_size=1))
    if beta:
        return optional_fields(modalities=st.sampled_from([["text"], ["text", "audio"]]), voice=voice,
                               output_audio_format=fmt_beta, temperature=st.floats(0.6, 1.2),
                               max_response_output_tokens=max_tokens, **common)
    return optional_fields(output_modalities=st.sampled_from([["text"], ["audio"]]), max_output_tokens=max_tokens,
                           audio=optional_fields(output=optional_fields(voice=voice, format=fmt_ga)), **common)


def valid_event(dialect: str) -> st.SearchStrategy[dict[str, Any]]:
    beta = dialect == "beta"
    ev = lambda kind, **fields: st.fixed_dictionaries({"type": st.just(kind), **fields})  # noqa: E731
    weighted: list[tuple[int, st.SearchStrategy[dict[str, Any]]]] = [
        (4, ev("session.update", session=beta_session if beta else ga_session)),
        (6, ev("input_audio_buffer.append", audio=audio_b64())),
        (3, ev("input_audio_buffer.commit")),
        (1, ev("input_audio_buffer.clear")),
        (5, ev("conversation.item.create", item=ga_item(beta=beta))),
        (2, st.fixed_dictionaries({"type": st.just("conversation.item.create"), "item": ga_item(beta=beta),
                                   "previous_item_id": ITEM_REF})),
        (2, ev("conversation.item.retrieve", item_id=ITEM_REF)),
        (1, ev("conversation.item.delete", item_id=ITEM_REF)),
        (2, ev("conversation.item.truncate", item_id=ITEM_REF, content_index=st.just(0),
               audio_end_ms=st.sampled_from([0, 50, 100, 150, 250]))),
        (1, ev("conversation.item.truncate", item_id=ITEM_REF, content_index=st.integers(0, 1),
               audio_end_ms=st.integers(0, 3000))),
        (4, ev("response.create")),
        (4, ev("response.create", response=response_params(beta=beta))),
        (1, ev("response.cancel")),
        (1, ev("response.cancel", response_id=RESP_REF)),
        (1, ev("output_audio_buffer.clear")),
    ]
    if beta:
        weighted.append((1, ev("transcription_session.update", session=optional_fields(input_audio_format=fmt_beta))))
    table = [strategy for weight, strategy in weighted for _ in range(weight)]
    choices = st.sampled_from(table).flatmap(lambda strategy: strategy)
    with_event_id = st.none() | st.text(max_size=10)
    return st.tuples(choices, with_event_id).map(
        lambda t: t[0] if t[1] is None else {**t[0], "event_id": t[1]})


# ---- mutations -------------------------------------------------------------------------------


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, path + (i,))
    return out


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def mutated(draw: st.DrawFn, event: dict[str, Any]) -> dict[str, Any]:
    ev = json.loads(json.dumps(event))
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(ev)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["add", "drop", "retype", "null"]))
        target = _at(ev, path)
        if op == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(["bogus", "type", "id", "audio", "session", "x"]) | st.text(max_size=6))] = \
                draw(json_ish)
        elif path and op in ("drop", "retype", "null"):
            parent = _at(ev, path[:-1])
            if op == "drop":
                del parent[path[-1]]
            else:
                parent[path[-1]] = None if op == "null" else draw(json_ish)
    return ev


# ---- the driver ------------------------------------------------------------------------------


class Driver:
    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        accept = (lambda m: m in BETA_MODELS) if dialect == "beta" else (lambda m: True)
        model = "gpt-4o-realtime-preview" if dialect == "beta" else "gpt-realtime"
        self.s = Session(SessionSetup(dialect=dialect, model=model, accept_model=accept),
                         IdFactory(1))
        self.known = Known()
        self.started: dict[str, str] = {}  # running response id -> modality
        self.turns: list[int] = []
        self.detect = 0
        self.listings: list[str] = []  # item ids of ListMcpTools outputs
        self.mcp_calls: list[str] = []  # item ids of CallMcpTool outputs
        self.check(self.s.start(), None)

    def check(self, outs: list[Any], client_event_id: str | None) -> list[Any]:
        for o in outs:
            assert isinstance(o, OUTPUT_TYPES), o
            if isinstance(o, Send):
                validate_server_event(o.event, self.dialect)
                if o.event["type"] == "error":
                    assert o.event["error"]["event_id"] == client_event_id, o.event
                self.known.learn(o.event)
                if o.event["type"] == "response.done":
                    self.started.pop(o.event["response"]["id"], None)
            elif isinstance(o, StartResponse):
                assert o.response_id in self.s.responses
                self.started[o.response_id] = o.plan.modality
            elif isinstance(o, StopResponse):
                self.started.pop(o.response_id, None)
            elif isinstance(o, Transcribe) and o.turn is not None:
                self.turns.append(o.turn)
            elif isinstance(o, DetectSpeech):
                self.detect += 1
            elif isinstance(o, ListMcpTools):
                self.listings.append(o.item_id)
            elif isinstance(o, CallMcpTool):
                assert o.response_id in self.s.responses
                self.mcp_calls.append(o.item_id)
        s = self.s
        assert s.default_response is None or s.default_response in s.responses
        assert sum(1 for r in s.responses.values() if r.conversation is not None) <= 1
        if s.default_response is None:
            assert all(r.conversation is None for r in s.responses.values())
        assert set(self.started) <= set(s.responses)
        return outs

    def client(self, raw: str) -> list[Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        eid = data.get("event_id") if isinstance(data, dict) else None
        return self.check(self.s.handle(parse_client_event(raw, self.dialect)), eid if isinstance(eid, str) else None)

    def runtime(self, inp: Any) -> list[Any]:
        rid = getattr(inp, "response_id", None)
        active = rid is None or rid in self.s.responses
        outs = self.check(self.s.handle(inp), None)
        if not active:
            assert outs == [], "runtime output for an inactive response must be ignored"
        return outs


_idx = st.integers(0, 40)
RUNTIME = st.one_of(
    st.tuples(st.just("text"), _idx, short_text),
    st.tuples(st.just("text"), _idx, short_text),
    st.tuples(st.just("tool"), _idx, st.integers(0, 2), st.sampled_from(["", "{", '"a": 1', "}", '{"city": "x"}']),
              st.none() | st.sampled_from(["f", "get_weather", "mcp__a__get_weather", "mcp__b__lookup"])),
    *[st.tuples(st.just("tool"), _idx, st.integers(0, 1), st.just('{"city": "x"}'), st.just("@mcp"))] * 2,
    *[st.tuples(st.just("mcp_list"), _idx, st.booleans() | st.just(True))] * 2,
    *[st.tuples(st.just("mcp_result"), _idx, st.booleans(), short_text)] * 2,
    *[st.tuples(st.just("audio"), _idx, st.sampled_from([40, 100, 200]) | st.integers(0, 400), short_text)] * 3,
    st.tuples(st.just("done"), _idx, st.sampled_from(["stop", "length", "content_filter", "tool_calls"])),
    st.tuples(st.just("failed"), _idx, short_text),
    st.tuples(st.just("stale"), _idx, short_text),
    st.tuples(st.just("transcript"), _idx, st.sampled_from([TranscriptDelta, TranscriptDone, TranscriptFailed]),
              short_text),
    st.tuples(st.just("turn"), _idx, short_text),
    st.tuples(st.just("vad"), st.lists(st.floats(0, 1) | st.sampled_from([0.0, 0.95]), max_size=24)),
)


def runtime_input(d: Driver, spec: tuple[Any, ...]) -> Any:
    """What the runtime could report now: output for a running response (audio only for audio
    responses), a transcript for a pending item, a VAD result, or a late event for a stale id."""
    kind, rest = spec[0], spec[1:]
    pick = lambda seq, i: seq[i % len(seq)]  # noqa: E731
    running = sorted(d.started)
    audio = sorted(r for r, m in d.started.items() if m == "audio")
    pending = sorted(d.s.pending_transcripts)
    if kind in ("text", "tool", "done", "failed") and running:
        rid = pick(running, rest[0])
        if kind == "tool" and rest[3] == "@mcp":  # one of the MCP tools this response offers
            rest = (*rest[:3], pick(sorted(d.s.responses[rid].mcp.tools) or ["f"], rest[0]))
        return {"text": lambda: ModelText(rid, rest[1]), "tool": lambda: ModelToolCall(rid, *rest[1:]),
                "done": lambda: ModelDone(rid, rest[1]), "failed": lambda: ModelFailed(rid, rest[1])}[kind]()
    if kind == "audio" and audio:
        return ModelAudio(pick(audio, rest[0]), b"\x00\x00" * (24 * rest[1]), rest[2], float(rest[1]))
    if kind == "transcript" and pending:
        return rest[1](pick(pending, rest[0]), rest[2])
    if kind == "turn" and d.turns:
        return TurnTranscript(pick(d.turns, rest[0]), rest[1])
    if kind == "vad" and d.detect:
        return VadResult(rest[0], 32.0)
    if kind == "mcp_list" and d.listings:
        return McpToolsListed(pick(d.listings, rest[0]), *((MCP_TOOLS, None) if rest[1] else (None, "unreachable")))
    if kind == "mcp_result" and d.mcp_calls:
        error = None if rest[1] else {"type": "tool_execution_error", "message": rest[2]}
        return McpToolResult(pick(d.mcp_calls, rest[0]), rest[2] if rest[1] else None, error)
    stale = d.known.ids["resp"] or ["resp_nope"]
    return ModelText(pick(stale, rest[0] if isinstance(rest[0], int) else 0), "late")


_TYPES = st.sampled_from(["session.update", "response.create", "conversation.item.create", "response.cancel",
                          "input_audio_buffer.append", "nope"])
_RANDOM_DICT = st.tuples(st.dictionaries(st.text(max_size=8), json_ish, max_size=4), st.none() | _TYPES).map(
    lambda t: t[0] if t[1] is None else {**t[0], "type": t[1]})


def client_messages(dialect: str) -> st.SearchStrategy[Any]:
    """A client message: a dict (placeholders resolved before sending) or raw text."""
    valid = valid_event(dialect)
    junk = st.one_of(_RANDOM_DICT, json_ish.map(json.dumps), st.text(max_size=20))
    table = [valid] * 15 + [valid.flatmap(mutated)] * 4 + [junk]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


CLIENT = {"ga": client_messages("ga"), "beta": client_messages("beta")}
STEPS = {d: st.lists(st.one_of(st.tuples(st.just("runtime"), RUNTIME),
                               st.tuples(st.just("client"), CLIENT[d])), min_size=8, max_size=40)
         for d in ("ga", "beta")}


def fresh_text_turn(d: Driver) -> None:
    """After any history: finish what runs, then one plain text turn must go by the book."""
    s = d.s
    for item_id in sorted(s.pending_transcripts):
        d.runtime(TranscriptDone(item_id, "words"))
    for rid in list(s.responses):
        outs = d.client(json.dumps({"type": "response.cancel", "response_id": rid}))
        assert any(isinstance(o, Send) and o.event["type"] == "response.done" for o in outs)
    assert not s.responses and s.default_response is None
    if d.dialect == "ga":
        update = {"type": "realtime", "output_modalities": ["text"], "instructions": "",
                  "truncation": "auto", "audio": {"input": {"turn_detection": None}}}
    else:
        update = {"modalities": ["text"], "instructions": "", "truncation": "auto", "turn_detection": None}
    outs = d.client(json.dumps({"type": "session.update", "session": update}))
    assert isinstance(outs[0], Send) and outs[0].event["type"] == "session.updated", outs
    outs = d.client(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "ping"}]}}))
    assert [o.event["type"] for o in outs if isinstance(o, Send)] == (
        ["conversation.item.created"] if d.dialect == "beta" else ["conversation.item.added", "conversation.item.done"])
    outs = d.client(json.dumps({"type": "response.create"}))
    for call in [o for o in outs if isinstance(o, CallMcpTool)]:  # approved MCP calls run first
        outs += d.runtime(McpToolResult(call.item_id, "ok"))
    starts = [o for o in outs if isinstance(o, StartResponse)]
    assert len(starts) == 1, outs
    assert starts[0].plan.request.messages[-1] == {"role": "user", "content": "ping"}
    rid = starts[0].response_id
    outs = d.runtime(ModelText(rid, "pong")) + d.runtime(ModelDone(rid))
    text = "response.text" if d.dialect == "beta" else "response.output_text"
    expected = ["response.output_item.added", "conversation.item.created" if d.dialect == "beta" else
                "conversation.item.added", "response.content_part.added", f"{text}.delta", f"{text}.done",
                "response.content_part.done"]
    if d.dialect == "ga":
        expected.append("conversation.item.done")
    expected += ["response.output_item.done", "response.done", "UsageReport"]
    assert [o.event["type"] if isinstance(o, Send) else type(o).__name__ for o in outs] == expected
    done = [o.event for o in outs if isinstance(o, Send)][-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == "pong"


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_any_event_sequence_keeps_the_session_sound(dialect: str, data: st.DataObject) -> None:
    d = Driver(dialect)
    if dialect == "ga" and data.draw(st.booleans(), label="mcp server"):  # else MCP calls are rare
        policy = data.draw(st.sampled_from(["always", "never"]), label="require_approval")
        server = {"type": "mcp", "server_label": "a", "server_url": "https://mcp.example/", "require_approval": policy}
        d.client(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [server]}}))
        d.runtime(McpToolsListed(d.listings[-1], MCP_TOOLS))
    for kind, spec in data.draw(STEPS[dialect], label="steps"):
        if kind == "runtime":
            d.runtime(runtime_input(d, spec))
            continue
        raw = json.dumps(d.known.resolve(spec)) if not isinstance(spec, str) else spec
        d.client(raw)
    fresh_text_turn(d)
