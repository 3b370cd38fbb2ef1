"""What the app holds for its lifetime: settings, keys, limits, the shared state (cluster/),
engines, live calls, the SIP entry point and the load guard."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cluster.base import SharedState
from ..engines.registry import EngineSet
from ..runtime.limits import TokenLimiter
from ..runtime.load import LoadGuard
from .auth import Keys
from .settings import Settings


@dataclass
class AppState:
    settings: Settings
    keys: Keys
    limiter: TokenLimiter  # or cluster.tokens.ClusterTokenLimiter, with the same interface
    shared: SharedState
    worker: int = 0  # this process's index among `parley serve --workers N`
    engines: EngineSet | None = None
    clock: Callable[[], float] = field(default=time.time)
    live_sessions: int = 0
    draining: bool = False  # shutting down: no new sessions
    runners: set[Any] = field(default_factory=set)
    calls: dict[str, Any] = field(default_factory=dict)  # call id -> live WebRTC or SIP call (server/calls.py)
    sip: Any = None  # the SIP entry point when PARLEY_SIP_PORT is set (server/sip_calls.py)
    forwarder: Any = None  # httpx client for requests forwarded to other nodes (server/forwarding.py)
    load: LoadGuard | None = None  # the event loop's load probe, while the server runs (server/sessions.py)

    def accepts_model(self, model: str) -> bool:
        return model in self.settings.models
