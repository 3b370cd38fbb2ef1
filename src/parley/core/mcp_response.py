"""MCP tool calls inside one response: `McpRun`, a part of each `ResponseRun` (`run.mcp`).

When the model calls a function that stands for an MCP tool (`McpRun.tools`), the output item
is an `mcp_call` whose arguments stream as `response.mcp_call_arguments.delta`; when the model's
turn ends, `.done` and `response.mcp_call.in_progress` follow while the runtime calls the tool,
then `response.mcp_call.completed` (item `output`) or `.failed` (item `error`) and the item is
done.  A tool that needs the client's approval becomes an `mcp_approval_request` item instead,
and nothing runs until the client answers it.  MCP items have no `status` or `object` field in
the GA schema, so they are added and finished without one.

`McpRun` adds and finishes its items through the `OutputItems` its response passes in (the
response owns the output list and the conversation), so this file never imports the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol.ids import IdFactory
from .chat import Usage

Event = dict[str, Any]


class OutputItems(Protocol):
    """What `McpRun` needs of its response: add an output item, finish one."""

    def add_item(self, item: dict[str, Any]) -> tuple[int, list[Event]]: ...

    def finish_item(self, item: dict[str, Any], index: int, status: str) -> list[Event]: ...


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


class McpRun:
    """The MCP tools, calls and rounds of one response."""

    def __init__(self, response_id: str, ids: IdFactory, items: OutputItems) -> None:
        self.response_id = response_id
        self.ids = ids
        self.items = items
        self.tools: dict[str, McpTarget] = {}  # function name -> tool, this round
        self.streaming: dict[int, McpCall] = {}  # model tool-call index -> item
        self.running: dict[str, McpCall] = {}  # item id -> call waiting for its result
        self.next: Any = None  # how to ask the model again once the calls are done (a `PendingStart`)
        self.rounds = 0  # model calls made after MCP results
        self.usage: Usage | None = None  # the engine's counts of the earlier rounds
        self.stop = False  # end after the calls: the client has approvals or function calls to answer

    def on_tool_call(self, index: int, name: str | None, arguments: str) -> list[Event] | None:
        """A tool-call delta, if it belongs to an MCP tool (None otherwise)."""
        call = self.streaming.get(index)
        events: list[Event] = []
        if call is None:
            target = self.tools.get(name or "")
            if target is None:
                return None
            kind, prefix = ("mcp_approval_request", "mcpr") if target.approval else ("mcp_call", "item")
            item = {"type": kind, "id": self.ids.new(prefix), "server_label": target.server["server_label"],
                    "name": target.name, "arguments": ""}
            out_index, events = self.items.add_item(item)
            call = self.streaming[index] = McpCall(item, out_index, target)
        if arguments:
            call.item["arguments"] += arguments
            if call.item["type"] == "mcp_call":
                events.append({"type": "response.mcp_call_arguments.delta", **self._ref(call), "delta": arguments})
        return events

    def _ref(self, call: McpCall) -> Event:
        return {"response_id": self.response_id, "item_id": call.item["id"], "output_index": call.output_index}

    def end_round(self) -> tuple[list[Event], list[McpCall]]:
        """The model's turn ended: approval requests are complete, calls are about to run."""
        events: list[Event] = []
        calls: list[McpCall] = []
        for call in self.streaming.values():
            if call.item["type"] == "mcp_approval_request":
                events += self.items.finish_item(call.item, call.output_index, "completed")
                self.stop = True
            else:
                events.append({"type": "response.mcp_call_arguments.done", **self._ref(call),
                               "arguments": call.item["arguments"]})
                events += self.run_call(call)
                calls.append(call)
        self.streaming.clear()
        return events, calls

    def add_call(self, item: dict[str, Any], target: McpTarget) -> tuple[list[Event], McpCall]:
        """An approved call: its item joins the response and runs at once."""
        out_index, events = self.items.add_item(item)
        call = McpCall(item, out_index, target)
        return events + self.run_call(call), call

    def run_call(self, call: McpCall) -> list[Event]:
        self.running[call.item["id"]] = call
        return [{"type": "response.mcp_call.in_progress", "item_id": call.item["id"], "output_index": call.output_index}]

    def finish_call(self, item_id: str, output: str | None, error: dict[str, Any] | None) -> list[Event]:
        call = self.running.pop(item_id, None)
        if call is None:
            return []
        if error is not None:
            call.item["error"] = error
        else:
            call.item["output"] = output or ""
        kind = "failed" if error is not None else "completed"
        events: list[Event] = [{"type": f"response.mcp_call.{kind}", "item_id": item_id, "output_index": call.output_index}]
        return events + self.items.finish_item(call.item, call.output_index, "completed")

    def close(self) -> list[Event]:
        """The response ends early (cancelled, failed): MCP items still open end as they are."""
        events: list[Event] = []
        for call in sorted([*self.streaming.values(), *self.running.values()], key=lambda c: c.output_index):
            if call.item["type"] == "mcp_call" and call.item["id"] not in self.running:
                events.append({"type": "response.mcp_call_arguments.done", **self._ref(call),
                               "arguments": call.item["arguments"]})
            events += self.items.finish_item(call.item, call.output_index, "incomplete")
        self.streaming.clear()
        self.running.clear()
        return events
