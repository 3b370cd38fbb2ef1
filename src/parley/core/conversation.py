"""The default conversation: an ordered list of items plus the audio bytes that events omit, and
how long each user item's input audio is (for transcription usage and input audio tokens)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StoredAudio:
    """Audio of one content part, in the session's wire format, with transcript timing.

    `marks` are (end_ms, transcript_length) pairs recorded as speech is produced, so a
    truncation at `audio_end_ms` can keep just the words that were heard.
    """

    data: bytearray = field(default_factory=bytearray)
    duration_ms: float = 0.0
    marks: list[tuple[float, int]] = field(default_factory=list)
    fmt: dict[str, Any] | None = None  # the wire format the bytes are in
    truncated: bool = False  # cut to what was heard: later speech of its response is not stored


class Conversation:
    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._audio: dict[tuple[str, int], StoredAudio] = {}
        self._input_ms: dict[str, float] = {}  # item id -> milliseconds of input audio it carries

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return self.index(item_id) is not None  # type: ignore[arg-type]

    def items(self) -> list[dict[str, Any]]:
        return list(self._items)

    def index(self, item_id: str) -> int | None:
        for i, item in enumerate(self._items):
            if item["id"] == item_id:
                return i
        return None

    def get(self, item_id: str) -> dict[str, Any] | None:
        i = self.index(item_id)
        return None if i is None else self._items[i]

    def last_id(self) -> str | None:
        return self._items[-1]["id"] if self._items else None

    def insert(self, item: dict[str, Any], previous_item_id: str | None = None, *, at_root: bool = False) -> str | None:
        """Insert after `previous_item_id` (append when None, first when `at_root`).
        Returns the id of the item now before it, as server events report it."""
        if at_root:
            self._items.insert(0, item)
            return None
        if previous_item_id is None:
            prev = self.last_id()
            self._items.append(item)
            return prev
        i = self.index(previous_item_id)
        if i is None:
            raise KeyError(previous_item_id)
        self._items.insert(i + 1, item)
        return previous_item_id

    def previous_id(self, item_id: str) -> str | None:
        i = self.index(item_id)
        return None if not i else self._items[i - 1]["id"]

    def delete(self, item_id: str) -> bool:
        i = self.index(item_id)
        if i is None:
            return False
        del self._items[i]
        for key in [k for k in self._audio if k[0] == item_id]:
            del self._audio[key]
        self._input_ms.pop(item_id, None)
        return True

    def audio(self, item_id: str, content_index: int, create: bool = False) -> StoredAudio | None:
        key = (item_id, content_index)
        if create and key not in self._audio:
            self._audio[key] = StoredAudio()
        return self._audio.get(key)

    def add_input_audio(self, item_id: str, content_index: int, data: bytes, duration_ms: float) -> None:
        """Store user audio of an item in the conversation (in the session's input format)."""
        stored = self.audio(item_id, content_index, create=True)
        assert stored is not None
        stored.data += data
        stored.duration_ms = duration_ms
        self._input_ms[item_id] = self._input_ms.get(item_id, 0.0) + duration_ms

    def input_audio_ms(self, item_id: str) -> float:
        return self._input_ms.get(item_id, 0.0)

    def snapshot(self, item_id: str) -> dict[str, Any] | None:
        item = self.get(item_id)
        return None if item is None else copy.deepcopy(item)

    def find_call(self, call_id: str) -> dict[str, Any] | None:
        for item in self._items:
            if item.get("type") == "function_call" and item.get("call_id") == call_id:
                return item
        return None
