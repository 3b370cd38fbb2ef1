"""Protocol errors: what the client did wrong, as the hosted API words it.

Errors are split by blame, as in h11: a `ProtocolError` means the *client* sent something we
refuse (it becomes an `error` event and the session goes on); anything else raised inside the
core is our bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProtocolError(Exception):
    """A client mistake, carried as the fields of the `error` event's `error` object."""

    message: str
    code: str | None = None
    param: str | None = None
    event_id: str | None = None
    type: str = "invalid_request_error"

    def with_event_id(self, event_id: str | None) -> ProtocolError:
        return ProtocolError(self.message, self.code, self.param, event_id, self.type)

    def to_error_object(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


def invalid_value(param: str, value: Any, supported: list[str] | None = None) -> ProtocolError:
    message = f"Invalid value: {_short(value)!r}."
    if supported:
        message += " Supported values are: " + ", ".join(f"'{s}'" for s in supported) + "."
    return ProtocolError(message, "invalid_value", param)


def _short(value: Any, limit: int = 80) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value
