"""The ASGI application factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from ..engines.registry import build_engines
from ..runtime.limits import TokenLimiter
from .auth import Keys
from .realtime_ws import realtime_websocket
from .rest import router
from .settings import Settings
from .state import AppState

log = logging.getLogger("parley.server")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings=settings, keys=Keys(settings.api_keys), limiter=TokenLimiter(settings.tokens_per_minute))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engines = build_engines(settings)
        try:
            yield
        finally:
            await state.engines.aclose()

    app = FastAPI(title="Parley", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.parley = state
    app.include_router(router)
    app.add_api_websocket_route("/v1/realtime", realtime_websocket)
    app.add_api_websocket_route("/realtime", realtime_websocket)
    return app
