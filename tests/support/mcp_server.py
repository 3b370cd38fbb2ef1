"""A small real MCP server for tests, built with the `mcp` SDK's `MCPServer` (mcp 1.x called it
FastMCP) and served by uvicorn on a loopback port in a background thread: streamable HTTP at
`/mcp`, SSE at `/sse`.  It records the calls its tools receive and every HTTP request (method,
path, headers).

    with WeatherMCPServer() as mcp:
        ...  # a session with {"type": "mcp", "server_label": "weather", "server_url": mcp.url}
        assert mcp.calls == [("get_weather", {"city": "Paris"})]
"""

from __future__ import annotations

import time
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

from .scripted_server import ScriptedServer

WEATHER = {"Paris": "Sunny, 21 C", "Oslo": "Snow, -3 C"}


class WeatherMCPServer(ScriptedServer):
    name = "MCP"
    lifespan = "on"  # the SDK's session manager runs in the app's lifespan

    def __init__(self) -> None:
        super().__init__([])
        self.calls: list[tuple[str, dict[str, Any]]] = []
        server = MCPServer("weather")

        @server.tool()
        def get_weather(city: str) -> str:
            """The weather now in a city."""
            self._called("get_weather", {"city": city})
            if city not in WEATHER:
                raise ToolError(f"No weather station in {city}.")
            return WEATHER[city]

        @server.tool()
        def get_forecast(city: str, days: int = 3) -> str:
            """The forecast for a city."""
            self._called("get_forecast", {"city": city, "days": days})
            return f"{days} more days of the same in {city}."

        @server.tool()
        def wait_for(seconds: float) -> str:
            """Answer after a while."""
            time.sleep(seconds)
            return "done waiting"

        @server.tool()
        def reset_station(city: str) -> str:
            """Reset a weather station (not for the model)."""
            self._called("reset_station", {"city": city})
            return "reset"

        app = server.streamable_http_app()
        app.router.routes.extend(server.sse_app().routes)
        self.app = _RecordRequests(app, self)  # type: ignore[assignment]

    def _called(self, tool: str, arguments: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append((tool, arguments))

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self.calls.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def sse_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse"


class _RecordRequests:
    def __init__(self, app: ASGIApp, server: WeatherMCPServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.server._record({"method": scope["method"], "path": scope["path"], "headers": headers})
        await self.app(scope, receive, send)
