"""Pure rules about remote MCP tools: which definitions are valid, which listed tools a session
may use (`allowed_tools`), which need the client's approval (`require_approval`), the names the
language model sees them by, and how MCP items read in the model's context.

The model only knows chat-completions function tools, so an MCP tool is offered as a function
named `mcp__<server_label>__<tool>` (made unique against the app's own function tools), and MCP
items become the function calls and results `context.items_to_messages` already understands.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..protocol.errors import ProtocolError

#: the fields of an `mcp` tool that say which server to talk to and how; a change relists it
CONNECTION_FIELDS = ("server_url", "connector_id", "tunnel_id", "headers", "authorization", "allowed_tools")
_WHERE = ("server_url", "connector_id", "tunnel_id")
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME = 64  # chat-completions function names: ^[A-Za-z0-9_-]{1,64}$


def check_tools(tools: list[dict[str, Any]], known: dict[str, dict[str, Any]], param: str) -> None:
    """Refuse the MCP definitions the hosted API refuses (realtime-mcp, "Common failures").
    `known` holds the definitions this session has seen, by label: a tool with only its
    `server_label` reuses one of them."""
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.get("type") != "mcp":
            continue
        label, at = tool["server_label"], f"{param}[{i}]"
        if label in seen:
            raise ProtocolError(f"Duplicate server_label '{label}' in tools: each MCP server needs its own label.",
                                "invalid_value", f"{at}.server_label")
        seen.add(label)
        where = [f for f in _WHERE if tool.get(f) is not None]
        if len(where) > 1:
            raise ProtocolError(f"Only one of {', '.join(_WHERE)} may be given, got {' and '.join(where)}.",
                                "invalid_value", f"{at}.{where[1]}")
        if not where and label not in known:
            raise ProtocolError(f"MCP server '{label}' is not defined yet: give its server_url or connector_id.",
                                "missing_required_parameter", f"{at}.server_url")
        url = tool.get("server_url")
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ProtocolError(f"Invalid '{at}.server_url': expected an http:// or https:// URL.",
                                "invalid_value", f"{at}.server_url")
        headers = tool.get("headers") or {}
        if tool.get("authorization") is not None and any(k.lower() == "authorization" for k in headers):
            raise ProtocolError("Give the token in 'authorization' or in 'headers.Authorization', not both.",
                                "invalid_value", f"{at}.authorization")


def resolve(tool: dict[str, Any], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The full definition of an `mcp` tool: a label-only tool reuses the known one, and any
    field it gives overrides it."""
    base = known.get(tool["server_label"], {}) if not any(tool.get(f) for f in _WHERE) else {}
    return {**base, **{k: v for k, v in tool.items() if v is not None}}


def connection_key(defn: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(repr(defn.get(f)) for f in CONNECTION_FIELDS)


def _matches(flt: dict[str, Any] | None, tool: dict[str, Any]) -> bool:
    """A `{tool_names?, read_only?}` filter: every criterion it gives must hold."""
    if flt is None:
        return False
    names = flt.get("tool_names")
    if names is not None and tool["name"] not in names:
        return False
    read_only = flt.get("read_only")
    if read_only is not None and bool((tool.get("annotations") or {}).get("readOnlyHint")) != read_only:
        return False
    return True


def allowed(tools: list[dict[str, Any]], allowed_tools: Any) -> list[dict[str, Any]]:
    """The listed tools `allowed_tools` (a list of names or a filter; None = all) lets through."""
    if allowed_tools is None:
        return list(tools)
    if isinstance(allowed_tools, list):
        return [t for t in tools if t["name"] in allowed_tools]
    return [t for t in tools if _matches(allowed_tools, t)]


def needs_approval(policy: Any, tool: dict[str, Any]) -> bool:
    """`require_approval`: "always" (also the default), "never", or `{always?, never?}` filters
    (a tool matching `always` asks, one matching only `never` does not, any other asks)."""
    if policy is None or policy == "always":
        return True
    if policy == "never":
        return False
    if _matches(policy.get("always"), tool):
        return True
    return not _matches(policy.get("never"), tool)


def chat_name(label: str, tool: str, taken: set[str]) -> str:
    """The function name the model sees for `tool` of server `label`, unique within `taken`."""
    base = _NAME_OK.sub("_", f"mcp__{label}__{tool}")
    name, n = (base if len(base) <= MAX_NAME else _hashed(base, 0)), 1
    while name in taken:
        name, n = _hashed(base, n), n + 1
    return name


def _hashed(base: str, n: int) -> str:
    return f"{base[:MAX_NAME - 9]}_{hashlib.sha1(f'{base}#{n}'.encode()).hexdigest()[:8]}"


def model_items(items: list[dict[str, Any]], names: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """MCP items as the function calls and results the model understands.  A call and its
    result stay together (chat servers want a tool result right after its call); an approval
    request still waiting for the client, a call that never finished and tool listings are
    left out.  `names` maps (server_label, tool) to the name the model knows the tool by."""
    answers: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.get("type") == "mcp_approval_response":
            answers.setdefault(item["approval_request_id"], item)
        elif item.get("type") == "mcp_call" and item.get("approval_request_id"):
            answers[item["approval_request_id"]] = item
    requested = {i["id"] for i in items if i.get("type") == "mcp_approval_request"}
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "mcp_approval_request":
            answer = answers.get(item["id"])
            if answer is not None and _result(answer) is not None:
                out += _call_pair(item, item["id"], _result(answer), names)
        elif kind == "mcp_call":
            result = _result(item)
            if result is not None and item.get("approval_request_id") not in requested:
                out += _call_pair(item, item["id"], result, names)
        elif kind not in ("mcp_list_tools", "mcp_approval_response"):
            out.append(item)
    return out


def _result(item: dict[str, Any]) -> str | None:
    """What the model is told a call gave: its output, its error, or the client's refusal."""
    if item["type"] == "mcp_approval_response":
        if item.get("approve"):
            return None  # the mcp_call that ran it carries the result
        reason = item.get("reason")
        return "The user declined to run this tool." + (f" Reason: {reason}" if reason else "")
    if item.get("error"):
        return "Error: " + str(item["error"].get("message", ""))
    return item.get("output")


def _call_pair(item: dict[str, Any], call_id: str, result: str, names: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    label, tool = item["server_label"], item["name"]
    name = names.get((label, tool)) or chat_name(label, tool, set())
    return [{"type": "function_call", "id": item["id"], "call_id": call_id, "name": name,
             "arguments": item.get("arguments") or "{}"},
            {"type": "function_call_output", "id": call_id + "_out", "call_id": call_id, "output": result}]
