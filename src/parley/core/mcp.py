"""Remote MCP servers in a realtime session: `McpTools` owns the session's MCP definitions, their
listed tools and the approved calls waiting for a response; the responses run the calls
(core/responder.py) and each keeps its own (core/mcp_response.py).

Importing.  When the session's `tools` (or a response's) gain an `mcp` tool, the session adds an
`mcp_list_tools` item to the conversation, sends `mcp_list_tools.in_progress` and asks the
runtime to list the server's tools (`ListMcpTools`).  Its answer (`McpToolsListed`) fills the
item's `tools` (after `allowed_tools`) and brings `mcp_list_tools.completed` (or `.failed`) and
`conversation.item.done`.  A response offers only tools whose listing has finished, as on the
hosted API; a response that names MCP servers in its own `tools` waits for their listing.

Calling.  An MCP tool reaches the model as a function (`mcp_tools.chat_name`).  When the model's
turn ends with MCP calls, the runtime runs them (`CallMcpTool` -> `McpToolResult`) and the
response goes on: the model is asked again with the results (core/responder.py; the events
are in core/mcp_response.py).  Function tools, by contrast, wait for the client's output and `response.create`, so a
turn that also called app functions, or asked for approvals, ends once its MCP calls are done.

Approvals.  The client answers an `mcp_approval_request` with an `mcp_approval_response` item.
An approved call runs at the start of the next response in the conversation; the session starts
one at once when none is running, and does so after a refusal too, so the model can say so.

Where the hosted API's behaviour is not documented, Parley chose (as the Responses API does
where it has the same objects):
* listing: `conversation.item.added` (no tools yet) -> `.in_progress` -> `.completed` or
  `.failed` -> `conversation.item.done`; a failure's reason is logged, not sent (neither event
  nor item has a field for it); re-sending the same definition retries a failed server;
* a call that needs approval streams no `mcp_call_arguments` events: its request item is added
  at once and is done, with its arguments, when the model's turn ends; the response then ends,
  so the conversation is free for the client's answer;
* the approved call's `mcp_call` item (with `approval_request_id`) gets no arguments events,
  only `response.mcp_call.in_progress` and its end;
* a response cancelled during a call leaves its `mcp_call` without `output` or `error`, and the
  model never sees it; the model sees a refusal as the tool's result ("The user declined...");
* validation errors (duplicate labels, two of server_url/connector_id/tunnel_id, a label-only
  tool never defined, `authorization` with `headers.Authorization`) are worded by Parley.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import ProtocolError
from ..protocol.ids import IdFactory
from . import context
from . import mcp_tools as mt
from .conversation import Conversation
from .io import CallMcpTool, ListMcpTools, McpToolsListed, Output
from .mcp_response import McpCall, McpTarget
from .outbox import Outbox
from .response import ResponseRun

MAX_ROUNDS = 8  # model calls after MCP results in one response; the last one may call no tool


@dataclass
class McpServer:
    """One server label's import: its `mcp_list_tools` item and, once listed, every tool it has."""

    key: tuple[Any, ...]
    item: dict[str, Any]
    listed: list[dict[str, Any]] | None = None
    failed: bool = False


class McpTools:
    def __init__(self, ids: IdFactory, out: Outbox, conversation: Conversation, enabled: bool) -> None:
        self.ids = ids
        self.out = out
        self.conversation = conversation
        self.enabled = enabled  # a GA realtime session: the beta protocol has no MCP tools
        self.defs: dict[str, dict[str, Any]] = {}  # server_label -> its latest full definition
        self.servers: dict[str, McpServer] = {}
        self.approved: list[dict[str, Any]] = []  # approved requests, run by the next response

    # ---- importing ---------------------------------------------------------------------------

    def check_tools(self, tools: list[dict[str, Any]], param: str) -> None:
        mt.check_tools(tools, self.defs, param)

    def import_tools(self, tools: list[dict[str, Any]]) -> tuple[list[Output], set[str]]:
        """List the servers of `tools` that are new, changed or failed before.  Returns the
        outputs and the ids of the listings these tools still wait for."""
        if not self.enabled:
            return [], set()
        out: list[Output] = []
        waiting: set[str] = set()
        for tool in tools:
            if tool.get("type") != "mcp":
                continue
            defn = mt.resolve(tool, self.defs)
            label, key = defn["server_label"], mt.connection_key(defn)
            self.defs[label] = defn
            server = self.servers.get(label)
            if server is None or server.key != key or server.failed:
                out += self._list(defn, key)
                server = self.servers[label]
            if server.listed is None and not server.failed:
                waiting.add(server.item["id"])
        return out, waiting

    def listing(self) -> set[str]:
        """The ids of the `mcp_list_tools` items still being listed."""
        return {s.item["id"] for s in self.servers.values() if s.listed is None and not s.failed}

    def _list(self, defn: dict[str, Any], key: tuple[Any, ...]) -> list[Output]:
        label = defn["server_label"]
        item = {"type": "mcp_list_tools", "id": self.ids.new("item"), "server_label": label, "tools": []}
        prev = self.conversation.insert(item)
        server = self.servers[label] = McpServer(key, item)
        out = self.out.send({"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)})
        out += self.out.send({"type": "mcp_list_tools.in_progress", "item_id": item["id"]})
        if not defn.get("server_url"):  # connectors and tunnels are OpenAI services
            return out + self._listing_done(server, None)
        return out + [ListMcpTools(item["id"], copy.deepcopy(defn))]

    def on_listed(self, inp: McpToolsListed) -> list[Output]:
        server = next((s for s in self.servers.values() if s.item["id"] == inp.item_id), None)
        if server is None:
            return []  # replaced by a newer definition meanwhile
        return self._listing_done(server, inp.tools)

    def _listing_done(self, server: McpServer, tools: list[dict[str, Any]] | None) -> list[Output]:
        item = server.item
        if tools is None:
            server.failed = True
        else:
            server.listed = tools
            item["tools"] = mt.allowed(tools, self.defs[item["server_label"]].get("allowed_tools"))
        kind = "failed" if tools is None else "completed"
        out = self.out.send({"type": f"mcp_list_tools.{kind}", "item_id": item["id"]})
        return out + self.out.send({"type": "conversation.item.done",
                                    "previous_item_id": self.conversation.previous_id(item["id"]), "item": copy.deepcopy(item)})

    # ---- offering tools to the model ---------------------------------------------------------

    def offer_tools(self, run: ResponseRun, tools: list[dict[str, Any]], choice: Any) -> tuple[list[dict[str, Any]], Any]:
        """The chat tools of a model call (function tools, then the listed MCP tools) and its
        tool_choice; remembers which function names are MCP tools in `run.mcp.tools`."""
        chat = context.chat_tools(tools)
        taken = {t["function"]["name"] for t in chat}
        run.mcp.tools = {}
        for tool in tools:
            if tool.get("type") != "mcp":
                continue
            defn = mt.resolve(tool, self.defs)
            server = self.servers.get(defn["server_label"])
            if server is None or server.listed is None:
                continue
            for listed in mt.allowed(server.listed, defn.get("allowed_tools")):
                name = mt.chat_name(defn["server_label"], listed["name"], taken)
                taken.add(name)
                approval = mt.needs_approval(defn.get("require_approval"), listed)
                run.mcp.tools[name] = McpTarget(defn, listed["name"], approval)
                fn: dict[str, Any] = {"name": name, "parameters": listed.get("input_schema") or {"type": "object", "properties": {}}}
                if listed.get("description"):
                    fn["description"] = listed["description"]
                chat.append({"type": "function", "function": fn})
        return chat, self._chat_choice(run, choice, chat)

    def _chat_choice(self, run: ResponseRun, choice: Any, chat: list[dict[str, Any]]) -> Any:
        if run.mcp.rounds:  # after tool results the model answers as it likes, and at last without tools
            choice = "none" if run.mcp.rounds >= MAX_ROUNDS else ("none" if choice == "none" else "auto")
        if isinstance(choice, dict) and choice.get("type") == "mcp":
            names = [n for n, t in run.mcp.tools.items() if t.server["server_label"] == choice["server_label"]
                     and choice.get("name") in (None, t.name)]
            choice = {"type": "function", "name": names[0]} if len(names) == 1 else ("required" if names else "auto")
        return context.chat_tool_choice(choice, chat)

    def model_items(self, run: ResponseRun, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = {(t.server["server_label"], t.name): fn for fn, t in run.mcp.tools.items()}
        return mt.model_items(items, names)

    # ---- calling -----------------------------------------------------------------------------

    def run_approved(self, run: ResponseRun) -> list[Output]:
        """The approved calls join `run` (a response in the conversation) and are launched."""
        out: list[Output] = []
        calls: list[McpCall] = []
        for request in self.approved:
            label = request["server_label"]
            item = {"type": "mcp_call", "id": self.ids.new("item"), "server_label": label, "name": request["name"],
                    "arguments": request["arguments"], "approval_request_id": request["id"]}
            events, call = run.mcp.add_call(item, McpTarget(self.defs.get(label, {}), request["name"], False))
            out += self.out.sends(events)
            calls.append(call)
        self.approved.clear()
        return out + self.launch(run, calls)

    def launch(self, run: ResponseRun, calls: list[McpCall]) -> list[Output]:
        """Ask the runtime to call each tool; a call that cannot run fails at once."""
        out: list[Output] = []
        for call in calls:
            item, server = call.item, call.target.server if call.target else {}
            try:
                args = json.loads(item["arguments"] or "{}")
            except ValueError:
                args = None
            if not isinstance(args, dict):
                error = "The model's arguments for this tool are not a JSON object."
            elif not server.get("server_url") or item["server_label"] not in self.servers:
                error = f"MCP server '{item['server_label']}' is not available in this session."
            else:
                out.append(CallMcpTool(run.id, item["id"], copy.deepcopy(server), item["name"], args))
                continue
            out += self.out.sends(run.mcp.finish_call(item["id"], None, {"type": "tool_execution_error", "message": error}))
        return out

    # ---- approvals ---------------------------------------------------------------------------

    def check_item(self, item: dict[str, Any]) -> None:
        if item["type"] != "mcp_approval_response":
            return
        rid = item["approval_request_id"]
        request = self.conversation.get(rid)
        if request is None or request.get("type") != "mcp_approval_request":
            raise ProtocolError(f"MCP approval request with id '{rid}' not found in conversation.",
                                "invalid_value", "item.approval_request_id")
        if any(i.get("approval_request_id") == rid for i in self.conversation.items()):
            raise ProtocolError(f"MCP approval request '{rid}' has already been answered.",
                                "invalid_value", "item.approval_request_id")

    def note_answer(self, item: dict[str, Any]) -> bool:
        """An added item that answers an approval request: an approved call waits for the next
        response.  True when it was such an answer (a response should run it, or tell the model
        it was refused)."""
        if item["type"] != "mcp_approval_response":
            return False
        if item["approve"]:
            request = self.conversation.get(item["approval_request_id"])
            assert request is not None  # check_item made sure
            self.approved.append(copy.deepcopy(request))
        return True
