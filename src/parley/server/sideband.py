"""Sideband control: `GET /v1/realtime?call_id=rtc_...` attaches a WebSocket to a live WebRTC or
SIP call.

The app's server watches the call's events and steers it (`session.update`, tool results,
`response.create`) with a standard API key (or the ephemeral key that opened the call) while the
browser or the phone holds the media.  Events from
either side go to the one session, in arrival order; every server event goes to both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket

from ..protocol.errors import ProtocolError
from ..transports.websocket import WebSocketTransport, refuse
from .auth import Principal
from .forwarding import forward_websocket, owner_elsewhere
from .state import AppState

log = logging.getLogger("parley.sideband")

REQUEST_CLOSE = 4000
SLOW_CLOSE = 1013
MAX_QUEUED_EVENTS = 2048  # events waiting for a slow sideband reader before it is dropped


async def attach_sideband(ws: WebSocket, state: AppState, principal: Principal, call_id: str, key: str | None) -> None:
    if (owner := await owner_elsewhere(state, ws.headers, call_id)) is not None:
        await forward_websocket(ws, state, owner, key)  # the call lives on another node
        return
    call = state.calls.get(call_id)
    if call is None or not call.open_to(principal):
        await refuse(ws, ProtocolError(f"Call '{call_id[:64]}' not found.", "call_not_found", "call_id"), REQUEST_CLOSE)
        return
    transport = WebSocketTransport(ws)
    queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUED_EVENTS)

    def listen(text: str) -> None:
        try:
            queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("sideband socket does not read; detaching it", extra={"call_id": call_id})
            call.peer.events.listeners.discard(listen)
            writer.cancel()

    async def write() -> None:
        while (text := await queue.get()) is not None:
            await transport.send(text)

    session = call.runner.session
    await transport.send(session.describe("session.created"))
    writer = asyncio.create_task(write(), name=f"{call_id}-sideband-writer")
    call.peer.events.listeners.add(listen)
    call.sideband.add(ws)
    log.info("sideband attached", extra={"call_id": call_id, "key_id": principal.key_id})
    try:
        while (message := await transport.receive()) is not None and not writer.done():
            call.peer.events.feed(message)
    finally:
        call.peer.events.listeners.discard(listen)
        call.sideband.discard(ws)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
        if writer.cancelled() and not call.peer.ended.is_set():
            await transport.close(SLOW_CLOSE, "slow_client")
        log.info("sideband detached", extra={"call_id": call_id})
