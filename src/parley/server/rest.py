"""REST routes: ephemeral keys (GA and beta; minting and revoking), models, metrics, health and
readiness."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field, TypeAdapter

from ..core.session import Session, SessionSetup
from ..protocol import session_models as sm
from ..protocol.client_events import beta_session_to_ga
from ..protocol.errors import ProtocolError
from ..protocol.session_config import to_beta
from ..protocol.strict import Strict, parse_strict
from ..cluster.base import SharedStateUnavailable
from .auth import header_key
from .sessions import RETRY_AFTER_S, saturation
from .state import AppState

router = APIRouter()

_ga_update = TypeAdapter(sm.GASessionUpdate)


class ExpiresAfter(Strict):
    anchor: Literal["created_at"] = "created_at"
    seconds: Annotated[int, Field(ge=10, le=7200)] = 600


class ClientSecretRequest(Strict):
    expires_after: ExpiresAfter | None = None
    session: sm.GASessionUpdate | None = None


def _state(request: Request) -> AppState:
    return request.app.state.parley  # type: ignore[no-any-return]


def api_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
              kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status,
                        headers=headers)


def _require_api_key(request: Request) -> JSONResponse | None:
    """Minting keys takes a real API key (never an ephemeral one)."""
    state = _state(request)
    key = header_key(request.headers)
    if state.keys.open:
        return None
    if key is None:
        return api_error(401, "Missing bearer or basic authentication in header")
    if not state.keys.check_api_key(key):
        return api_error(401, "Incorrect API key provided.", code="invalid_api_key")
    return None


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"We could not parse the JSON body of your request. ({exc})", "invalid_json") from None


def _effective(state: AppState, bound: Any, kind: str) -> dict[str, Any]:
    model = getattr(bound, "model", None) or state.settings.default_model
    setup = SessionSetup(kind=kind, model=model, bound=bound, voice=state.settings.voice,
                         instructions=state.settings.instructions)
    return Session(setup).config


def _protocol_error(err: ProtocolError) -> JSONResponse:
    return api_error(400, err.message, code=err.code, param=err.param)


def _shared_state_unavailable() -> JSONResponse:
    return api_error(503, "The server cannot reach its shared state (Redis); retry shortly.",
                     code="shared_state_unavailable", kind="server_error", headers={"Retry-After": str(RETRY_AFTER_S)})


async def _mint(state: AppState, ttl: int, bound: Any, kind: str) -> tuple[str, int] | JSONResponse:
    try:
        return await state.keys.mint(now=state.clock(), ttl_s=ttl, bound=bound, kind=kind)
    except SharedStateUnavailable:
        return _shared_state_unavailable()


class RevokeRequest(Strict):
    value: str


@router.post("/v1/realtime/client_secrets/revoke")
async def revoke_client_secret(request: Request) -> Any:
    """Parley's own: revoke an ephemeral key on every node at once (sessions it opened run on)."""
    if (denied := _require_api_key(request)) is not None:
        return denied
    state = _state(request)
    try:
        req = parse_strict(RevokeRequest, await _json_body(request))
        revoked = await state.keys.revoke(req.value)
    except ProtocolError as err:
        return _protocol_error(err)
    except SharedStateUnavailable:
        return _shared_state_unavailable()
    if not revoked:
        return api_error(404, "No such ephemeral key (it may have expired).", code="client_secret_not_found",
                         param="value")
    return {"object": "realtime.client_secret.revoked", "revoked": True}


@router.post("/v1/realtime/client_secrets")
async def client_secrets(request: Request) -> Any:
    if (denied := _require_api_key(request)) is not None:
        return denied
    state = _state(request)
    try:
        req = parse_strict(ClientSecretRequest, await _json_body(request))
        session = req.session
        if session is not None and session.type == "realtime" and session.model and not state.accepts_model(session.model):
            raise ProtocolError(f'Model "{session.model}" is not supported in realtime mode.', "invalid_model", "session.model")
    except ProtocolError as err:
        return _protocol_error(err)
    ttl = (req.expires_after or ExpiresAfter()).seconds
    kind = session.type if session is not None else "realtime"
    minted = await _mint(state, ttl, session, kind)
    if isinstance(minted, JSONResponse):
        return minted
    value, expires_at = minted
    config = _effective(state, session, kind)
    config["expires_at"] = 0
    return {"value": value, "expires_at": expires_at, "session": config}


@router.post("/v1/realtime/sessions")
async def beta_sessions(request: Request) -> Any:
    if (denied := _require_api_key(request)) is not None:
        return denied
    state = _state(request)
    try:
        req = parse_strict(sm.BetaSessionUpdate, await _json_body(request))
        ga = beta_session_to_ga(req, transcription=False)
        ga.pop("_temperature", None)
        bound = parse_strict(_ga_update, ga, "session") if req.model_fields_set - {"client_secret"} else None
        if req.model and not state.accepts_model(req.model):
            raise ProtocolError(f'Model "{req.model}" is not supported in realtime mode.', "invalid_model", "model")
    except ProtocolError as err:
        return _protocol_error(err)
    ttl = _beta_ttl(req.client_secret, "expires_after", default=60)
    if isinstance(ttl, JSONResponse):
        return ttl
    minted = await _mint(state, ttl, bound, "realtime")
    if isinstance(minted, JSONResponse):
        return minted
    value, expires_at = minted
    session = to_beta(_effective(state, bound, "realtime"), req.temperature or 0.8)
    session["expires_at"] = 0
    return {**session, "client_secret": {"value": value, "expires_at": expires_at}}


@router.post("/v1/realtime/transcription_sessions")
async def beta_transcription_sessions(request: Request) -> Any:
    if (denied := _require_api_key(request)) is not None:
        return denied
    state = _state(request)
    try:
        req = parse_strict(sm.BetaTranscriptionSessionUpdate, await _json_body(request))
        ga = beta_session_to_ga(req, transcription=True)
        bound = parse_strict(_ga_update, ga, "session")
    except ProtocolError as err:
        return _protocol_error(err)
    ttl = _beta_ttl(req.client_secret, "expires_at", default=600)
    if isinstance(ttl, JSONResponse):
        return ttl
    minted = await _mint(state, ttl, bound, "transcription")
    if isinstance(minted, JSONResponse):
        return minted
    value, expires_at = minted
    session = to_beta(_effective(state, bound, "transcription"))
    session.pop("expires_at", None)
    return {**session, "client_secret": {"value": value, "expires_at": expires_at}}


def _beta_ttl(secret: Any, field_name: str, *, default: int) -> int | JSONResponse:
    spec = getattr(secret, field_name, None) if secret is not None else None
    if not spec:
        return default
    seconds = spec.get("seconds", default)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 10 <= seconds <= 7200:
        return api_error(400, "Invalid 'client_secret.seconds': expected an integer between 10 and 7200.",
                         code="invalid_value", param=f"client_secret.{field_name}.seconds")
    return seconds


@router.get("/v1/models")
async def models(request: Request) -> Any:
    if (denied := _require_api_key(request)) is not None:
        return denied
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "parley"}
                                       for m in _state(request).settings.models]}


@router.get("/metrics")
async def metrics_endpoint() -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz() -> Any:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Any:
    state = _state(request)
    engines = state.engines
    saturated = saturation(state)  # new sessions would be refused: send callers elsewhere
    status = "not_ready" if not (engines and engines.ready) else saturated or "ready"
    body: dict[str, Any] = {"status": status, "engines": engines.all_status() if engines else {},
                            "missing_engines": engines.speech.missing() if engines else [],
                            "live_sessions": state.live_sessions, "node": state.shared.node_id,
                            "worker": state.worker}
    if state.load is not None:
        load = state.load.load
        body["load"] = {"cpu_share": round(load.cpu_share, 3), "lag_ms": round(load.lag_s * 1000, 1)}
    return JSONResponse(body, status_code=200 if status == "ready" else 503)
