"""How server events leave the session: stamped with an `event_id` and, for a beta client,
converted to the beta dialect (which needs the session's temperature, a beta-only setting).

Every collaborator of `Session` sends through the one `Outbox` it is given, so the dialect is
decided in one place.
"""

from __future__ import annotations

from typing import Any

from ..protocol.beta import event_to_beta
from ..protocol.errors import ProtocolError
from ..protocol.ids import IdFactory
from .io import Output, Send


class Outbox:
    def __init__(self, ids: IdFactory, dialect: str, temperature: float) -> None:
        self.ids = ids
        self.dialect = dialect
        self.temperature = temperature  # the beta session's; `session.update` may change it

    def send(self, event: dict[str, Any]) -> list[Output]:
        """One GA event (without `event_id`), as the client's dialect has it (beta may drop it)."""
        if self.dialect == "beta":
            converted = event_to_beta(event, self.temperature)
            if converted is None:
                return []
            event = converted
        return [Send({"event_id": self.ids.event(), **event})]

    def sends(self, events: list[dict[str, Any]]) -> list[Output]:
        out: list[Output] = []
        for e in events:
            out += self.send(e)
        return out

    def error(self, err: ProtocolError) -> list[Output]:
        return [Send({"event_id": self.ids.event(), "type": "error", "error": err.to_error_object()})]
