"""Strict validation of the server events Parley sends, judged by the `openai` package's unions.

API::

    validate_server_event(event, dialect="ga")          # raises AssertionError, returns None
    collect_and_validate(events, dialect="ga") -> list  # validates all, returns them unchanged

`dialect` is "ga" (`openai.types.realtime.RealtimeServerEvent`, 46 members in openai 3.52) or
"beta" (`openai.types.beta.realtime.RealtimeServerEvent`, 34 members). An event may be a dict
or a raw JSON text frame (str/bytes).

How it checks
-------------
1. The event must be JSON-serialisable (no NaN/Infinity) and carry a string `type` and a
   non-empty string `event_id` (the only exception is `input_audio_buffer.dtmf_event_received`,
   whose SDK type has *no* `event_id` field - so sending one there fails as an unknown field).
2. The JSON text is validated with a pydantic `TypeAdapter` over the SDK union, re-annotated as
   a real pydantic discriminated union on `type` (the SDK's own `PropertyInfo(discriminator=...)`
   marker is ignored by pydantic), in **strict JSON mode**: "1" is not an int, 1.0 is not an int,
   0/1 are not bools (an int is still accepted for a float). An unknown `type` fails.
3. The SDK's `BaseModel` uses `ConfigDict(extra="allow")`, so pydantic accepts unknown keys and
   keeps them in `model_extra` (nothing is silently dropped: no member uses extra="ignore" and
   no field has an alias - checked for every model reachable from both unions in openai 3.52).
   The resulting model tree is walked together with the raw JSON: every raw key must be a
   declared field of the chosen model, and `model_extra` must be empty, at every depth (lists,
   dicts, nested unions). Nested SDK unions are plain "smart" unions; if the member pydantic
   picked has unknown keys, every other model in that annotation is tried strictly before the
   key is reported, so an ambiguous union cannot hide or invent a problem.
4. The chosen top-level member must be the class whose `type` literal equals the event's type.

Quirks of the SDK unions (openai 3.52.0) - see also DOCUMENTED_EXTRAS below
---------------------------------------------------------------------------
* GA `session.created`/`session.updated`: `session` is typed as the *request* models
  `RealtimeSessionCreateRequest | RealtimeTranscriptionSessionCreateRequest`, which have no
  `object`, `id` or `expires_at`, although the hosted API sends all three (protocol doc §4.1,
  §4.2). They are accepted as documented extras (value-checked), nothing else is.
* GA streaming deltas (`response.output_text.delta`, `response.output_audio_transcript.delta`,
  `conversation.item.input_audio_transcription.delta`) have no `obfuscation` field in the SDK,
  but the hosted API sends one (§3.0); accepted as a documented extra (string). Only
  `response.mcp_call_arguments.delta` declares it.
* `response.content_part.added/.done` `part.type` is `"text" | "audio"` in both dialects; the
  GA item-content names `output_text`/`output_audio` fail there. GA assistant item content is
  `output_text | output_audio` only; beta item content is `input_text | input_audio |
  item_reference | text | audio` (no `output_*`).
* Beta `session` (`types/beta/realtime/session.py`) has `id` but no `object`/`expires_at`
  (accepted as documented extras, §4.9) and no `include`/`prompt`/`truncation`/`client_secret`
  (these fail); beta `session.model` is a closed Literal (gpt-realtime, gpt-realtime-2025-08-28,
  gpt-4o[-mini]-realtime-preview*), so any other model name fails; beta `tool_choice` is `str`
  only; beta `turn_detection` has no `idle_timeout_ms`.
* Beta has no `transcription_session.created`, and `transcription_session.updated.session`
  *requires* `client_secret: {expires_at: int, value: str}` and has no id/object/include/
  noise-reduction fields. Beta has no `conversation.item.added/done`; GA still has
  `conversation.item.created`.
* Beta `response.function_call_arguments.done` has no `name` (sending it fails); GA requires it.
* GA transcription sessions (`session.type == "transcription"`) allow only `type`, `include`
  and `audio.input.{format, transcription, noise_reduction, turn_detection}` (no `model`, no
  `audio.output`); their turn_detection takes the same fields as a realtime session's.
* Beta `response` has `modalities/voice/output_audio_format/temperature` (not GA's
  `audio/output_modalities`); beta usage has no `image_tokens`/`cached_tokens_details`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import openai
import pydantic
from pydantic import Field, TypeAdapter

__all__ = ["DOCUMENTED_EXTRAS", "validate_server_event", "collect_and_validate"]

DTMF_EVENT = "input_audio_buffer.dtmf_event_received"
MAX_REPORTED = 12
_UNION_TAG_PREFIXES = ("literal[", "list[", "dict[", "function-", "nullable[")
_PRIMITIVE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}
_DISCRIMINATORS = {1: "role", 2: "type"}  # rank of a union member whose literal did not match

Check = Callable[[Any, Mapping[str, Any]], bool]  # (value, raw parent object) -> ok


def _is_str(value: Any, _parent: Mapping[str, Any]) -> bool:
    return isinstance(value, str)


def _is_int(value: Any, _parent: Mapping[str, Any]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _session_object(value: Any, parent: Mapping[str, Any]) -> bool:
    expected = {"realtime": "realtime.session", "transcription": "realtime.transcription_session"}
    return value == expected.get(parent.get("type", "realtime"))


def _beta_session_object(value: Any, _parent: Mapping[str, Any]) -> bool:
    return value == "realtime.session"


_GA_SESSION_EXTRAS: dict[str, Check] = {"object": _session_object, "id": _is_str, "expires_at": _is_int}
_BETA_SESSION_EXTRAS: dict[str, Check] = {"object": _beta_session_object, "expires_at": _is_int}
_OBFUSCATION: dict[str, Check] = {"obfuscation": _is_str}

# (dialect, event type, path of the object inside the event) -> {key: value check}.
# Only keys the protocol reference says the hosted API sends although the SDK type lacks them.
DOCUMENTED_EXTRAS: dict[tuple[str, str, tuple[str, ...]], dict[str, Check]] = {
    ("ga", "session.created", ("session",)): _GA_SESSION_EXTRAS,
    ("ga", "session.updated", ("session",)): _GA_SESSION_EXTRAS,
    ("ga", "response.output_text.delta", ()): _OBFUSCATION,
    ("ga", "response.output_audio_transcript.delta", ()): _OBFUSCATION,
    ("ga", "conversation.item.input_audio_transcription.delta", ()): _OBFUSCATION,
    ("beta", "session.created", ("session",)): _BETA_SESSION_EXTRAS,
    ("beta", "session.updated", ("session",)): _BETA_SESSION_EXTRAS,
}


def _sdk_union(dialect: str) -> Any:
    if dialect == "ga":
        from openai.types.realtime import RealtimeServerEvent
    elif dialect == "beta":
        from openai.types.beta.realtime import RealtimeServerEvent
    else:
        raise ValueError(f"unknown dialect {dialect!r} (expected 'ga' or 'beta')")
    return RealtimeServerEvent


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """Every pydantic model class named anywhere in a (possibly nested) annotation."""
    if inspect.isclass(annotation) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    found: list[type[pydantic.BaseModel]] = []
    if get_origin(annotation) is not None and get_origin(annotation) is not Literal:
        for arg in get_args(annotation):
            found += [m for m in _models_in(arg) if m not in found]
    return found


@lru_cache(maxsize=None)
def _schema(dialect: str) -> tuple[TypeAdapter[Any], dict[str, type], frozenset[str]]:
    union = _sdk_union(dialect)
    members = get_args(union)[0] if get_origin(union) is Annotated else union
    members = get_args(members)
    by_type: dict[str, type] = {}
    for member in members:
        for tag in get_args(member.model_fields["type"].annotation):
            by_type[tag] = member
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[Union[members], Field(discriminator="type")])
    seen: set[type] = set()
    todo: list[type[pydantic.BaseModel]] = list(members)
    while todo:  # every model reachable from the union; their names are pydantic's union tags
        model = todo.pop()
        if model not in seen:
            seen.add(model)
            for field in model.model_fields.values():
                todo += _models_in(field.annotation)
    return adapter, by_type, frozenset(m.__name__ for m in seen)


def _fmt_path(path: Iterable[Any]) -> str:
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out or "<event>"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pydantic_problems(exc: pydantic.ValidationError, event_type: str, model_names: frozenset[str]) -> list[str]:
    """Readable lines from a ValidationError, without the noise of union members that do not apply.

    Smart unions report an error for every member. Each member at a union site gets a rank:
    0 = its discriminating literals matched, 1 = its `role` did not, 2 = its `type` did not.
    Only errors through the best-ranked members of every site are kept; where even the best
    member mismatched (e.g. an unknown turn_detection type), only that mismatch is kept.
    """

    def is_tag(seg: Any) -> bool:
        return isinstance(seg, str) and (
            seg in model_names or seg in _PRIMITIVE_TAGS or seg.startswith(_UNION_TAG_PREFIXES)
        )

    errors = exc.errors(include_url=False)
    for err in errors:  # the top-level discriminated union puts the tag first
        if err["loc"][:1] == (event_type,):
            err["loc"] = err["loc"][1:]
    rank: dict[tuple[Any, ...], int] = {}  # loc of a member (site + tag) -> rank
    for err in errors:
        loc = err["loc"]
        for i, seg in enumerate(loc):
            if is_tag(seg):
                rank.setdefault(loc[: i + 1], 0)
        if err["type"] == "literal_error" and len(loc) >= 2 and loc[-1] in ("type", "role") and is_tag(loc[-2]):
            rank[loc[:-1]] = max(rank[loc[:-1]], 2 if loc[-1] == "type" else 1)
    best: dict[tuple[Any, ...], int] = {}
    for member, value in rank.items():
        best[member[:-1]] = min(best.get(member[:-1], 2), value)

    def relevant(err: Any) -> bool:
        members = [err["loc"][: i + 1] for i, seg in enumerate(err["loc"]) if is_tag(seg)]
        if any(rank[m] != best[m[:-1]] for m in members):
            return False
        return all(rank[m] == 0 or err["loc"] == m + (_DISCRIMINATORS[rank[m]],) for m in members)

    lines: list[str] = []
    for err in filter(relevant, errors):
        tags = [seg for seg in err["loc"] if is_tag(seg)]
        path = _fmt_path(seg for seg in err["loc"] if not is_tag(seg))
        member = f" (as {tags[-1]})" if tags else ""
        got = f", got {_short(err['input'])}" if err["type"] != "missing" else ""
        line = f"{path}{member}: {err['msg']} [{err['type']}]{got}"
        if line not in lines:
            lines.append(line)
    return lines or [str(exc)]


class _Walker:
    """Compares the validated model tree with the raw JSON, key by key."""

    def __init__(self, dialect: str, event_type: str, allow_documented_extras: bool) -> None:
        self.dialect, self.event_type, self.allow = dialect, event_type, allow_documented_extras

    def walk(self, value: Any, raw: Any, path: tuple[Any, ...], annotation: Any) -> list[str]:
        if isinstance(value, pydantic.BaseModel):
            problems = self._walk_model(value, raw, path)
            if problems:
                for other in _models_in(annotation):
                    if other is not type(value) and self._fits(other, raw, path):
                        return []
            return problems
        problems: list[str] = []
        if isinstance(value, list) and isinstance(raw, list):
            for i, (item, raw_item) in enumerate(zip(value, raw)):
                problems += self.walk(item, raw_item, path + (i,), annotation)
        elif isinstance(value, dict) and isinstance(raw, dict):
            for key, raw_item in raw.items():
                problems += self.walk(value.get(key), raw_item, path + (key,), annotation)
        return problems

    def _fits(self, model: type[pydantic.BaseModel], raw: Any, path: tuple[Any, ...]) -> bool:
        try:
            candidate = model.model_validate_json(json.dumps(raw), strict=True)
        except pydantic.ValidationError:
            return False
        return not self._walk_model(candidate, raw, path)

    def _walk_model(self, model: pydantic.BaseModel, raw: Any, path: tuple[Any, ...]) -> list[str]:
        if not isinstance(raw, dict):  # cannot happen after JSON validation; be explicit anyway
            return [f"{_fmt_path(path)}: expected an object for {type(model).__name__}, got {_short(raw)}"]
        fields = type(model).model_fields
        known = {field.alias or name: name for name, field in fields.items()}
        extra_keys = set(model.model_extra or {}) | (set(raw) - set(known))
        documented = self._documented(path)
        problems = []
        for key in sorted(extra_keys):
            check = documented.get(key)
            if check is None:
                problems.append(
                    f"{_fmt_path(path + (key,))}: unknown field ({type(model).__name__} has no field "
                    f"{key!r}), got {_short(raw.get(key))}"
                )
            elif not check(raw.get(key), raw):
                problems.append(
                    f"{_fmt_path(path + (key,))}: bad value for documented extra field, got {_short(raw.get(key))}"
                )
        for key, name in known.items():
            if key in raw:
                problems += self.walk(getattr(model, name), raw[key], path + (key,), fields[name].annotation)
        return problems

    def _documented(self, path: tuple[Any, ...]) -> dict[str, Check]:
        if not self.allow or any(isinstance(seg, int) for seg in path):
            return {}
        return DOCUMENTED_EXTRAS.get((self.dialect, self.event_type, path), {})


def _as_dict(event: Any) -> dict[str, Any]:
    if isinstance(event, (str, bytes, bytearray)):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise AssertionError(f"server event is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise AssertionError(f"server event must be a JSON object, got {type(event).__name__}: {_short(event)}")
    return event


def _fail(event: Mapping[str, Any], dialect: str, problems: list[str]) -> None:
    shown = problems[:MAX_REPORTED]
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    raise AssertionError(
        f"server event {event.get('type')!r} (event_id={event.get('event_id')!r}) does not validate against "
        f"openai {openai.__version__} {dialect} RealtimeServerEvent:\n  - "
        + "\n  - ".join(shown) + more + f"\n  event: {_short(event, 600)}"
    )


def validate_server_event(event: Any, dialect: str = "ga", *, allow_documented_extras: bool = True) -> None:
    """Raise AssertionError (type + path of each problem) unless `event` strictly fits the SDK union.

    `allow_documented_extras=False` also rejects the few keys in DOCUMENTED_EXTRAS that the
    hosted API sends but the SDK types lack (e.g. GA `session.object/id/expires_at`).
    """
    adapter, by_type, model_names = _schema(dialect)
    event = _as_dict(event)
    event_type = event.get("type")
    if not isinstance(event_type, str):
        _fail(event, dialect, [f"type: missing or not a string, got {_short(event_type)}"])
    if event_type not in by_type:
        known = ", ".join(sorted(by_type))
        _fail(event, dialect, [f"type: {event_type!r} is not a {dialect} server event type (known: {known})"])
    problems: list[str] = []
    event_id = event.get("event_id")
    if event_type != DTMF_EVENT and not (isinstance(event_id, str) and event_id):
        problems.append(f"event_id: every server event needs a non-empty string event_id, got {_short(event_id)}")
    try:
        text = json.dumps(event, allow_nan=False)
    except (TypeError, ValueError) as exc:
        _fail(event, dialect, problems + [f"<event>: not JSON-serialisable: {exc}"])
    try:
        model = adapter.validate_json(text, strict=True)
    except pydantic.ValidationError as exc:
        details = _pydantic_problems(exc, event_type, model_names)
        if problems:  # the event_id problem is already reported in plainer words
            details = [line for line in details if not line.startswith("event_id:")]
        _fail(event, dialect, problems + details)
    expected = by_type[event_type]
    if type(model) is not expected or getattr(model, "type", None) != event_type:
        problems.append(f"type: validated as {type(model).__name__}, expected {expected.__name__}")
    problems += _Walker(dialect, event_type, allow_documented_extras).walk(model, event, (), expected)
    if problems:
        _fail(event, dialect, problems)


def collect_and_validate(
    events: Iterable[Any], dialect: str = "ga", *, allow_documented_extras: bool = True
) -> list[Any]:
    """Validate every event (reporting all failures at once, by index) and return them as a list."""
    events = list(events)
    failures = []
    for index, event in enumerate(events):
        try:
            validate_server_event(event, dialect, allow_documented_extras=allow_documented_extras)
        except AssertionError as exc:
            failures.append(f"event #{index}: {exc}")
    if failures:
        raise AssertionError(f"{len(failures)} of {len(events)} server events failed validation:\n" + "\n".join(failures))
    return events
