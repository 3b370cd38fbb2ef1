"""The ASGI application factory: routes, CORS and body limit; at start-up the engines, SIP (when
`sip_port` is set), `gc.freeze()` of everything built so far, and the load guard."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engines.registry import build_engines
from ..runtime.limits import TokenLimiter
from ..transports.ice_ports import limit_ice_ports
from .audio_routes import router as audio_router
from .auth import Keys
from .calls import router as calls_router
from .chat_completions import router as chat_router
from .playground import router as playground_router
from .realtime_ws import realtime_websocket
from .rest import router
from .sessions import load_guard
from .settings import Settings
from .sip_calls import SipCalls
from .sip_calls import router as sip_router
from .state import AppState

log = logging.getLogger("parley.server")


# the routes whose bodies carry audio, and so may be as large as `max_audio_upload_bytes`
AUDIO_UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions"})


class BodyLimit:
    """Refuse REST bodies over `max_bytes` (`audio_max_bytes` on the audio upload routes) with
    413, by Content-Length and while streaming (a chunked body stops being read at the cap)."""

    def __init__(self, app: ASGIApp, max_bytes: int, audio_max_bytes: int | None = None) -> None:
        self.app = app
        self.default_max = max_bytes
        self.audio_max = max_bytes if audio_max_bytes is None else audio_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.audio_max if scope.get("path") in AUDIO_UPLOAD_PATHS else self.default_max
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _too_large(send, max_bytes)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = ('{"error":{"message":"Request body too large (limit %d bytes).","type":"invalid_request_error",'
            '"param":null,"code":"request_too_large"}}' % limit).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings=settings, keys=Keys(settings.api_keys), limiter=TokenLimiter(settings.tokens_per_minute))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engines = build_engines(settings)
        if settings.sip_port is not None:
            state.sip = SipCalls(state)
            await state.sip.start()
        # Everything imported and built so far lives as long as the server: move it out of the
        # collector's reach, so full collections under load stay short (bench: a 100-180 ms
        # pause per ~20 s at 75+ sessions without this).
        gc.collect()
        gc.freeze()
        state.load = load_guard(state)
        probe = asyncio.create_task(state.load.run(), name="load-probe")
        try:
            yield
        finally:
            probe.cancel()
            for call in list(state.calls.values()):
                await call.peer.close()
            if state.sip is not None:
                await state.sip.close()
            await state.engines.aclose()

    if settings.ice_port_min is not None or settings.ice_port_max is not None:
        limit_ice_ports(settings.ice_port_min or 1024, settings.ice_port_max or 65535)
    app = FastAPI(title="Parley", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.parley = state
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, audio_max_bytes=settings.max_audio_upload_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-OpenAI-Agents-SDK", "OpenAI-Beta", "api-key"],
        expose_headers=["Location"],
        max_age=600,
    )
    app.include_router(router)
    app.include_router(audio_router)
    app.include_router(chat_router)
    app.include_router(calls_router)
    app.include_router(sip_router)
    if settings.playground:
        app.include_router(playground_router)
    app.add_api_websocket_route("/v1/realtime", realtime_websocket)
    app.add_api_websocket_route("/realtime", realtime_websocket)
    return app
