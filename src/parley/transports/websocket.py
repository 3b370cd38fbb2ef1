"""The WebSocket transport: `GET /v1/realtime`, as the hosted API answers it.

The upgrade is always accepted; a bad key or request then gets one `error` event and a close
(3000 for auth, 4000 for the request), as api.openai.com does.  The `realtime` subprotocol is
selected when offered (browsers fail the handshake otherwise) and the key is never echoed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..protocol.errors import ProtocolError
from ..protocol.ids import IdFactory

log = logging.getLogger("parley.ws")

KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"


class WebSocketTransport:
    """Adapts a Starlette WebSocket to the runner's Transport."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is not None:
            return message["text"]
        if message.get("bytes") is not None:
            return message["bytes"]
        return None

    async def send(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED and self.ws.client_state == WebSocketState.CONNECTED:
            await self.ws.close(code=code, reason=reason[:120])


def offered_protocols(ws: WebSocket) -> list[str]:
    return [p.strip() for p in ws.scope.get("subprotocols", [])]


def subprotocol_key(ws: WebSocket) -> str | None:
    """The key a browser presents as an `openai-insecure-api-key.<key>` subprotocol (browsers
    cannot set headers); the server reads the headers' key first (server/auth.py)."""
    for proto in offered_protocols(ws):
        if proto.startswith(KEY_PROTOCOL):
            return proto[len(KEY_PROTOCOL):]
    return None


def wants_beta(ws: WebSocket) -> bool:
    header = ws.headers.get("openai-beta", "")
    return "realtime=v1" in header.replace(" ", "") or BETA_PROTOCOL in offered_protocols(ws)


async def accept(ws: WebSocket) -> None:
    subprotocol = "realtime" if "realtime" in offered_protocols(ws) else None
    await ws.accept(subprotocol=subprotocol)


async def refuse(ws: WebSocket, err: ProtocolError, close_code: int) -> None:
    """Send one `error` event and close, the way the hosted API refuses a connection."""
    event: dict[str, Any] = {"event_id": IdFactory().event(), "type": "error", "error": err.to_error_object()}
    reason = err.type + (f".{err.code}" if err.code else "")
    try:
        await ws.send_text(json.dumps(event))
        await ws.close(code=close_code, reason=reason)
    except Exception:  # noqa: BLE001 - the client may already be gone
        log.debug("client left during refusal", exc_info=True)
