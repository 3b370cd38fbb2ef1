"""MCP tool calls inside one response: a mixin of `ResponseRun`.

When the model calls a function that stands for an MCP tool (`McpRunState.tools`), the output
item is an `mcp_call` whose arguments stream as `response.mcp_call_arguments.delta`; when the
model's turn ends, `.done` and `response.mcp_call.in_progress` follow while the runtime calls the
tool, then `response.mcp_call.completed` (item `output`) or `.failed` (item `error`) and the
item is done.  A tool that needs the client's approval becomes an `mcp_approval_request` item
instead, and nothing runs until the client answers it.  MCP items have no `status` or `object`
field in the GA schema, so they are added and finished without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..engines.llm import Usage
from .context import estimate_tokens

if TYPE_CHECKING:
    from .response import ResponseRun

Event = dict[str, Any]


@dataclass(frozen=True)
class McpTarget:
    """An MCP tool offered to the model under a function name."""

    server: dict[str, Any]  # the resolved `mcp` tool definition
    name: str  # the tool's name on its server
    approval: bool  # each call waits for the client's mcp_approval_response


@dataclass
class McpCall:
    item: dict[str, Any]
    output_index: int
    target: McpTarget | None = None


@dataclass
class McpRunState:
    tools: dict[str, McpTarget] = field(default_factory=dict)  # function name -> tool, this round
    streaming: dict[int, McpCall] = field(default_factory=dict)  # model tool-call index -> item
    running: dict[str, McpCall] = field(default_factory=dict)  # item id -> call waiting for its result
    next: Any = None  # how to ask the model again once the calls are done (the session's pending start)
    rounds: int = 0  # model calls made after MCP results
    usage: Usage | None = None  # the engine's counts of the earlier rounds
    stop: bool = False  # end after the calls: the client has approvals or function calls to answer


class McpResponseMixin:
    def on_mcp_tool_call(self: ResponseRun, index: int, name: str | None, arguments: str) -> list[Event] | None:
        """A tool-call delta, if it belongs to an MCP tool (None otherwise)."""
        call = self.mcp.streaming.get(index)
        events: list[Event] = []
        if call is None:
            target = self.mcp.tools.get(name or "")
            if target is None:
                return None
            kind, prefix = ("mcp_approval_request", "mcpr") if target.approval else ("mcp_call", "item")
            item = {"type": kind, "id": self.ids.new(prefix), "server_label": target.server["server_label"],
                    "name": target.name, "arguments": ""}
            out_index, events = self._add_item(item)
            call = self.mcp.streaming[index] = McpCall(item, out_index, target)
        if arguments:
            call.item["arguments"] += arguments
            self._text_tokens += estimate_tokens(arguments)
            if call.item["type"] == "mcp_call":
                events.append({"type": "response.mcp_call_arguments.delta", **self._mcp_ref(call), "delta": arguments})
        return events

    def _mcp_ref(self: ResponseRun, call: McpCall) -> Event:
        return {"response_id": self.id, "item_id": call.item["id"], "output_index": call.output_index}

    def end_mcp_round(self: ResponseRun) -> tuple[list[Event], list[McpCall]]:
        """The model's turn ended: approval requests are complete, calls are about to run."""
        events: list[Event] = []
        calls: list[McpCall] = []
        for call in self.mcp.streaming.values():
            if call.item["type"] == "mcp_approval_request":
                events += self._finish_item(call.item, call.output_index, "completed")
                self.mcp.stop = True
            else:
                events.append({"type": "response.mcp_call_arguments.done", **self._mcp_ref(call),
                               "arguments": call.item["arguments"]})
                events += self.run_mcp_call(call)
                calls.append(call)
        self.mcp.streaming.clear()
        if self._calls:  # app function calls wait for the client's outputs
            self.mcp.stop = True
        return events, calls

    def add_mcp_call(self: ResponseRun, item: dict[str, Any], target: McpTarget) -> tuple[list[Event], McpCall]:
        """An approved call: its item joins the response and runs at once."""
        out_index, events = self._add_item(item)
        call = McpCall(item, out_index, target)
        return events + self.run_mcp_call(call), call

    def run_mcp_call(self: ResponseRun, call: McpCall) -> list[Event]:
        self.mcp.running[call.item["id"]] = call
        return [{"type": "response.mcp_call.in_progress", "item_id": call.item["id"], "output_index": call.output_index}]

    def finish_mcp_call(self: ResponseRun, item_id: str, output: str | None, error: dict[str, Any] | None) -> list[Event]:
        call = self.mcp.running.pop(item_id, None)
        if call is None:
            return []
        if error is not None:
            call.item["error"] = error
        else:
            call.item["output"] = output or ""
        kind = "failed" if error is not None else "completed"
        events: list[Event] = [{"type": f"response.mcp_call.{kind}", "item_id": item_id, "output_index": call.output_index}]
        return events + self._finish_item(call.item, call.output_index, "completed")

    def _close_mcp(self: ResponseRun) -> list[Event]:
        """The response ends early (cancelled, failed): MCP items still open end as they are."""
        events: list[Event] = []
        for call in sorted([*self.mcp.streaming.values(), *self.mcp.running.values()], key=lambda c: c.output_index):
            if call.item["type"] == "mcp_call" and call.item["id"] not in self.mcp.running:
                events.append({"type": "response.mcp_call_arguments.done", **self._mcp_ref(call),
                               "arguments": call.item["arguments"]})
            events += self._finish_item(call.item, call.output_index, "incomplete")
        self.mcp.streaming.clear()
        self.mcp.running.clear()
        return events
