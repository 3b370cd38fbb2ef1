"""Call-addressed requests that reach a node which does not hold the call are forwarded to the
node that does (found in the shared call directory, cluster/), so the load balancer in front
needs no stickiness and the official SDKs need nothing special.

* `POST /v1/realtime/calls/{id}/hangup|accept|reject|refer`: re-sent to the owner's internal
  port with the client's own key and body; its answer is relayed as it is.
* Sideband `GET /v1/realtime?call_id=` (WebSocket): a WebSocket to the owner's internal port,
  with every message relayed both ways until either side closes.

A forwarded request carries `x-parley-cluster-token` (the shared `PARLEY_CLUSTER_SECRET`): the
owner's internal port refuses requests without it (server/app.py `InternalPortGuard`) and never
forwards a forwarded request again, so there are no loops.  The client's key is still what
authorizes the action on the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import websockets
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from ..cluster.base import CallOwner, SharedStateUnavailable
from .rest import api_error
from .state import AppState

log = logging.getLogger("parley.cluster")

TOKEN_HEADER = "x-parley-cluster-token"
FORWARDED_HEADER = "x-parley-forwarded-by"
_RELAYED = ("content-type", "retry-after", "location")


def is_forwarded(state: AppState, headers: Mapping[str, str]) -> bool:
    """A request another node of this cluster forwarded (it carries the cluster secret)."""
    secret = state.settings.cluster_secret
    token = headers.get(TOKEN_HEADER)
    return bool(secret and token) and hmac.compare_digest(token.encode(), secret.get_secret_value().encode())


def _holds(state: AppState, call_id: str) -> bool:
    return call_id in state.calls or (state.sip is not None and call_id in state.sip.ringing)


async def owner_elsewhere(state: AppState, headers: Mapping[str, str], call_id: str) -> CallOwner | None:
    """The other node holding `call_id`, when this request should be forwarded there."""
    if not state.shared.clustered or _holds(state, call_id) or is_forwarded(state, headers):
        return None
    try:
        owner = await state.shared.call_owner(call_id)
    except SharedStateUnavailable:
        return None  # answered as if the call were not here: 404
    return owner if owner is not None and owner.node_id != state.shared.node_id else None


def _headers(state: AppState, headers: Mapping[str, str], key: str | None = None) -> dict[str, str]:
    out = {name: headers[name] for name in ("authorization", "api-key", "content-type", "openai-beta") if name in headers}
    if key is not None and "authorization" not in out and "api-key" not in out:
        out["authorization"] = f"Bearer {key}"  # a key sent as a WebSocket subprotocol
    assert state.settings.cluster_secret is not None
    out[TOKEN_HEADER] = state.settings.cluster_secret.get_secret_value()
    out[FORWARDED_HEADER] = state.shared.node_id
    return out


def _client(state: AppState) -> httpx.AsyncClient:
    if state.forwarder is None:
        # an internal port with TLS has the node's own certificate (PARLEY_SSL_CERTFILE): trust it
        verify: Any = state.settings.ssl_certfile or True
        state.forwarder = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0), verify=verify)
    return state.forwarder


async def forward_http(request: Request, state: AppState, owner: CallOwner) -> Response:
    body = await request.body()
    url = owner.internal_url.rstrip("/") + request.url.path
    try:
        reply = await _client(state).request(request.method, url, content=body,
                                             headers=_headers(state, request.headers))
    except httpx.HTTPError as exc:
        log.warning("forwarding to the call's node failed", extra={"node": owner.node_id, "reason": type(exc).__name__})
        return api_error(502, "The node holding this call did not answer; retry shortly.", code="call_node_unreachable",
                         kind="server_error")
    headers = {name: reply.headers[name] for name in _RELAYED if name in reply.headers}
    return Response(reply.content, status_code=reply.status_code, headers=headers)


async def forward_websocket(ws: WebSocket, state: AppState, owner: CallOwner, key: str | None) -> None:
    """Relay an accepted sideband WebSocket to the owner node's, both ways, until one side closes."""
    base = owner.internal_url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    url = f"{base}/v1/realtime?{ws.url.query}"
    try:
        upstream = await websockets.connect(url, additional_headers=_headers(state, ws.headers, key),
                                            max_size=state.settings.max_frame_bytes, compression=None,
                                            open_timeout=5)
    except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as exc:
        log.warning("forwarding a sideband to the call's node failed", extra={"reason": type(exc).__name__})
        await ws.close(1011, "call_node_unreachable")
        return

    async def down() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_text(message)

    async def up() -> None:
        while True:
            message: dict[str, Any] = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            await upstream.send(message["text"] if message.get("text") is not None else message.get("bytes") or b"")

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await upstream.close()
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await ws.close(code if code != 1006 else 1011, upstream.close_reason or "")
