"""Recent assistant audio ids of `/v1/chat/completions` and their transcripts: a later request
may name an earlier answer's audio (`{"role": "assistant", "audio": {"id": ...}}`) instead of
repeating it, and the model then sees its transcript.  In memory, bounded (oldest dropped
first) and expiring (`expires_at` in the answer, an hour after it was made, as the hosted API)."""

from __future__ import annotations

import secrets
from collections import OrderedDict

TTL_S = 3600
MAX_ITEMS = 10_000


class AudioStore:
    def __init__(self, *, ttl_s: float = TTL_S, max_items: int = MAX_ITEMS) -> None:
        self.ttl_s, self.max_items = ttl_s, max_items
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def put(self, transcript: str, *, now: float) -> tuple[str, int]:
        """A new audio id for `transcript`, and when it expires (Unix seconds)."""
        self._prune(now)
        audio_id = "audio_" + secrets.token_hex(16)  # unguessable: it reads back a transcript
        expires_at = now + self.ttl_s
        self._items[audio_id] = (expires_at, transcript)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return audio_id, int(expires_at)

    def put_transcript(self, audio_id: str, transcript: str) -> None:
        """Fill in the transcript of an id handed out before the answer was complete (streaming)."""
        if audio_id in self._items:
            self._items[audio_id] = (self._items[audio_id][0], transcript)

    def get(self, audio_id: str, *, now: float) -> str | None:
        entry = self._items.get(audio_id)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def _prune(self, now: float) -> None:
        while self._items:
            oldest = next(iter(self._items))
            if self._items[oldest][0] > now:
                break
            del self._items[oldest]

    def __len__(self) -> int:
        return len(self._items)
