"""Per-key token budgets behind `rate_limits.updated` (a fixed one-minute window)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    used: int = 0


class TokenLimiter:
    def __init__(self, tokens_per_minute: int) -> None:
        self.limit = tokens_per_minute
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str, now: float) -> _Window:
        w = self._windows.get(key)
        if w is None or now - w.start >= 60.0:
            w = self._windows[key] = _Window(now)
        return w

    def session_started(self, key: str) -> None:
        """A session of `key` opened (the clustered limiter follows its key's total; here, nothing)."""

    def session_ended(self, key: str) -> None:
        """That session ended."""

    def record(self, key: str, tokens: int, now: float) -> None:
        self._window(key, now).used += tokens

    def remaining(self, key: str, now: float) -> int:
        return max(0, self.limit - self._window(key, now).used)

    def rate_limits(self, key: str, now: float) -> list[dict[str, object]]:
        w = self._window(key, now)
        return [{
            "name": "tokens",
            "limit": self.limit,
            "remaining": max(0, self.limit - w.used),
            "reset_seconds": round(max(0.0, 60.0 - (now - w.start)), 3),
        }]
