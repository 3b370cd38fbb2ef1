"""Strict parsing: pydantic models that refuse unknown fields, and the translation of pydantic's
validation errors into the hosted API's error codes and messages."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .errors import ProtocolError


class Strict(BaseModel):
    """Base of every client-facing model: unknown fields are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a decimal",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), "an object")


def _param(loc: tuple[Any, ...], data: Any, prefix: str, keep_last: bool) -> tuple[str, Any]:
    """Turn a pydantic error location into the API's `param` (`session.tools[0].name`).

    pydantic puts the tags of discriminated unions into `loc`; we walk the input alongside and
    keep only the steps that exist in it, so tags drop out.  The last step of a `missing` error
    does not exist in the input, so it is always kept.
    """
    parts: list[str] = [prefix] if prefix else []
    cur = data
    for i, step in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and isinstance(step, str) and step in cur:
            parts.append(step)
            cur = cur[step]
        elif isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur):
            parts[-1] = f"{parts[-1]}[{step}]" if parts else f"[{step}]"
            cur = cur[step]
        elif last and keep_last and isinstance(step, str) and not isinstance(cur, list):
            parts.append(step)
            cur = None
    return ".".join(parts), cur


def translate(err: ValidationError, data: Any, prefix: str = "") -> ProtocolError:
    """The first pydantic error, worded as the hosted API would word it."""
    e = err.errors(include_url=False)[0]
    kind = e["type"]
    param, value = _param(tuple(e["loc"]), data, prefix, kind in ("missing", "extra_forbidden"))
    value = e.get("input", value)
    ctx = e.get("ctx") or {}
    if kind == "union_tag_invalid":
        field = str(ctx.get("discriminator", "type")).strip("'")
        param, value = (f"{param}.{field}" if param else field), ctx.get("tag")
    if kind == "extra_forbidden":
        return ProtocolError(f"Unknown parameter: '{param}'.", "unknown_parameter", param)
    if kind in ("missing", "union_tag_not_found"):
        if kind == "union_tag_not_found":
            param = f"{param}.{ctx.get('discriminator', 'type').strip(chr(39))}" if param else "type"
        return ProtocolError(f"Missing required parameter: '{param}'.", "missing_required_parameter", param)
    if kind == "string_too_long":
        n = ctx.get("max_length")
        return ProtocolError(
            f"Invalid '{param}': string too long. Expected a string with maximum length {n}, "
            f"but got a string with length {len(value) if isinstance(value, str) else '?'} instead.",
            "string_above_max_length",
            param,
        )
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        below = kind.startswith("greater")
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        num = "integer" if isinstance(value, int) else "decimal"
        code = f"{num}_{'below_min' if below else 'above_max'}_value"
        words = "below minimum" if below else "above maximum"
        return ProtocolError(
            f"Invalid '{param}': {num} {words} value. Expected a value {op} {bound}, but got {value} instead.",
            code,
            param,
        )
    if kind in ("too_short", "too_long"):
        code = "array_below_min_length" if kind == "too_short" else "array_above_max_length"
        return ProtocolError(f"Invalid '{param}': array has the wrong length. {e['msg']}.", code, param)
    if kind in ("literal_error", "enum", "union_tag_invalid", "value_error", "invalid_value"):
        expected = ctx.get("expected") or ctx.get("expected_tags") or ""
        msg = f"Invalid value: {_repr(value)}."
        if expected:
            msg += f" Supported values are: {expected}."
        elif kind in ("value_error", "invalid_value"):
            msg = f"Invalid value for '{param}': {e['msg'].removeprefix('Value error, ')}"
        return ProtocolError(msg, "invalid_value", param)
    expected_kind = kind.split("_")[0]
    names = {"string": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
             "list": "an array", "dict": "an object", "model": "an object"}
    want = names.get(expected_kind, "another type")
    return ProtocolError(
        f"Invalid type for '{param}': expected {want}, but got {_kind(value)} instead.",
        "invalid_type",
        param,
    )


def _repr(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:80])
    return repr(value)[:80]


def parse_strict(adapter: TypeAdapter[Any] | type[BaseModel], data: Any, prefix: str = "") -> Any:
    """Validate `data`; raise `ProtocolError` worded like the hosted API."""
    try:
        if isinstance(adapter, TypeAdapter):
            return adapter.validate_python(data)
        return adapter.model_validate(data)
    except ValidationError as err:
        raise translate(err, data, prefix) from None
