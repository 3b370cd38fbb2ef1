"""`runtime/mcp.py` against a real MCP server (`tests/support/mcp_server.py`) on loopback: listing
and calling over streamable HTTP and SSE, the errors a call can end in, timeouts, stopping a
response's calls, and that closing leaves nothing running."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from parley.core.io import CallMcpTool, ListMcpTools, McpToolResult, McpToolsListed
from parley.runtime.mcp import McpClients
from tests.support.mcp_server import WeatherMCPServer
from tests.support.parley_server import free_port


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[WeatherMCPServer]:
    with WeatherMCPServer() as server:
        yield server


class Inbox:
    def __init__(self) -> None:
        self.got: list[Any] = []

    async def put(self, item: Any) -> None:
        self.got.append(item)

    async def wait(self, n: int, timeout_s: float = 10.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.got) < n:
                await asyncio.sleep(0.01)
        return self.got


def server(url: str, label: str = "weather", **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": label, "server_url": url, **extra}


def mcp_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mcp-")]


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_lists_and_calls_then_closes_everything(mcp_server: WeatherMCPServer, transport: str) -> None:
    mcp_server.clear()
    url = mcp_server.url if transport == "streamable-http" else mcp_server.sse_url
    weather = server(url, authorization="tok", headers={"X-Tenant": "t1"})
    clients, inbox = McpClients(), Inbox()
    clients.start(ListMcpTools("list_1", weather), inbox.put)
    (listed,) = await inbox.wait(1)
    assert isinstance(listed, McpToolsListed) and listed.error is None
    tool = next(t for t in listed.tools or [] if t["name"] == "get_weather")
    assert tool == {"name": "get_weather", "description": "The weather now in a city.",
                    "input_schema": tool["input_schema"]}
    assert tool["input_schema"]["required"] == ["city"]
    clients.start(CallMcpTool("resp_1", "call_1", weather, "get_weather", {"city": "Paris"}), inbox.put)
    clients.start(CallMcpTool("resp_1", "call_2", weather, "get_weather", {"city": "Atlantis"}), inbox.put)
    clients.start(CallMcpTool("resp_1", "call_3", weather, "no_such_tool", {}), inbox.put)
    results = {r.item_id: r for r in (await inbox.wait(4))[1:]}
    assert results["call_1"] == McpToolResult("call_1", output="Sunny, 21 C")
    assert results["call_2"].error["type"] == "tool_execution_error"
    assert "No weather station in Atlantis" in results["call_2"].error["message"]
    assert results["call_3"].error is not None and results["call_3"].output is None
    assert sorted(mcp_server.calls, key=str) == [("get_weather", {"city": "Atlantis"}), ("get_weather", {"city": "Paris"})]
    sent = [r["headers"] for r in mcp_server.requests if r["method"] == "POST"]
    assert sent and all(h["authorization"] == "Bearer tok" and h["x-tenant"] == "t1" for h in sent)
    assert mcp_tasks()  # the connection lives on between calls
    await clients.aclose()
    assert not [t for t in mcp_tasks() if not t.done()]


async def test_one_connection_per_label_made_again_when_the_definition_changes(mcp_server: WeatherMCPServer) -> None:
    clients, inbox = McpClients(), Inbox()
    for i in range(2):
        clients.start(ListMcpTools(f"list_{i}", server(mcp_server.url)), inbox.put)
    await inbox.wait(2)
    assert len(clients._connections) == 1
    first = clients._connections["weather"]
    clients.start(ListMcpTools("list_2", server(mcp_server.sse_url)), inbox.put)
    await inbox.wait(3)
    assert clients._connections["weather"] is not first
    await clients.aclose()


async def test_an_unreachable_server_fails_fast() -> None:
    clients, inbox = McpClients(), Inbox()
    clients.start(ListMcpTools("list_1", server(f"http://127.0.0.1:{free_port()}/mcp")), inbox.put)
    (listed,) = await inbox.wait(1, timeout_s=5)
    assert listed.tools is None and "ConnectError" in (listed.error or "")
    await clients.aclose()


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        clients, inbox = McpClients(connect_timeout_s=0.3), Inbox()
        clients.start(ListMcpTools("list_1", server(f"http://127.0.0.1:{silent.getsockname()[1]}/mcp")), inbox.put)
        (listed,) = await inbox.wait(1, timeout_s=5)
        assert listed.tools is None and listed.error
        await clients.aclose()


async def test_a_slow_tool_times_out_and_a_stopped_response_stops_its_calls(mcp_server: WeatherMCPServer) -> None:
    clients, inbox = McpClients(call_timeout_s=0.3), Inbox()
    weather = server(mcp_server.url)
    clients.start(CallMcpTool("resp_1", "call_1", weather, "wait_for", {"seconds": 2}), inbox.put)
    (result,) = await inbox.wait(1, timeout_s=5)
    assert result.error == {"type": "tool_execution_error",
                            "message": "The MCP server did not answer in time (calling the tool, 0.3 s)."}
    clients.call_timeout_s = 10
    clients.start(CallMcpTool("resp_2", "call_2", weather, "wait_for", {"seconds": 1}), inbox.put)
    await asyncio.sleep(0.1)
    clients.cancel("resp_2")
    await asyncio.sleep(1.2)
    assert len(inbox.got) == 1  # the stopped call reported nothing
    await clients.aclose()
