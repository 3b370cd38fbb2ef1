"""Remote MCP servers for one session, with the official `mcp` SDK: the I/O half of core/mcp.py.

`McpClients` carries out `ListMcpTools` and `CallMcpTool` in tasks and reports `McpToolsListed`
and `McpToolResult` to the session's inbox.  It keeps one MCP client per server label,
connected on first use over streamable HTTP (or SSE when the URL ends in `/sse`) with the
definition's `headers` and `authorization` (sent as `Authorization: Bearer ...`).  The SDK's
client lives in anyio task groups that must be entered and left by the same task, so each
connection is owned by a task of its own; requests come from the job tasks.  Everything has a
timeout; a dead connection is made again on next use; `aclose` ends every job and connection
when the session ends.  Tool arguments and results are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp import Client, Implementation, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from ..core.io import CallMcpTool, ListMcpTools, McpToolResult, McpToolsListed
from ..core.mcp_tools import connection_key

log = logging.getLogger("parley.mcp")

Put = Callable[[Any], Awaitable[None]]
CONNECT_TIMEOUT_S = 10.0  # connecting and the MCP handshake
LIST_TIMEOUT_S = 20.0  # listing every page of tools
CALL_TIMEOUT_S = 60.0  # one tool call
STREAM_READ_TIMEOUT_S = 300.0  # an idle server-to-client stream is dropped (and made again on use)
CLOSE_TIMEOUT_S = 3.0
MAX_PAGES = 20


class _Connection:
    """One server's MCP client, owned by its own task until `close`."""

    def __init__(self, server: dict[str, Any], connect_timeout_s: float) -> None:
        self.server = server
        self.key = connection_key(server)
        self.connect_timeout_s = connect_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Client] | None = None
        self._stop = asyncio.Event()

    async def client(self) -> Client:
        if self._task is None or self._task.done():
            self._ready = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._own(self._ready), name=f"mcp-{self.server['server_label']}")
        assert self._ready is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), self.connect_timeout_s)
        except asyncio.TimeoutError:
            self._task.cancel()  # the next use starts over
            raise

    async def _own(self, ready: asyncio.Future[Client]) -> None:
        try:
            async with Client(self._transport(), read_timeout_seconds=CALL_TIMEOUT_S,
                              client_info=Implementation(name="parley", version="0.1.0")) as client:
                ready.set_result(client)
                await self._stop.wait()
        except BaseException as exc:  # reported to whoever waits for the client
            if not ready.done():
                ready.set_exception(_leaf(exc) if isinstance(exc, Exception) else ConnectionError("cancelled"))
            if not isinstance(exc, Exception):
                raise
            log.debug("MCP connection ended", exc_info=True, extra={"server_label": self.server["server_label"]})

    def _transport(self) -> Any:
        url = self.server["server_url"]
        headers = dict(self.server.get("headers") or {})
        if self.server.get("authorization"):
            headers["Authorization"] = f"Bearer {self.server['authorization']}"
        if urlsplit(url).path.rstrip("/").endswith("/sse"):
            return sse_client(url, headers=headers, timeout=self.connect_timeout_s, sse_read_timeout=STREAM_READ_TIMEOUT_S)
        return _streamable_http(url, headers, httpx2.Timeout(self.connect_timeout_s, read=STREAM_READ_TIMEOUT_S))

    async def close(self) -> None:
        task = self._task
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT_S)
        except (asyncio.TimeoutError, Exception):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@contextlib.asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str], timeout: httpx2.Timeout) -> AsyncIterator[Any]:
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


class McpClients:
    """The MCP work of one session: jobs (by response, so a stopped response stops its calls)
    and one connection per server label."""

    def __init__(self, *, connect_timeout_s: float = CONNECT_TIMEOUT_S, list_timeout_s: float = LIST_TIMEOUT_S,
                 call_timeout_s: float = CALL_TIMEOUT_S, session_id: str = "") -> None:
        self.connect_timeout_s = connect_timeout_s
        self.list_timeout_s = list_timeout_s
        self.call_timeout_s = call_timeout_s
        self.session_id = session_id
        self._connections: dict[str, _Connection] = {}
        self._jobs: dict[str | None, set[asyncio.Task[None]]] = {}  # response id (None: listings) -> tasks

    def start(self, out: ListMcpTools | CallMcpTool, put: Put) -> None:
        if isinstance(out, ListMcpTools):
            owner, job = None, self._list(out, put)
        else:
            owner, job = out.response_id, self._call(out, put)
        self._track(owner, asyncio.create_task(job, name=f"mcp-{out.item_id}"))

    def cancel(self, response_id: str) -> None:
        for task in self._jobs.pop(response_id, set()):
            task.cancel()

    async def aclose(self) -> None:
        tasks = [t for jobs in self._jobs.values() for t in jobs]
        self._jobs.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)

    def _connection(self, server: dict[str, Any]) -> _Connection:
        label = server["server_label"]
        conn = self._connections.get(label)
        if conn is None or conn.key != connection_key(server):
            if conn is not None:  # a new definition for this label: the old client goes
                self._track(None, asyncio.ensure_future(conn.close()))
            conn = self._connections[label] = _Connection(server, self.connect_timeout_s)
        return conn

    def _track(self, owner: str | None, task: asyncio.Future[None]) -> None:
        self._jobs.setdefault(owner, set()).add(task)  # type: ignore[arg-type]

        def forget(_t: object) -> None:
            tasks = self._jobs.get(owner)
            if tasks is not None:
                tasks.discard(task)  # type: ignore[arg-type]
                if not tasks:
                    del self._jobs[owner]
        task.add_done_callback(forget)

    async def _list(self, out: ListMcpTools, put: Put) -> None:
        label = out.server["server_label"]
        try:
            client = await self._connection(out.server).client()
            tools = await asyncio.wait_for(_list_all(client), self.list_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = describe(exc, "listing the tools", self.list_timeout_s)
            log.warning("MCP tool listing failed", extra={"session_id": self.session_id, "server_label": label,
                                                          "reason": reason})
            await put(McpToolsListed(out.item_id, error=reason))
            return
        await put(McpToolsListed(out.item_id, tools=tools))

    async def _call(self, out: CallMcpTool, put: Put) -> None:
        try:
            client = await self._connection(out.server).client()
            result = await asyncio.wait_for(client.call_tool(out.name, out.arguments), self.call_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = call_error(exc, self.call_timeout_s)
            log.info("MCP tool call failed", extra={"session_id": self.session_id, "error_type": error["type"],
                                                    "server_label": out.server["server_label"]})
            await put(McpToolResult(out.item_id, error=error))
            return
        text = result_text(result)
        if result.is_error:
            await put(McpToolResult(out.item_id, error={"type": "tool_execution_error",
                                                        "message": text or "The tool reported an error."}))
        else:
            await put(McpToolResult(out.item_id, output=text))


async def _list_all(client: Client) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            entry: dict[str, Any] = {"name": tool.name, "input_schema": tool.input_schema}
            if tool.description:
                entry["description"] = tool.description
            if tool.annotations is not None:
                entry["annotations"] = tool.annotations.model_dump(by_alias=True, exclude_none=True, mode="json")
            tools.append(entry)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def result_text(result: Any) -> str:
    """A tool result as the text the model reads: its text parts, else its structured content."""
    texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    if texts:
        return "\n".join(texts)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return ""


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside anyio's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException, doing: str, timeout_s: float) -> str:
    exc = _leaf(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return f"The MCP server did not answer in time ({doing}, {timeout_s:g} s)."
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"The MCP server answered HTTP {exc.response.status_code}."
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def call_error(exc: BaseException, timeout_s: float) -> dict[str, Any]:
    """An `mcp_call` item error for a call that did not return a result."""
    exc = _leaf(exc)
    if isinstance(exc, MCPError):
        return {"type": "protocol_error", "code": exc.code, "message": exc.error.message}
    if isinstance(exc, httpx2.HTTPStatusError):
        return {"type": "http_error", "code": exc.response.status_code,
                "message": f"The MCP server answered HTTP {exc.response.status_code}."}
    return {"type": "tool_execution_error", "message": describe(exc, "calling the tool", timeout_s)}
