"""Remote MCP tools in the session core, driven with fake runtime answers (no sockets): the
import of a server's tools, calls that run without and with the client's approval, failures,
and what the model sees.  Every event is validated against the openai SDK's GA union."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.core import mcp_tools as mt
from parley.core.io import (
    CallMcpTool,
    ListMcpTools,
    McpToolResult,
    McpToolsListed,
    ModelDone,
    ModelText,
    ModelToolCall,
    StopResponse,
)
from parley.core.chat import Usage
from tests.unit.test_core_session import Harness, error_of, events, only, response_id_of, start_of, types

WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
FORECAST = {"name": "forecast", "input_schema": {"type": "object", "properties": {}},
            "annotations": {"readOnlyHint": True}}
DELETE = {"name": "delete_city", "input_schema": {"type": "object", "properties": {}}}
SERVER = {"type": "mcp", "server_label": "weather", "server_url": "http://127.0.0.1:9/mcp"}
FN = "mcp__weather__get_weather"


def listing(outs: list[Any]) -> ListMcpTools:
    found = [o for o in outs if isinstance(o, ListMcpTools)]
    assert len(found) == 1, types(outs)
    return found[0]


def calls(outs: list[Any]) -> list[CallMcpTool]:
    return [o for o in outs if isinstance(o, CallMcpTool)]


def with_server(tools: list[dict[str, Any]] | None = None, **server: Any) -> Harness:
    """A text-mode session whose weather server has listed `tools`."""
    h = Harness()
    h.text_mode()
    outs = h.update(tools=[{**SERVER, **server}])
    h.runtime(McpToolsListed(listing(outs).item_id, tools=tools or [WEATHER, FORECAST, DELETE]))
    return h


def model_calls(h: Harness, name: str, args: dict[str, Any], user: str = "Weather in Paris?") -> tuple[str, list[Any]]:
    """The user asks, and the model's turn is one tool call."""
    h.user_text(user)
    outs = h.create_response()
    rid = response_id_of(outs)
    text = json.dumps(args)
    outs += h.runtime(ModelToolCall(rid, 0, text[:5], name)) + h.runtime(ModelToolCall(rid, 0, text[5:]))
    outs += h.runtime(ModelDone(rid, "tool_calls", Usage(10, 5)))
    return rid, outs


# ---- importing a server's tools --------------------------------------------------------------


def test_a_new_server_is_listed_and_its_item_shows_the_allowed_tools() -> None:
    h = Harness()
    outs = h.update(tools=[{**SERVER, "allowed_tools": ["get_weather", "forecast"]}])
    assert types(outs) == ["session.updated", "SessionChanged", "conversation.item.added",
                           "mcp_list_tools.in_progress", "ListMcpTools"]
    added = only(outs, "conversation.item.added")["item"]
    assert added == {"type": "mcp_list_tools", "id": added["id"], "server_label": "weather", "tools": []}
    ask = listing(outs)
    assert ask.item_id == added["id"] and ask.server["server_url"] == SERVER["server_url"]
    outs = h.runtime(McpToolsListed(ask.item_id, tools=[WEATHER, FORECAST, DELETE]))
    assert types(outs) == ["mcp_list_tools.completed", "conversation.item.done"]
    done = events(outs)[1]["item"]
    assert [t["name"] for t in done["tools"]] == ["get_weather", "forecast"]
    assert done["tools"][0] == WEATHER
    # the same definition again lists nothing; a changed one lists again
    assert types(h.update(tools=[{**SERVER, "allowed_tools": ["get_weather", "forecast"]}])) == ["session.updated", "SessionChanged"]
    assert "ListMcpTools" in types(h.update(tools=[SERVER]))


def test_an_unreachable_server_fails_its_listing_and_a_later_update_retries() -> None:
    h = Harness()
    ask = listing(h.update(tools=[SERVER]))
    outs = h.runtime(McpToolsListed(ask.item_id, error="connection refused"))
    assert types(outs) == ["mcp_list_tools.failed", "conversation.item.done"]
    assert events(outs)[1]["item"]["tools"] == []
    assert "ListMcpTools" in types(h.update(tools=[SERVER]))


def test_a_connector_cannot_be_listed_here() -> None:
    h = Harness()
    outs = h.update(tools=[{"type": "mcp", "server_label": "cal", "connector_id": "connector_googlecalendar",
                            "authorization": "token"}])
    assert types(outs)[2:] == ["conversation.item.added", "mcp_list_tools.in_progress", "mcp_list_tools.failed",
                               "conversation.item.done"]


def test_a_bound_session_lists_its_servers_at_start() -> None:
    from parley.protocol.client_events import parse_client_event
    update = parse_client_event(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [SERVER]}}))
    h = Harness(bound=update.session)
    assert types(h.created) == ["session.created", "conversation.item.added", "mcp_list_tools.in_progress",
                                "ListMcpTools"]


@pytest.mark.parametrize("tool, param, code", [
    ({"type": "mcp", "server_label": "new"}, "session.tools[0].server_url", "missing_required_parameter"),
    ({**SERVER, "connector_id": "connector_gmail"}, "session.tools[0].connector_id", "invalid_value"),
    ({**SERVER, "server_url": "ftp://x"}, "session.tools[0].server_url", "invalid_value"),
    ({**SERVER, "authorization": "t", "headers": {"authorization": "Bearer t"}}, "session.tools[0].authorization",
     "invalid_value"),
])
def test_bad_definitions_are_refused_whole(tool: dict[str, Any], param: str, code: str) -> None:
    h = Harness()
    err = error_of(h.update(tools=[tool]))
    assert err["param"] == param and err["code"] == code
    assert h.session.config["tools"] == []


def test_a_duplicate_label_is_refused_and_a_known_label_alone_reuses_its_definition() -> None:
    h = with_server()
    err = error_of(h.update(tools=[SERVER, SERVER]))
    assert err["param"] == "session.tools[1].server_label"
    outs = h.update(tools=[{"type": "mcp", "server_label": "weather", "require_approval": "never"}])
    assert types(outs) == ["session.updated", "SessionChanged"]  # same server: not listed again
    rid, outs = model_calls(h, FN, {"city": "Paris"})
    assert calls(outs)[0].server["server_url"] == SERVER["server_url"]


# ---- calls without approval ------------------------------------------------------------------


def test_a_call_runs_and_the_model_answers_with_its_output_in_the_same_response() -> None:
    h = with_server(require_approval="never")
    h.user_text("Weather in Paris?")
    outs = h.create_response()
    rid = response_id_of(outs)
    tools = start_of(outs).plan.request.tools
    assert [t["function"]["name"] for t in tools] == [FN, "mcp__weather__forecast", "mcp__weather__delete_city"]
    assert tools[0]["function"]["parameters"] == WEATHER["input_schema"]
    outs = h.runtime(ModelToolCall(rid, 0, '{"city":', FN)) + h.runtime(ModelToolCall(rid, 0, ' "Paris"}'))
    assert types(outs) == ["response.output_item.added", "conversation.item.added",
                           "response.mcp_call_arguments.delta", "response.mcp_call_arguments.delta"]
    item = events(outs)[0]["item"]
    assert item == {"type": "mcp_call", "id": item["id"], "server_label": "weather", "name": "get_weather",
                    "arguments": ""}
    outs = h.runtime(ModelDone(rid, "tool_calls", Usage(10, 5)))
    assert types(outs) == ["response.mcp_call_arguments.done", "response.mcp_call.in_progress", "CallMcpTool"]
    assert only(outs, "response.mcp_call_arguments.done")["arguments"] == '{"city": "Paris"}'
    (call,) = calls(outs)
    assert (call.response_id, call.item_id, call.name, call.arguments) == (rid, item["id"], "get_weather", {"city": "Paris"})
    outs = h.runtime(McpToolResult(item["id"], output="Sunny, 21 C"))
    assert types(outs) == ["response.mcp_call.completed", "conversation.item.done", "response.output_item.done",
                           "StartResponse"]
    done = events(outs)[2]["item"]
    assert done["output"] == "Sunny, 21 C" and "status" not in done and "error" not in done
    again = start_of(outs)
    assert again.response_id == rid and again.plan.request.tool_choice == "auto"
    assert again.plan.request.messages[-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": item["id"], "type": "function", "function": {"name": FN, "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": item["id"], "content": "Sunny, 21 C"}]
    outs = h.runtime(ModelText(rid, "It is sunny.")) + h.runtime(ModelDone(rid, "stop", Usage(20, 4)))
    response = only(outs, "response.done")["response"]
    assert response["status"] == "completed"
    assert [i["type"] for i in response["output"]] == ["mcp_call", "message"]
    assert response["output"][1]["content"][0]["text"] == "It is sunny."
    assert response["usage"]["input_token_details"]["text_tokens"] == 30  # both model calls
    assert response["usage"]["output_tokens"] == 9


def test_a_failing_tool_fails_its_call_and_the_model_hears_the_error() -> None:
    h = with_server(require_approval="never")
    rid, outs = model_calls(h, FN, {"city": "Atlantis"})
    item_id = calls(outs)[0].item_id
    error = {"type": "tool_execution_error", "message": "No such city: Atlantis"}
    outs = h.runtime(McpToolResult(item_id, error=error))
    assert types(outs) == ["response.mcp_call.failed", "conversation.item.done", "response.output_item.done",
                           "StartResponse"]
    assert events(outs)[2]["item"]["error"] == error
    assert start_of(outs).plan.request.messages[-1] == {"role": "tool", "tool_call_id": item_id,
                                                        "content": "Error: No such city: Atlantis"}


def test_arguments_that_are_not_a_json_object_fail_without_a_call() -> None:
    h = with_server(require_approval="never")
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    h.runtime(ModelToolCall(rid, 0, "[1, 2", FN))
    outs = h.runtime(ModelDone(rid, "tool_calls"))
    assert "CallMcpTool" not in types(outs)
    assert only(outs, "response.mcp_call.failed")
    assert only(outs, "response.output_item.done")["item"]["error"]["type"] == "tool_execution_error"
    assert "StartResponse" in types(outs)


def test_cancelling_during_a_call_stops_it_and_ignores_its_result() -> None:
    h = with_server(require_approval="never")
    rid, outs = model_calls(h, FN, {"city": "Paris"})
    item_id = calls(outs)[0].item_id
    outs = h.client({"type": "response.cancel"})
    assert isinstance(outs[0], StopResponse)
    done = only(outs, "response.done")["response"]
    assert done["status"] == "cancelled" and "output" not in done["output"][0]
    assert h.runtime(McpToolResult(item_id, output="late")) == []
    # an unfinished call is not shown to the model
    h.user_text("again?")
    assert all(m["role"] != "tool" for m in start_of(h.create_response()).plan.request.messages)


def test_function_calls_beside_mcp_calls_end_the_response_for_the_client() -> None:
    h = Harness()
    h.text_mode()
    outs = h.update(tools=[{**SERVER, "require_approval": "never"}, {"type": "function", "name": "get_time"}])
    h.runtime(McpToolsListed(listing(outs).item_id, tools=[WEATHER]))
    h.user_text("hi")
    rid = response_id_of(h.create_response())
    h.runtime(ModelToolCall(rid, 0, "{}", "get_time"))
    h.runtime(ModelToolCall(rid, 1, '{"city": "Oslo"}', FN))
    outs = h.runtime(ModelDone(rid, "tool_calls"))
    outs = h.runtime(McpToolResult(calls(outs)[0].item_id, output="Snow"))
    assert "StartResponse" not in types(outs)
    done = only(outs, "response.done")["response"]
    assert [i["type"] for i in done["output"]] == ["function_call", "mcp_call"]


def test_the_model_may_call_tools_again_but_not_forever() -> None:
    h = with_server(require_approval="never")
    rid, outs = model_calls(h, FN, {"city": "Paris"})
    for _ in range(8):
        outs = h.runtime(McpToolResult(calls(outs)[0].item_id, output="Sunny"))
        start = start_of(outs)
        h.runtime(ModelToolCall(rid, 0, '{"city": "Paris"}', FN))
        outs = h.runtime(ModelDone(rid, "tool_calls"))
    assert start.plan.request.tool_choice == "none"


def test_tool_names_never_clash_with_the_apps_functions() -> None:
    taken = {"mcp__weather__get_weather"}
    assert mt.chat_name("weather", "get_weather", taken) not in taken
    long = mt.chat_name("a" * 40, "b" * 40, set())
    assert len(long) == 64 and long != mt.chat_name("a" * 40, "b" * 41, set())
    assert mt.chat_name("my server!", "do.it", set()) == "mcp__my_server___do_it"


def test_tool_choice_can_name_an_mcp_tool() -> None:
    h = with_server(require_approval="never")
    h.user_text("hi")
    outs = h.create_response(tool_choice={"type": "mcp", "server_label": "weather", "name": "forecast"})
    assert start_of(outs).plan.request.tool_choice == {"type": "function", "function": {"name": "mcp__weather__forecast"}}


def test_a_response_waits_for_the_servers_in_its_own_tools() -> None:
    h = Harness()
    h.text_mode()
    h.user_text("hi")
    outs = h.create_response(tools=[{**SERVER, "require_approval": "never"}])
    assert "StartResponse" not in types(outs) and "mcp_list_tools.in_progress" in types(outs)
    outs = h.runtime(McpToolsListed(listing(outs).item_id, tools=[WEATHER]))
    assert [t["function"]["name"] for t in start_of(outs).plan.request.tools] == [FN]


def test_session_tools_still_listing_are_not_offered() -> None:
    h = Harness()
    h.text_mode()
    h.update(tools=[SERVER])
    h.user_text("hi")
    assert start_of(h.create_response()).plan.request.tools == []


# ---- approvals -------------------------------------------------------------------------------


def test_a_call_that_needs_approval_waits_for_the_client_and_then_runs() -> None:
    h = with_server()  # require_approval defaults to "always"
    rid, outs = model_calls(h, FN, {"city": "Paris"})
    assert "response.mcp_call_arguments.delta" not in types(outs) and "CallMcpTool" not in types(outs)
    request = only(outs, "response.output_item.done")["item"]
    assert request == {"type": "mcp_approval_request", "id": request["id"], "server_label": "weather",
                       "name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert len("mcp_approval_" + request["id"]) <= 32  # the docs' id for the answer fits
    assert only(outs, "response.done")["response"]["status"] == "completed"
    outs = h.client({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "id": "mcp_approval_" + request["id"],
        "approval_request_id": request["id"], "approve": True}})
    assert types(outs)[:4] == ["conversation.item.added", "conversation.item.done", "response.created",
                               "response.output_item.added"]
    call_item = only(outs, "response.output_item.added")["item"]
    assert call_item["type"] == "mcp_call" and call_item["approval_request_id"] == request["id"]
    assert types(outs)[-2:] == ["response.mcp_call.in_progress", "CallMcpTool"]
    outs = h.runtime(McpToolResult(call_item["id"], output="Sunny"))
    messages = start_of(outs).plan.request.messages
    assert messages[-2]["tool_calls"][0]["id"] == request["id"]
    assert messages[-1] == {"role": "tool", "tool_call_id": request["id"], "content": "Sunny"}
    # answered once only
    err = error_of(h.client({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "id": "again", "approval_request_id": request["id"], "approve": True}}))
    assert err["param"] == "item.approval_request_id"


def test_a_refusal_runs_nothing_and_the_model_hears_why() -> None:
    h = with_server(require_approval={"never": {"tool_names": ["forecast"]}})
    rid, outs = model_calls(h, FN, {"city": "Paris"})
    request = only(outs, "response.output_item.done")["item"]
    outs = h.client({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "id": "no_1", "approval_request_id": request["id"], "approve": False,
        "reason": "not now"}})
    assert "CallMcpTool" not in types(outs)
    messages = start_of(outs).plan.request.messages
    assert messages[-1] == {"role": "tool", "tool_call_id": request["id"],
                            "content": "The user declined to run this tool. Reason: not now"}


def test_an_approval_while_a_response_runs_waits_for_the_next_response() -> None:
    h = with_server()
    _, outs = model_calls(h, FN, {"city": "Paris"})
    request = only(outs, "response.output_item.done")["item"]
    h.user_text("something else")
    busy = response_id_of(h.create_response())
    outs = h.client({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "id": "yes_1", "approval_request_id": request["id"], "approve": True}})
    assert types(outs) == ["conversation.item.added", "conversation.item.done"]
    h.runtime(ModelDone(busy))
    outs = h.create_response()
    assert "CallMcpTool" in types(outs) and "StartResponse" not in types(outs)


def test_an_answer_to_no_request_is_refused() -> None:
    h = with_server()
    err = error_of(h.client({"type": "conversation.item.create", "item": {
        "type": "mcp_approval_response", "id": "x", "approval_request_id": "mcpr_nope", "approve": True}}))
    assert err["param"] == "item.approval_request_id" and err["code"] == "invalid_value"


@pytest.mark.parametrize("policy, tool, expected", [
    (None, WEATHER, True), ("always", WEATHER, True), ("never", WEATHER, False),
    ({"never": {"tool_names": ["get_weather"]}}, WEATHER, False),
    ({"never": {"tool_names": ["get_weather"]}}, DELETE, True),
    ({"never": {"read_only": True}}, FORECAST, False),
    ({"always": {"tool_names": ["delete_city"]}, "never": {}}, DELETE, True),
    ({"always": {"tool_names": ["delete_city"]}, "never": {}}, WEATHER, False),
])
def test_require_approval_policies(policy: Any, tool: dict[str, Any], expected: bool) -> None:
    assert mt.needs_approval(policy, tool) is expected


def test_allowed_tools_by_names_or_filter() -> None:
    tools = [WEATHER, FORECAST, DELETE]
    assert mt.allowed(tools, None) == tools
    assert mt.allowed(tools, ["forecast"]) == [FORECAST]
    assert mt.allowed(tools, {"read_only": True}) == [FORECAST]
    assert mt.allowed(tools, {"tool_names": ["get_weather", "forecast"], "read_only": False}) == [WEATHER]


def test_mcp_items_read_as_tool_calls_for_the_model() -> None:
    request = {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "s", "name": "t", "arguments": "{}"}
    pending = {"type": "mcp_approval_request", "id": "mcpr_2", "server_label": "s", "name": "t", "arguments": "{}"}
    user = {"type": "message", "id": "u", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    answer = {"type": "mcp_approval_response", "id": "a", "approval_request_id": "mcpr_1", "approve": True}
    ran = {"type": "mcp_call", "id": "c", "server_label": "s", "name": "t", "arguments": "{}",
           "approval_request_id": "mcpr_1", "output": "done"}
    listed = {"type": "mcp_list_tools", "id": "l", "server_label": "s", "tools": []}
    out = mt.model_items([listed, request, pending, user, answer, ran], {("s", "t"): "fn_t"})
    assert [(i["type"], i.get("call_id")) for i in out] == [
        ("function_call", "mcpr_1"), ("function_call_output", "mcpr_1"), ("message", None)]
    assert out[0]["name"] == "fn_t" and out[1]["output"] == "done"
