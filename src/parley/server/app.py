"""The ASGI application factory: routes, CORS, body limit and the internal port's guard; at
start-up the shared state (cluster/), the engines, SIP (when `sip_port` is set, in worker 0),
`gc.freeze()` of everything built so far, and the load guard."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import socket
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..cluster.base import SharedState
from ..cluster.local import LocalShared
from ..engines.registry import build_engines
from ..runtime.limits import TokenLimiter
from ..transports.ice_ports import limit_ice_ports
from .audio_routes import router as audio_router
from .auth import Keys
from .calls import router as calls_router
from .forwarding import is_forwarded
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


class InternalPortGuard:
    """The internal port (`internal_port` + worker) takes only what other nodes forward, with
    the cluster secret (server/forwarding.py); health, readiness and metrics are open there too."""

    OPEN = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, state: AppState, port: int) -> None:
        self.app, self.state, self.port = app, state, port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (scope["type"] in ("http", "websocket") and server is not None and server[1] == self.port
                and scope["path"] not in self.OPEN):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
            if not is_forwarded(self.state, headers):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b'{"error":{"message":"Internal port: forwarded requests only.","type":"invalid_request_error","param":null,"code":"forbidden"}}'
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def node_id(worker: int) -> str:
    """A name for this process in the cluster: host, worker index and a random tag (restarts differ)."""
    return f"{socket.gethostname()}-w{worker}-{secrets.token_hex(3)}"


def advertised_url(settings: Settings, worker: int) -> str:
    """Where other nodes reach this worker's internal port."""
    host = settings.advertise_host
    if not host:
        wildcard = settings.host in ("0.0.0.0", "::", "")
        host = socket.gethostbyname(socket.gethostname()) if wildcard else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.ssl_certfile else "http"
    return f"{scheme}://{host}:{settings.internal_port + worker}"


def shared_state(settings: Settings, worker: int) -> tuple[SharedState, TokenLimiter]:
    """In memory for one process; in Redis when `redis_url` is set (with its token counter)."""
    if not settings.redis_url:
        return LocalShared(), TokenLimiter(settings.tokens_per_minute)
    from ..cluster.redis_shared import RedisShared
    from ..cluster.tokens import ClusterTokenLimiter

    shared = RedisShared(settings.redis_url, node_id=node_id(worker), internal_url=advertised_url(settings, worker),
                         ttl_s=settings.cluster_ttl_s, heartbeat_s=settings.cluster_heartbeat_s)
    return shared, ClusterTokenLimiter(shared, settings.tokens_per_minute)  # type: ignore[return-value]


def create_app(settings: Settings | None = None, *, worker: int = 0) -> FastAPI:
    settings = settings or Settings()
    shared, limiter = shared_state(settings, worker)
    state = AppState(settings=settings, keys=Keys(settings.api_keys, shared), limiter=limiter, shared=shared,
                     worker=worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await shared.start()
        if shared.clustered:
            log.info("cluster node", extra={"node": shared.node_id, "worker": worker})
        state.engines = build_engines(settings)
        if settings.sip_port is not None and worker == 0:  # one SIP endpoint per box
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
            if state.forwarder is not None:
                await state.forwarder.aclose()
            await shared.aclose()

    if settings.ice_port_min is not None or settings.ice_port_max is not None:
        limit_ice_ports(settings.ice_port_min or 1024, settings.ice_port_max or 65535)
    app = FastAPI(title="Parley", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.parley = state
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, audio_max_bytes=settings.max_audio_upload_bytes)
    if shared.clustered:
        app.add_middleware(InternalPortGuard, state=state, port=settings.internal_port + worker)
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
