"""Fuzzing the realtime WebSocket of a real Parley process, driven by hypothesis.

One raw `websockets` session receives, example after example, random and mutated client
events: valid events of every GA type (some with ~1 MB strings or audio), the same with a key
dropped or added, a value of the wrong type or an unknown `type`; events with nothing to act on
(cancel, truncate, commit, delete, retrieve); text that is not JSON, JSON that is not an object,
binary frames, and floods of 200 appends.  After each example the same session must still answer
a probe -- a `conversation.item.create` plus a text `response.create` -- with a completed
`response.done`; every event the server sent must validate against the openai SDK's GA union
and be standard JSON; nothing may report a `server_error` (a crash).  At the end the server's
RSS must not have grown by more than 150 MB and its live sessions must return to 0.

Hypothesis only generates here: the session is shared by all examples, so a failing example
cannot be replayed or shrunk on its own.  Failures are collected with the session's history (the
examples before them), the session is reopened, and all are reported at the end; rerun a
failure with the printed `PARLEY_FUZZ_SEED`.  CI runs 30 examples within a 35 s budget;
`PARLEY_FUZZ_EXAMPLES=2000` makes a soak run (with no time budget unless PARLEY_FUZZ_BUDGET_S).

The bugs this fuzz found have regression tests at the bottom.  The flags below switch their
triggers (lone surrogates, NaN/Infinity, deep nesting) in the fuzz on or off: turn one off while
its bug is open (and its test marked xfail), so that the fuzz keeps finding new ones.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import hashlib
import json
import math
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st

from tests.support.event_schema import validate_server_event
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import CutMidStream, HTTPError, Malformed, ScriptedLLMServer, Text, ToolCall
from tests.support.scripted_stt import ScriptedSTTServer
from tests.support.scripted_tts import ScriptedTTSServer
from tests.support.speech import FliteMissing, make_speech

_SOAK = "PARLEY_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("PARLEY_FUZZ_EXAMPLES", "30"))
BUDGET_S = float(os.environ.get("PARLEY_FUZZ_BUDGET_S", "inf" if _SOAK else "35"))
SEED = int(os.environ.get("PARLEY_FUZZ_SEED") or random.getrandbits(32))
VERBOSE = bool(os.environ.get("PARLEY_FUZZ_VERBOSE"))  # print every example (with pytest -s)
MAX_FAILURES = 3  # stop early: later failures are usually the same bug again
RSS_GROWTH_LIMIT_MB = 150

HUGE = 1_000_000  # bytes of a "huge" string or base64 audio
FLOOD = 200
ACTIONS_PER_EXAMPLE = 10
PROBE_TIMEOUT_S = 15
FILLER_REPLY = "Ok."  # every model reply during an example: short, so it is cheap to speak
PROBE_REPLY = "Probe answered."

# Inputs that triggered the bugs pinned by the regression tests at the bottom.
LONE_SURROGATES = True  # test_lone_surrogate_escape_does_not_kill_the_session
NON_FINITE_NUMBERS = True  # test_non_finite_numbers_are_refused_not_echoed
DEEP_NESTING = True  # test_deeply_nested_json_does_not_kill_the_session
SAFE_DEPTH = 40  # nesting used while DEEP_NESTING is off


# --- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_llm() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_server(fuzz_llm: ScriptedLLMServer) -> Iterator[ParleyServer]:
    """Parley with every engine remote and scripted (fast), so the fuzz reaches every path:
    text and spoken responses, VAD turns and transcripts."""
    with ScriptedTTSServer() as tts, ScriptedSTTServer() as stt:
        env = {"PARLEY_LLM_BASE_URL": fuzz_llm.base_url, "PARLEY_LLM_MODEL": fuzz_llm.model,
               "PARLEY_LLM_TIMEOUT_S": "5", "PARLEY_LLM_MAX_RETRIES": "0",
               "PARLEY_TOKENS_PER_MINUTE": str(10**12),  # huge contexts, many responses: no rate limit here
               "PARLEY_TTS_ENGINE": "openai", "PARLEY_TTS_BASE_URL": tts.base_url,
               "PARLEY_STT_ENGINE": "openai", "PARLEY_STT_BASE_URL": stt.base_url}
        with ParleyServer(env, name="fuzz") as server:
            yield server


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def live_sessions(server: ParleyServer) -> int:
    return int(httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5).json()["live_sessions"])


def wait_for_no_sessions(server: ParleyServer, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (live := live_sessions(server)) != 0:
        assert time.monotonic() < deadline, f"{live} sessions still live {timeout_s:g}s after the clients left"
        time.sleep(0.05)


# --- what the fuzzer sends -----------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A placeholder for an id the session has shown us ("item", "call" or "response"),
    resolved when the event is sent: the fuzz reaches real items, not only made-up ids."""

    kind: str
    index: int


@dataclass(frozen=True)
class Deep:
    """JSON nested `depth` levels deep, spliced in as text when the event is sent (so no
    recursive Python here -- deepcopy, repr, json.dumps -- ever walks it)."""

    depth: int


def nested_text(depth: int) -> str:
    opens = "".join('{"a": ' if i % 2 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opens + "1" + closes


def dumps(value: Any) -> str:
    """JSON text of a generated value, `Deep` placeholders spliced in."""
    deep: dict[str, str] = {}

    def placeholder(obj: Any) -> str:
        if not isinstance(obj, Deep):
            raise TypeError(f"cannot encode {obj!r}")
        marker = f"deep-{uuid.uuid4().hex}"
        deep[json.dumps(marker)] = nested_text(obj.depth)
        return marker

    text = json.dumps(value, default=placeholder)
    for marker, nested in deep.items():
        text = text.replace(marker, nested, 1)
    return text


@dataclass(frozen=True)
class Send:
    """One frame: an event (dict, placeholders resolved at send time) or raw text/bytes.
    `raw` mutates the encoded event: "truncate" (a prefix: never valid JSON), "trailing"
    (junk after it), "binary" (the same bytes in a binary frame)."""

    payload: Any
    label: str
    raw: str | None = None


@dataclass(frozen=True)
class Flood:
    event: dict[str, Any]
    count: int
    label: str


@dataclass(frozen=True)
class Speak:
    """A spoken sentence appended in `chunk_ms` pieces, as a microphone would (but faster)."""

    chunk_ms: int
    label: str


@dataclass(frozen=True)
class Pause:
    ms: int
    label: str = "pause"


Action = Send | Flood | Speak | Pause


def _size(n: int) -> str:
    return f"{n / 1e6:.1f}MB" if n >= 100_000 else f"{n}B"


# --- strategies: values --------------------------------------------------------------------


def weighted(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], rare_in: int = 10) -> st.SearchStrategy[Any]:
    """`rare` about once in `rare_in` draws, else `usual`."""
    return st.integers(0, rare_in - 1).flatmap(lambda i: rare if i == 0 else usual)


def pick(*choices: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of `choices`, each as likely (`st.one_of` favours the first ones); repeat one to
    weight it."""
    return st.sampled_from(choices).flatmap(lambda chosen: chosen)


# sizes spread over orders of magnitude, so that ~1 MB comes up often (not only near 1 kB)
huge_sizes = st.tuples(st.sampled_from([1_000, 10_000, 100_000, 400_000, HUGE]), st.integers(0, 999)).map(
    lambda t: t[0] - t[1])


_UNITS = ["a", "word ", "é", "語", "🙂", '{"x": [1]}', "\n", "Stop. "]
huge_text = st.builds(lambda n, unit: unit * max(1, n // len(unit.encode())), huge_sizes, st.sampled_from(_UNITS))
small_text = st.text(max_size=30)
if LONE_SURROGATES:
    small_text = st.one_of(small_text, st.sampled_from(["\ud83d", "half \ud83d emoji", "\udc00x"]))
texts = weighted(small_text, huge_text)


@functools.lru_cache(maxsize=1)
def _speech() -> bytes:
    """A spoken sentence (flite) with silence around it: Silero hears a turn in it."""
    try:
        return make_speech("turn off the lights in the kitchen", lead_ms=300, tail_ms=900).pcm_bytes()
    except FliteMissing:
        return _pcm("tone", 2000, 1)


def _pcm(kind: str, ms: int, seed_: int) -> bytes:
    n = ms * 24  # PCM16 mono 24 kHz
    if kind == "speech":
        return _speech()
    if kind == "silence":
        return bytes(2 * n)
    if kind == "noise":
        return np.random.default_rng(seed_).integers(-8000, 8000, n, dtype="<i2").tobytes()
    t = np.arange(n) / 24_000
    return (6000 * np.sin(2 * np.pi * (200 + seed_ % 600) * t)).astype("<i2").tobytes()


audio_b64 = st.one_of(
    st.builds(lambda kind, ms, s: base64.b64encode(_pcm(kind, ms, s)).decode(),
              st.sampled_from(["silence", "noise", "tone", "speech"]),
              weighted(st.integers(0, 600), huge_sizes.map(lambda n: n * 3 // 4 // 48)), st.integers(0, 2**16)),
    st.sampled_from(["", "!!!not base64!!!", "AAA=", "AA", "AAE", "====", "QUJD\nREVG"]),  # bad or odd-length
)

_floats = st.floats(allow_nan=NON_FINITE_NUMBERS, allow_infinity=NON_FINITE_NUMBERS)
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), _floats, small_text)
json_values = st.recursive(json_leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                               st.dictionaries(small_text, kids, max_size=4)),
                           max_leaves=12)


json_objects = st.one_of(st.dictionaries(small_text, json_values, max_size=4),
                         st.integers(1, 4000 if DEEP_NESTING else SAFE_DEPTH).map(lambda d: {"deep": Deep(d)}))

# A value of some other type, for mutations (NaN and Infinity only with NON_FINITE_NUMBERS).
weird_values = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1.5, 2**64, -(2**63), "", "x", [], {}, [None], {"": None},
                     "inf", "null", "true", "0"]),
    json_values, huge_text,
    *([st.sampled_from([math.nan, math.inf, -math.inf])] if NON_FINITE_NUMBERS else []),
)

# --- strategies: valid GA client events ----------------------------------------------------

event_ids = weighted(st.text(max_size=24), st.text(min_size=500, max_size=600))
known_items = st.builds(Known, st.just("item"), st.integers(0, 40))
item_ids = st.one_of(known_items, known_items, st.text(min_size=1, max_size=32), st.just("root"))
call_ids = st.one_of(st.builds(Known, st.just("call"), st.integers(0, 10)), st.text(max_size=40))
response_ids = st.one_of(st.builds(Known, st.just("response"), st.integers(0, 10)), st.text(max_size=40))
voices = st.one_of(st.sampled_from(["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse",
                                    "marin", "cedar"]),
                   st.text(min_size=1, max_size=64), st.builds(lambda v: {"id": v}, st.text(max_size=20)))
formats = st.sampled_from([{"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcmu"}, {"type": "audio/pcma"}])
modalities = st.sampled_from([["text"], ["audio"]])
max_tokens = st.one_of(st.integers(1, 4096), st.just("inf"))


def event(kind: str, required: dict[str, Any] | None = None, optional: dict[str, Any] | None = None
          ) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(kind), **(required or {})},
                                 optional={"event_id": event_ids, **(optional or {})})


def part(kind: str, required: dict[str, Any] | None = None, optional: dict[str, Any] | None = None
         ) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(kind), **(required or {})}, optional=optional or {})


input_text = part("input_text", {"text": texts})
input_audio = part("input_audio", optional={"audio": audio_b64, "transcript": texts})
input_image = part("input_image", {"image_url": st.sampled_from(["data:image/png;base64,iVBORw0KGgo=",
                                                                 "https://example.invalid/cat.png"])},
                   {"detail": st.sampled_from(["auto", "low", "high"])})
output_text = part("output_text", {"text": texts})
output_audio = part("output_audio", optional={"transcript": texts})
item_common = {"id": st.text(min_size=1, max_size=32), "status": st.sampled_from(["completed", "incomplete",
                                                                                  "in_progress"])}
messages = st.one_of(
    part("message", {"role": st.just("user"),
                     "content": st.lists(st.one_of(input_text, input_audio, input_image), min_size=1, max_size=3)},
         item_common),
    part("message", {"role": st.just("system"), "content": st.lists(input_text, min_size=1, max_size=2)},
         item_common),
    part("message", {"role": st.just("assistant"),
                     "content": st.lists(st.one_of(output_text, output_audio), min_size=1, max_size=2)},
         item_common),
)
items = st.one_of(
    messages, messages,
    part("function_call", {"name": small_text, "arguments": st.one_of(texts, json_objects.map(dumps))},
         {"call_id": st.text(max_size=40), **item_common}),
    part("function_call_output", {"call_id": call_ids, "output": texts}, item_common),
    part("mcp_approval_response", {"id": st.text(min_size=1, max_size=32), "approval_request_id": small_text,
                                   "approve": st.booleans()}),
)
function_tools = part("function", {"name": st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)},
                      {"description": texts, "parameters": json_objects})
tool_choices = st.one_of(st.sampled_from(["auto", "none", "required"]),
                         part("function", {"name": small_text}))
server_vad = part("server_vad", optional={
    "threshold": st.floats(0, 1), "prefix_padding_ms": st.integers(0, 10_000),
    "silence_duration_ms": st.integers(0, 10_000), "idle_timeout_ms": st.one_of(st.none(), st.integers(5000, 30000)),
    "create_response": st.booleans(), "interrupt_response": st.booleans()})
semantic_vad = part("semantic_vad", optional={"eagerness": st.sampled_from(["low", "medium", "high", "auto"]),
                                              "create_response": st.booleans(), "interrupt_response": st.booleans()})
transcription = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["whisper-1", "gpt-4o-transcribe", "pocketsphinx"]), "language": st.sampled_from(["en", "fr"]),
    "prompt": texts}))
audio_config = st.fixed_dictionaries({}, optional={
    "input": st.fixed_dictionaries({}, optional={
        "format": formats, "transcription": transcription, "turn_detection": st.one_of(st.none(), server_vad, semantic_vad),
        "noise_reduction": st.one_of(st.none(), part("near_field"), part("far_field"))}),
    "output": st.fixed_dictionaries({}, optional={"format": formats, "voice": voices, "speed": st.floats(0.25, 1.5)}),
})
session_body = st.fixed_dictionaries({"type": st.just("realtime")}, optional={
    "model": st.sampled_from(["gpt-realtime", "gpt-realtime-mini", "no-such-model"]),
    "instructions": texts, "output_modalities": modalities, "audio": audio_config,
    "tools": st.lists(function_tools, max_size=3), "tool_choice": tool_choices, "max_output_tokens": max_tokens,
    "truncation": st.one_of(st.sampled_from(["auto", "disabled"]),
                            part("retention_ratio", {"retention_ratio": st.floats(0, 1)})),
    "tracing": st.one_of(st.none(), st.just("auto")),
    "include": st.one_of(st.none(), st.just(["item.input_audio_transcription.logprobs"])),
})
response_params = st.fixed_dictionaries({}, optional={
    "output_modalities": modalities, "instructions": texts, "max_output_tokens": max_tokens,
    "conversation": st.sampled_from(["auto", "none"]),
    "metadata": st.dictionaries(st.text(max_size=64), st.text(max_size=100), max_size=4),
    "input": st.lists(st.one_of(items, part("item_reference", {"id": item_ids})), max_size=3),
    "tools": st.lists(function_tools, max_size=2), "tool_choice": tool_choices,
    "audio": st.fixed_dictionaries({"output": st.fixed_dictionaries({}, optional={"voice": voices, "format": formats})}),
})

valid_events = pick(
    event("session.update", {"session": session_body}),
    event("session.update", {"session": session_body}),
    event("session.update", {"session": part("transcription")}),  # the wrong session type
    event("input_audio_buffer.append", {"audio": audio_b64}),
    event("input_audio_buffer.append", {"audio": audio_b64}),
    event("input_audio_buffer.commit"),
    event("input_audio_buffer.clear"),
    event("output_audio_buffer.clear", optional={"response_id": response_ids}),
    event("conversation.item.create", {"item": items}, {"previous_item_id": item_ids}),
    event("conversation.item.create", {"item": items}),
    event("conversation.item.retrieve", {"item_id": item_ids}),
    event("conversation.item.delete", {"item_id": item_ids}),
    event("conversation.item.truncate", {"item_id": item_ids, "content_index": st.integers(0, 3),
                                         "audio_end_ms": st.integers(0, 20_000)}),
    event("conversation.item.truncate", {"item_id": known_items, "content_index": st.just(0),
                                         "audio_end_ms": st.integers(0, 1_000)}),
    event("response.create", optional={"response": response_params}),
    event("response.create", optional={"response": response_params}),
    event("response.create"),
    event("response.create"),
    event("response.cancel", optional={"response_id": response_ids}),
)

# --- strategies: mutations and junk --------------------------------------------------------


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value inside `value` (not the root)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def _get(root: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        root = root[key]
    return root


def _container(root: Any, path: tuple[Any, ...]) -> Any:
    return _get(root, path[:-1])


def _path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


_UNKNOWN_TYPES = ["", "bogus.event", "response.done", "session.created", "transcription_session.update",
                  "Session.Update", "session.update ", "response.create\x00", "input_audio_buffer.append.extra"]


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Send:
    """A valid event with one thing wrong: a key dropped or added, a value of another type or
    huge, an unknown `type`, or its encoding broken."""
    ev = copy.deepcopy(base)
    kind = base["type"]
    op = draw(st.sampled_from(["drop", "add", "retype", "retype", "huge", "type", "raw"]))
    where = list(paths(ev))
    if op == "type":
        ev["type"] = draw(st.one_of(st.sampled_from(_UNKNOWN_TYPES), small_text, weird_values))
        return Send(ev, f"{kind} with type={str(ev['type'])[:30]!r}")
    if op == "raw":
        how = draw(st.sampled_from(["truncate", "trailing", "binary"]))
        return Send(ev, f"{kind} {how}", raw=how)
    if op == "add" or not where:
        path = draw(st.sampled_from([p for p in where if isinstance(_get(ev, p), dict)] or [()]))
        target = _get(ev, path)
        key = draw(st.one_of(st.sampled_from(["bogus", "type", "event_id", "id", ""]), small_text))
        target[key] = draw(weird_values)
        return Send(ev, f"{kind} +{_path_name((*path, key))[:40]}")
    path = draw(st.sampled_from(where))
    holder = _container(ev, path)
    if op == "drop":
        del holder[path[-1]]
        return Send(ev, f"{kind} -{_path_name(path)}")
    value = draw(huge_text if op == "huge" else weird_values)
    holder[path[-1]] = value
    shown = _size(len(value)) if isinstance(value, str) and len(value) > 100 else repr(value)[:20]
    return Send(ev, f"{kind} {_path_name(path)}={shown}")


def _as_send(ev: dict[str, Any]) -> Send:
    size = len(json.dumps(ev, default=repr))
    return Send(ev, f"{ev['type']}" + (f" {_size(size)}" if size > 100_000 else ""))


junk_frames = st.one_of(
    st.text(max_size=60).map(lambda t: Send(t, "junk text")),
    st.binary(max_size=60).map(lambda b: Send(b, "binary junk")),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: Send(json.dumps(v), "json non-object")),
    st.integers(10, 200_000).map(lambda n: Send("[" * n, f"{n} open brackets")),
    st.integers(10, 4000 if DEEP_NESTING else SAFE_DEPTH).map(lambda n: Send(nested_text(n), f"nested {n}")),
    st.just(Send("", "empty text")),
    huge_sizes.map(lambda n: Send("x" * n, f"{_size(n)} of junk text")),
)

flood_events = st.one_of(
    st.builds(lambda kind, ms, s: {"type": "input_audio_buffer.append", "audio": base64.b64encode(_pcm(kind, ms, s)).decode()},
              st.sampled_from(["silence", "noise", "tone"]), st.sampled_from([10, 20, 40]), st.integers(0, 999)),
    st.sampled_from([{"type": "input_audio_buffer.commit"}, {"type": "response.cancel"},
                     {"type": "input_audio_buffer.clear"}, {"type": "conversation.item.retrieve", "item_id": "nope"}]),
)

actions: st.SearchStrategy[Action] = pick(
    valid_events.map(_as_send), valid_events.map(_as_send), valid_events.map(_as_send),
    valid_events.flatmap(mutated), valid_events.flatmap(mutated), valid_events.flatmap(mutated),
    junk_frames, junk_frames,
    pick(flood_events.map(lambda e: Flood(e, FLOOD, f"{FLOOD} x {e['type']}")),
         st.just(Flood({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()},
                       FLOOD, f"{FLOOD} x input_audio_buffer.append"))),
    st.sampled_from([20, 100, 3000]).map(lambda ms: Speak(ms, f"speech in {ms}ms appends")),
    st.integers(0, 60).map(lambda ms: Pause(ms, f"pause {ms}ms")),
)
# what the model answers to the example's responses, in order (then FILLER_REPLY)
llm_replies = st.lists(st.sampled_from([
    Text("One. Two, three; four!"), ToolCall("lookup", {"q": "lights"}), ToolCall("lookup", "{not json"),
    CutMidStream("Cut short"), HTTPError(500), HTTPError(400), Malformed(),
]), max_size=3)
examples = st.tuples(llm_replies, st.lists(actions, min_size=2, max_size=ACTIONS_PER_EXAMPLE))


def describe(script: tuple[list[Any], list[Action]]) -> str:
    replies, steps = script
    plan = f"[model: {', '.join(type(r).__name__ for r in replies)}] " if replies else ""
    return plan + "; ".join(a.label for a in steps)


# --- the client ----------------------------------------------------------------------------


class SessionDied(AssertionError):
    pass


def _strict_json(raw: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(raw, parse_constant=refuse)


@dataclass
class FuzzSession:
    """A raw WebSocket session; a background reader validates and records every server event
    and tracks what the session holds (items, calls, responses in flight, its config)."""

    url: str
    headers: dict[str, str]
    llm: ScriptedLLMServer
    ws: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)  # this example's
    problems: list[str] = field(default_factory=list)
    known: dict[str, list[str]] = field(default_factory=lambda: {"item": [], "call": [], "response": []})
    active: set[str] = field(default_factory=set)  # responses created and not yet done
    config: dict[str, Any] = field(default_factory=dict)
    frames_sent: int = 0
    frames_received: int = 0
    seen: Counter[str] = field(default_factory=Counter)  # event types (and statuses, error codes) received
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, max_size=None, open_timeout=10)
        self.known = {"item": [], "call": [], "response": []}
        self.active, self.events, self.problems = set(), [], []
        self._reader = asyncio.create_task(self._read())
        created = await self.wait_for(lambda e: e["type"] == "session.created", 10)
        self.config = created["session"]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader

    @property
    def closed(self) -> bool:
        return self._reader is None or self._reader.done()

    # receiving
    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self._take(raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._changed.set()

    def _take(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self.problems.append(f"a binary frame from the server: {raw[:80]!r}")
            return
        self.frames_received += 1
        try:
            ev = _strict_json(raw)
        except ValueError as exc:
            self.problems.append(f"not standard JSON ({exc}): {raw[:300]}")
            try:
                ev = json.loads(raw)  # follow it all the same
            except ValueError:
                return
        try:
            validate_server_event(ev, "ga")
        except AssertionError as exc:
            self.problems.append(str(exc)[:1500])
        try:
            self._track(ev)
        except Exception as exc:  # noqa: BLE001 - a malformed event; validation said why
            self.problems.append(f"cannot follow {str(ev)[:200]}: {exc!r}")
            return
        self.events.append(ev)
        self._changed.set()

    def _track(self, ev: dict[str, Any]) -> None:
        kind = ev["type"]
        self.seen[kind] += 1
        if kind == "response.done":
            self.seen[f"response.done:{ev['response']['status']}"] += 1
        elif kind == "error":
            self.seen[f"error:{ev['error']['code']}"] += 1
        item = ev.get("item") if isinstance(ev.get("item"), dict) else None
        if item is not None and kind in ("conversation.item.added", "conversation.item.done",
                                         "response.output_item.added"):
            if item.get("id") not in self.known["item"]:
                self.known["item"].append(item.get("id"))
            if item.get("type") == "function_call" and item.get("call_id") not in self.known["call"]:
                self.known["call"].append(item.get("call_id"))
        elif kind == "conversation.item.deleted" and ev.get("item_id") in self.known["item"]:
            self.known["item"].remove(ev["item_id"])
        elif kind == "response.created":
            self.active.add(ev["response"]["id"])
            self.known["response"].append(ev["response"]["id"])
        elif kind == "response.done":
            self.active.discard(ev["response"]["id"])
            error = ((ev["response"].get("status_details") or {}).get("error") or {})
            if error.get("code") == "server_error":
                self.problems.append(f"a response crashed: {error}")
        elif kind == "session.updated":
            self.config = ev["session"]
        elif kind == "error" and ev["error"].get("type") == "server_error":
            self.problems.append(f"a server_error event: {ev['error']}")
        elif kind == "conversation.item.input_audio_transcription.failed" and ev["error"].get("code") == "server_error":
            self.problems.append(f"a transcription crashed: {ev['error']}")
        for pool in self.known.values():  # bound what a long session remembers
            del pool[:-200]

    async def until(self, check: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Wait until `check()` is truthy (re-checked on every event); return its value."""
        deadline = time.monotonic() + timeout_s
        while not (result := check()):
            if self.closed:
                raise SessionDied(f"the server closed the session ({self.ws.close_code} {self.ws.close_reason!r}) "
                                  f"while waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout_s:g}s; last events: "
                                     f"{[e['type'] for e in self.events[-15:]]}; problems: {self.problems[:3]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        return result

    async def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout_s: float, what: str = "event",
                       since: int = 0) -> dict[str, Any]:
        return await self.until(lambda: next((e for e in self.events[since:] if match(e)), None), timeout_s, what)

    # sending
    def _resolve(self, value: Any) -> Any:
        if isinstance(value, Known):
            pool = self.known[value.kind]
            return pool[value.index % len(pool)] if pool else f"unknown_{value.kind}_{value.index}"
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        return value

    async def send(self, frame: str | bytes) -> None:
        try:
            await self.ws.send(frame)
        except websockets.ConnectionClosed:
            raise SessionDied(f"the server closed the session ({self.ws.close_code} {self.ws.close_reason!r})") from None
        self.frames_sent += 1

    async def play(self, action: Action) -> None:
        if isinstance(action, Pause):
            await asyncio.sleep(action.ms / 1000)
        elif isinstance(action, Speak):
            pcm, step = _speech(), 48 * action.chunk_ms
            for start in range(0, len(pcm), step):
                await self.send(json.dumps({"type": "input_audio_buffer.append",
                                            "audio": base64.b64encode(pcm[start:start + step]).decode()}))
        elif isinstance(action, Flood):
            frame = json.dumps(action.event)
            for _ in range(action.count):
                await self.send(frame)
        elif isinstance(action.payload, (str, bytes)):
            await self.send(action.payload)
        else:
            text = dumps(self._resolve(action.payload))
            if action.raw == "truncate":
                text = text[: max(1, len(text) // 2)]
            elif action.raw == "trailing":
                text += ' {"type": "response.cancel"}'
            await self.send(text.encode() if action.raw == "binary" else text)

    # the probe
    async def quiet(self, tag: str) -> None:
        """Wait until the server has handled everything sent so far and no response runs."""
        barrier = f"barrier-{tag}"
        await self.send(json.dumps({"type": "conversation.item.retrieve", "event_id": barrier,
                                    "item_id": f"no-such-item-{uuid.uuid4().hex}"}))  # longer than any item id
        await self.wait_for(lambda e: e["type"] == "error" and e["error"].get("event_id") == barrier,
                            PROBE_TIMEOUT_S, "the barrier's error")
        await self.until(lambda: not self.active, PROBE_TIMEOUT_S, f"the end of responses {sorted(self.active)}")

    async def probe(self, tag: str) -> None:
        """The session still works: a user message and a text response on it complete."""
        await self.quiet(tag)
        self.llm.clear()
        self.llm.enqueue(*[Text(PROBE_REPLY)] * 20)
        words = f"probe {tag}"
        mark = len(self.events)
        await self.send(json.dumps({"type": "conversation.item.create", "event_id": f"probe-item-{tag}", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]}}))
        for attempt in range(3):
            request = f"probe-response-{tag}-{attempt}"
            await self.send(json.dumps({"type": "response.create", "event_id": request, "response": {
                "conversation": "auto", "output_modalities": ["text"], "instructions": "", "tools": [],
                "tool_choice": "auto", "max_output_tokens": "inf", "metadata": {"probe": tag}}}))

            def answer(e: dict[str, Any]) -> bool:
                return (e["type"] == "response.done" and (e["response"].get("metadata") or {}).get("probe") == tag) \
                    or (e["type"] == "error" and e["error"].get("event_id") in (request, f"probe-item-{tag}"))

            ev = await self.wait_for(answer, PROBE_TIMEOUT_S, "the probe's response.done", since=mark)
            if ev["type"] == "response.done":
                break
            assert ev["error"]["event_id"] == request, f"the probe's item was refused: {ev['error']}"
            assert ev["error"]["code"] == "conversation_already_has_active_response", ev["error"]
            mark = len(self.events)
            await self.quiet(f"{tag}-{attempt}")  # a turn started on its own (VAD): let it finish
        else:
            raise AssertionError("the probe's response.create was refused three times")
        response = ev["response"]
        if self.config.get("truncation") == "disabled" and response["status"] == "failed":
            assert response["status_details"]["error"]["code"] == "context_length_exceeded", response
            return  # a conversation too long to send whole, with truncation turned off: fair
        assert response["status"] == "completed", response["status_details"]
        assert response["output"][0]["content"][0]["text"] == PROBE_REPLY, response["output"]
        if self.config.get("truncation") == "auto":
            assert any(m.get("content") == words for r in self.llm.requests for m in r["messages"]), \
                "the model never saw the probe's message"

    def check(self) -> None:
        if self.problems:
            problems, self.problems = self.problems, []
            raise AssertionError(f"{len(problems)} problem(s) in server events:\n- " + "\n- ".join(problems[:5]))


@dataclass
class Failure:
    number: int
    example: str
    history: list[str]
    error: str

    def report(self) -> str:
        before = "\n    ".join(f"#{i}: {h[:300]}" for i, h in enumerate(self.history[-5:], len(self.history) - 5)
                               if i >= 0)
        return (f"example #{self.number}: {self.error[:3000]}\n  example: {self.example[:1000]}\n"
                f"  session history (last 5 examples):\n    {before or '(none)'}")


# --- the fuzz test -------------------------------------------------------------------------


def test_fuzz_one_session(fuzz_server: ParleyServer, fuzz_llm: ScriptedLLMServer) -> None:
    assert fuzz_server.proc is not None
    pid = fuzz_server.proc.pid
    log_start = len(fuzz_server.log())
    url = f"{fuzz_server.ws_base_url}/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {fuzz_server.api_key}"}
    failures: list[Failure] = []
    history: list[str] = []
    tried: set[str] = set()
    started = time.monotonic()
    skipped = 0

    with asyncio.Runner() as runner:
        client = FuzzSession(url, headers, fuzz_llm)
        runner.run(client.open())
        runner.run(client.probe("warmup"))  # engines and code paths warm before the baseline
        client.check()
        rss_before = rss_mb(pid)

        async def one(number: int, script: tuple[list[Any], list[Action]]) -> None:
            replies, steps = script
            fuzz_llm.clear()
            fuzz_llm.enqueue(*replies, *[Text(FILLER_REPLY)] * 300)
            client.events = []
            for action in steps:
                await client.play(action)
            await client.probe(str(number))
            client.check()

        @seed(SEED)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(script=examples)
        def fuzz(script: tuple[list[Any], list[Action]]) -> None:
            nonlocal skipped
            if len(failures) >= MAX_FAILURES or time.monotonic() - started > BUDGET_S:
                skipped += 1
                return
            key = hashlib.sha1(repr(script).encode("utf-8", "surrogatepass")).hexdigest()
            assume(key not in tried)  # hypothesis sometimes generates an example again
            tried.add(key)
            number = len(history)
            label = describe(script)
            if VERBOSE:
                print(f"#{number}: {label[:400]}".encode("utf-8", "backslashreplace").decode())
            try:
                runner.run(one(number, script))
            except (AssertionError, TimeoutError, OSError, websockets.WebSocketException) as exc:
                failures.append(Failure(number, label, list(history), f"{type(exc).__name__}: {exc}"))
                runner.run(client.close())
                runner.run(client.open())  # go on in a fresh session
            history.append(label)

        fuzz()
        runner.run(client.close())

    wait_for_no_sessions(fuzz_server)
    rss_after = rss_mb(pid)
    elapsed = time.monotonic() - started
    outcomes = ", ".join(f"{k} {n}" for k, n in sorted(client.seen.items()) if k.startswith(("response.done:", "error:")))
    print(f"\nfuzz: {len(history)} examples ({skipped} skipped), {client.frames_sent} frames sent, "
          f"{client.frames_received} received in {elapsed:.1f}s; server RSS {rss_before:.0f} -> {rss_after:.0f} MB; "
          f"PARLEY_FUZZ_SEED={SEED}\n  {outcomes}")
    if VERBOSE:
        print("  received:", dict(sorted(client.seen.items())))
    assert not failures, (f"{len(failures)} fuzz failure(s) (rerun with PARLEY_FUZZ_SEED={SEED}):\n\n"
                          + "\n\n".join(f.report() for f in failures))
    assert len(history) >= min(EXAMPLES, 10), f"only {len(history)} examples ran within {BUDGET_S:g}s"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, f"server RSS grew {rss_before:.0f} -> {rss_after:.0f} MB"
    log = fuzz_server.log()[log_start:]
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:5000]


# --- regressions: bugs the fuzz found --------------------------------------------------------


async def _session(server: ParleyServer, llm: ScriptedLLMServer) -> FuzzSession:
    client = FuzzSession(f"{server.ws_base_url}/realtime?model=gpt-realtime",
                         {"Authorization": f"Bearer {server.api_key}"}, llm)
    await client.open()
    return client


async def test_lone_surrogate_escape_does_not_kill_the_session(fuzz_server: ParleyServer,
                                                               fuzz_llm: ScriptedLLMServer) -> None:
    """An escaped lone surrogate (a JS string cut mid-emoji) was echoed raw: the UTF-8 encode of
    the echo killed the writer and the session (1006)."""
    client = await _session(fuzz_server, fuzz_llm)
    try:
        await client.send('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
                          '"content": [{"type": "input_text", "text": "half an emoji: \\ud83d"}]}}')
        await client.wait_for(lambda e: e["type"] in ("conversation.item.added", "error"), 5)
        await client.probe("surrogate")
        client.check()
    finally:
        await client.close()


async def test_non_finite_numbers_are_refused_not_echoed(fuzz_server: ParleyServer,
                                                         fuzz_llm: ScriptedLLMServer) -> None:
    """NaN/Infinity (not JSON) were accepted in free-form fields and echoed as bare tokens that
    strict parsers (JSON.parse) reject."""
    client = await _session(fuzz_server, fuzz_llm)
    try:
        await client.send('{"type": "session.update", "event_id": "nan", "session": {"type": "realtime", '
                          '"tools": [{"type": "function", "name": "f", "parameters": {"x": NaN}}]}}')
        await client.send('{"type": "session.update", "event_id": "inf", "session": {"type": "realtime", '
                          '"tracing": {"metadata": {"x": Infinity}}}}')
        for event_id in ("nan", "inf"):
            refused = await client.wait_for(lambda e: e["type"] in ("session.updated", "error"), 5)
            client.events.remove(refused)
            assert refused["type"] == "error" and refused["error"]["event_id"] == event_id, refused
        client.check()  # and nothing the server sent was non-standard JSON
        await client.probe("nan")
    finally:
        await client.close()


async def test_deeply_nested_json_does_not_kill_the_session(fuzz_server: ParleyServer,
                                                            fuzz_llm: ScriptedLLMServer) -> None:
    """JSON nested ~800 deep in tool parameters parsed, then the session config's recursive
    merge hit the recursion limit and the exception killed the session."""
    client = await _session(fuzz_server, fuzz_llm)
    try:
        deep = '{"a": ' * 800 + "1" + "}" * 800
        await client.send('{"type": "session.update", "session": {"type": "realtime", "tools": '
                          '[{"type": "function", "name": "f", "parameters": %s}]}}' % deep)
        await client.wait_for(lambda e: e["type"] in ("session.updated", "error"), 5)
        await client.probe("deep")
        client.check()
    finally:
        await client.close()
