"""What the OpenAI-compatible engines (`llm_openai`, `stt_openai`, `tts_openai`) share.

The `openai.AsyncOpenAI` client they talk through, a `__repr__` that never shows the API key,
and the translation of `openai` (and httpx) failures into `EngineError`s whose codes start with
the engine's prefix ("llm", "stt", "tts"): `<prefix>_timeout`, `<prefix>_unavailable`,
`<prefix>_stream_interrupted`, `<prefix>_http_<status>` and `<prefix>_error`.
"""

from __future__ import annotations

import importlib

import openai

from parley.engines.errors import EngineError

PLACEHOLDER_KEY = "not-needed"  # local servers want no key, but the client insists on one
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx
MALFORMED_ERRORS = (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError)


def _httpx_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeout, transport) exception classes of whichever httpx the `openai` client uses:
    errors raised while reading a response body are not wrapped in openai's own types."""
    timeouts: list[type[BaseException]] = []
    transports: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transports.append(module.TransportError)
    return tuple(timeouts), tuple(transports)


TIMEOUT_ERRORS, TRANSPORT_ERRORS = _httpx_errors()


def make_client(base_url: str, api_key: str | None, timeout_s: float, max_retries: int) -> openai.AsyncOpenAI:
    """An `AsyncOpenAI` client for `base_url`; a placeholder key when there is none."""
    return openai.AsyncOpenAI(
        base_url=base_url.rstrip("/"),
        api_key=api_key or PLACEHOLDER_KEY,
        timeout=timeout_s,
        max_retries=max_retries,
    )


class KeylessRepr:
    """`__repr__` for an engine with `base_url` and `model`: never shows the API key."""

    base_url: str
    model: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def status_detail(exc: openai.APIStatusError, *, fastapi_detail: bool = True) -> str:
    """The server's own error message: OpenAI-style JSON (vLLM, llama.cpp), Ollama's
    {"error": str}, FastAPI's {"detail": ...} (unless `fastapi_detail` is False), or text."""
    detail: object = exc.body
    if isinstance(detail, dict):
        detail = detail.get("error", detail.get("detail", detail) if fastapi_detail else detail)
    if isinstance(detail, dict):
        detail = detail.get("message")
    if not isinstance(detail, str) or not detail.strip():
        detail = exc.message or ""
    return detail.strip()[:500]


def map_error(
    exc: Exception,
    *,
    where: str,
    prefix: str,
    timeout_s: float,
    started: bool,
    malformed_code: str | None = None,
    httpx_errors: bool = True,
    repr_cause: bool = True,
    fastapi_detail: bool = True,
) -> EngineError:
    """Translate an `openai` (or httpx, or decoding) exception into an `EngineError`.

    `where` names the server in messages; `started` says whether output already flowed (a
    timeout or dropped connection then happened mid-stream).  `malformed_code`, when given, is
    the code for decoding errors (ValueError, KeyError, ...); otherwise they are `<prefix>_error`.
    `httpx_errors` also counts raw httpx timeouts and transport errors as timeouts and
    connection errors; `repr_cause` shows a connection error's cause with `repr`;
    `fastapi_detail` is passed to `status_detail`.
    """
    if isinstance(exc, EngineError):
        return exc
    timeouts = (openai.APITimeoutError, *TIMEOUT_ERRORS) if httpx_errors else (openai.APITimeoutError,)
    transports = (openai.APIConnectionError, *TRANSPORT_ERRORS) if httpx_errors else (openai.APIConnectionError,)
    if isinstance(exc, timeouts):
        phase = "went silent mid-stream for" if started else "did not answer within"
        return EngineError(f"{where} {phase} {timeout_s:g}s", code=f"{prefix}_timeout", retryable=True)
    if isinstance(exc, transports):
        cause = exc.__cause__ or exc
        shown = repr(cause) if repr_cause else str(cause)
        if started:
            return EngineError(
                f"{where} dropped the connection mid-stream: {shown}",
                code=f"{prefix}_stream_interrupted",
                retryable=True,
            )
        return EngineError(f"cannot reach {where}: {shown}", code=f"{prefix}_unavailable", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return EngineError(
            f"{where} answered HTTP {status}: {status_detail(exc, fastapi_detail=fastapi_detail)}",
            code=f"{prefix}_http_{status}",
            retryable=is_retryable_status(status),
        )
    if isinstance(exc, openai.APIError):  # e.g. an {"error": ...} event inside the stream
        return EngineError(f"{where} reported an error: {exc.message}", code=f"{prefix}_error")
    if malformed_code is not None and isinstance(exc, MALFORMED_ERRORS):
        return EngineError(f"{where} sent a malformed response: {exc!r}", code=malformed_code)
    return EngineError(f"{where} failed: {exc!r}", code=f"{prefix}_error")
