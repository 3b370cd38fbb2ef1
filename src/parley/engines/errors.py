"""The one error type every engine raises.

Like httpx's `map_httpcore_exceptions`, each engine translates its provider's exceptions at its
own boundary, so the runtime only ever sees `EngineError`.
"""

from __future__ import annotations


class EngineError(Exception):
    """An engine could not do its job.

    `retryable` says whether trying the same request again may succeed (a 5xx, a timeout, a
    dropped connection) as opposed to a request the engine will always refuse (bad model name,
    missing model file, a 4xx).  `code` is a short machine-readable reason that ends up in the
    client's `error.code`.
    """

    def __init__(self, message: str, *, code: str = "engine_error", retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"EngineError({self.message!r}, code={self.code!r}, retryable={self.retryable})"
