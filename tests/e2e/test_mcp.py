"""Remote MCP tools end to end: the `openai` SDK (GA) talks to a real Parley process, whose
sessions list and call the tools of a real MCP server (`tests/support/mcp_server.py`, the `mcp`
SDK's server over streamable HTTP or SSE); the model is the scripted chat-completions server.
Every server event is validated against the SDK's GA union (the `rt` fixture)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import Checked, types
from tests.support.mcp_server import WeatherMCPServer
from tests.support.parley_server import free_port
from tests.support.scripted_llm import Text, ToolCall

FN = "mcp__weather__get_weather"


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[WeatherMCPServer]:
    with WeatherMCPServer() as server:
        yield server


@pytest.fixture
def weather(mcp_server: WeatherMCPServer) -> WeatherMCPServer:
    mcp_server.clear()
    return mcp_server


def weather_tool(server: WeatherMCPServer, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "weather", "server_url": server.url, **extra}


async def import_tools(rt: Checked, tool: dict[str, Any]) -> list[dict[str, Any]]:
    """Add the MCP tool to the session; the events up to the listing's end."""
    await rt.session.update(session={"type": "realtime", "tools": [tool]})
    events = await rt.until("mcp_list_tools.completed", "mcp_list_tools.failed")
    return events + [await rt.recv()]  # conversation.item.done of the mcp_list_tools item


async def ask(rt: Checked, text: str) -> list[dict[str, Any]]:
    await rt.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": text}]})
    await rt.until("conversation.item.done")
    await rt.response.create()
    events = await rt.until("response.done")
    await rt.until("rate_limits.updated")
    return events


def by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


async def test_tools_are_listed_when_the_session_gains_the_server(rt: Checked, weather: WeatherMCPServer) -> None:
    events = await import_tools(rt, weather_tool(weather, allowed_tools=["get_weather", "get_forecast"],
                                                 authorization="secret-token", headers={"X-Tenant": "t1"}))
    assert types(events) == ["session.updated", "conversation.item.added", "mcp_list_tools.in_progress",
                             "mcp_list_tools.completed", "conversation.item.done"]
    item = events[-1]["item"]
    assert item["type"] == "mcp_list_tools" and item["server_label"] == "weather"
    assert item["id"] == events[2]["item_id"] == events[3]["item_id"]
    assert [t["name"] for t in item["tools"]] == ["get_weather", "get_forecast"]
    assert item["tools"][0]["description"] == "The weather now in a city."
    assert item["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
    sent = [r["headers"] for r in weather.requests if r["method"] == "POST"]
    assert sent and all(h.get("authorization") == "Bearer secret-token" and h.get("x-tenant") == "t1" for h in sent)


async def test_a_call_completes_and_the_model_answers_with_its_output(rt: Checked, llm, weather: WeatherMCPServer) -> None:
    await import_tools(rt, weather_tool(weather, require_approval="never"))
    llm.enqueue(ToolCall(FN, {"city": "Paris"}), Text("It is sunny in Paris, 21 degrees."))
    events = await ask(rt, "What's the weather in Paris?")
    names = [n for i, n in enumerate(types(events)) if i == 0 or n != types(events)[i - 1] or not n.endswith(".delta")]
    assert names[:9] == [
        "response.created", "response.output_item.added", "conversation.item.added",
        "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
        "response.mcp_call.completed", "conversation.item.done", "response.output_item.done"]
    assert names[-1] == "response.done" and "response.output_text.done" in names
    call = by_type(events, "response.output_item.done")[0]["item"]
    assert call["type"] == "mcp_call" and call["name"] == "get_weather" and call["server_label"] == "weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["output"] == "Sunny, 21 C"
    done = events[-1]["response"]
    assert done["status"] == "completed" and [i["type"] for i in done["output"]] == ["mcp_call", "message"]
    assert done["output"][1]["content"][0]["text"] == "It is sunny in Paris, 21 degrees."
    assert weather.calls == [("get_weather", {"city": "Paris"})]
    first, second = llm.requests[-2:]
    assert FN in [t["function"]["name"] for t in first["tools"]]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == FN
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"}


async def test_a_failing_tool_fails_its_call_and_the_session_goes_on(rt: Checked, llm, weather: WeatherMCPServer) -> None:
    await import_tools(rt, weather_tool(weather, require_approval="never"))
    llm.enqueue(ToolCall(FN, {"city": "Atlantis"}), Text("I could not find Atlantis."))
    events = await ask(rt, "Weather in Atlantis?")
    failed = by_type(events, "response.mcp_call.failed")
    assert len(failed) == 1 and not by_type(events, "response.mcp_call.completed")
    call = by_type(events, "response.output_item.done")[0]["item"]
    assert call["error"]["type"] == "tool_execution_error" and "No weather station in Atlantis" in call["error"]["message"]
    assert "output" not in call or call["output"] is None
    assert events[-1]["response"]["status"] == "completed"
    assert llm.requests[-1]["messages"][-1]["content"].startswith("Error: ")
    llm.enqueue(Text("Still here."))
    events = await ask(rt, "ping")
    assert events[-1]["response"]["status"] == "completed"


async def test_approval_always_then_approve_runs_the_call(rt: Checked, llm, weather: WeatherMCPServer) -> None:
    await import_tools(rt, weather_tool(weather, require_approval="always"))
    llm.enqueue(ToolCall(FN, {"city": "Oslo"}), Text("Snowing in Oslo."))
    events = await ask(rt, "Weather in Oslo?")
    request = by_type(events, "response.output_item.done")[0]["item"]
    assert request["type"] == "mcp_approval_request" and json.loads(request["arguments"]) == {"city": "Oslo"}
    assert events[-1]["response"]["status"] == "completed" and not weather.calls
    await rt.conversation.item.create(item={"id": f"mcp_approval_{request['id']}", "type": "mcp_approval_response",
                                            "approval_request_id": request["id"], "approve": True})
    events = await rt.until("response.done")
    assert types(events)[:3] == ["conversation.item.added", "conversation.item.done", "response.created"]
    call = by_type(events, "response.output_item.done")[0]["item"]
    assert call["type"] == "mcp_call" and call["approval_request_id"] == request["id"]
    assert call["output"] == "Snow, -3 C" and weather.calls == [("get_weather", {"city": "Oslo"})]
    assert by_type(events, "response.mcp_call.completed")
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == "Snowing in Oslo."
    assert llm.requests[-1]["messages"][-1] == {"role": "tool", "tool_call_id": request["id"], "content": "Snow, -3 C"}


async def test_approval_always_then_deny_runs_nothing(rt: Checked, llm, weather: WeatherMCPServer) -> None:
    await import_tools(rt, weather_tool(weather))  # require_approval defaults to "always"
    llm.enqueue(ToolCall(FN, {"city": "Paris"}), Text("Alright, I won't check."))
    events = await ask(rt, "Weather in Paris?")
    request = by_type(events, "response.output_item.done")[0]["item"]
    await rt.conversation.item.create(item={"type": "mcp_approval_response", "id": "deny_1",
                                            "approval_request_id": request["id"], "approve": False,
                                            "reason": "not today"})
    events = await rt.until("response.done")
    assert not by_type(events, "response.mcp_call.in_progress") and not weather.calls
    assert events[-1]["response"]["output"][0]["type"] == "message"
    assert llm.requests[-1]["messages"][-1] == {
        "role": "tool", "tool_call_id": request["id"], "content": "The user declined to run this tool. Reason: not today"}


async def test_an_unreachable_server_fails_its_listing_and_the_session_goes_on(rt: Checked, llm) -> None:
    began = time.monotonic()
    events = await import_tools(rt, {"type": "mcp", "server_label": "nowhere",
                                     "server_url": f"http://127.0.0.1:{free_port()}/mcp"})
    assert types(events)[-2:] == ["mcp_list_tools.failed", "conversation.item.done"]
    assert events[-1]["item"]["tools"] == [] and time.monotonic() - began < 5
    llm.enqueue(Text("Hello."))
    events = await ask(rt, "hi")
    assert events[-1]["response"]["status"] == "completed" and not llm.requests[-1].get("tools")


async def test_a_server_at_an_sse_url_is_reached_over_sse(client, llm, weather: WeatherMCPServer) -> None:
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rt = Checked(conn, "ga")
        await rt.until("session.created")
        events = await import_tools(rt, {"type": "mcp", "server_label": "weather", "server_url": weather.sse_url,
                                         "require_approval": "never"})
        assert types(events)[-2] == "mcp_list_tools.completed"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await rt.until("session.updated")
        llm.enqueue(ToolCall(FN, {"city": "Paris"}), Text("Sunny."))
        events = await ask(rt, "Paris?")
        assert by_type(events, "response.output_item.done")[0]["item"]["output"] == "Sunny, 21 C"
    assert {r["path"] for r in weather.requests} <= {"/sse", "/messages/"}


async def test_an_ephemeral_keys_session_lists_its_servers_at_once(parley, client, llm, weather: WeatherMCPServer) -> None:
    secret = await client.realtime.client_secrets.create(session={
        "type": "realtime", "output_modalities": ["text"],
        "tools": [weather_tool(weather, require_approval="never", allowed_tools=["get_forecast"])]})
    ek_client = AsyncOpenAI(api_key=secret.value, base_url=parley.base_url, websocket_base_url=parley.ws_base_url)
    async with ek_client.realtime.connect(model="gpt-realtime") as conn:
        rt = Checked(conn, "ga")
        events = await rt.until("mcp_list_tools.completed")
        assert types(events) == ["session.created", "conversation.item.added", "mcp_list_tools.in_progress",
                                 "mcp_list_tools.completed"]
        assert [t["name"] for t in (await rt.recv())["item"]["tools"]] == ["get_forecast"]
        llm.enqueue(ToolCall("mcp__weather__get_forecast", {"city": "Oslo", "days": 2}), Text("Snow."))
        events = await ask(rt, "Forecast for Oslo?")
        assert by_type(events, "response.output_item.done")[0]["item"]["output"] == "2 more days of the same in Oslo."
