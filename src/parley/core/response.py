"""One response, from `response.created` to `response.done`.

`ResponseRun` turns model output (text, tool-call and speech deltas) into the GA server events
in the order the hosted API sends them (realtime-protocol.md section 3.4) and keeps the output
items, which live in the default conversation unless the response is out-of-band.  Methods
return GA event dicts without `event_id`; the session stamps and, for beta, converts them.
Its MCP calls are `run.mcp` (core/mcp_response.py), which adds items through `add_item`.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any

from ..protocol.ids import IdFactory
from .chat import Usage
from .context import OUTPUT_AUDIO_TOKENS_PER_S, estimate_tokens
from .conversation import Conversation, StoredAudio
from .mcp_response import McpCall, McpRun

Event = dict[str, Any]


@dataclass
class _OpenMessage:
    item: dict[str, Any]
    output_index: int
    audio: StoredAudio | None = None
    text: str = ""


@dataclass
class _OpenCall:
    item: dict[str, Any]
    output_index: int


@dataclass
class ResponseRun:
    id: str
    ids: IdFactory
    conversation: Conversation | None  # None for out-of-band responses
    conversation_id: str | None
    modality: str  # "text" | "audio"
    voice: str
    output_format: dict[str, Any]
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    produced_audio: bool = False
    _message: _OpenMessage | None = None
    _calls: dict[int, _OpenCall] = field(default_factory=dict)
    mcp: McpRun = field(init=False)  # MCP tools and calls (core/mcp_response.py)
    _text_tokens: int = 0
    _audio_ms: float = 0.0

    def __post_init__(self) -> None:
        self.mcp = McpRun(self.id, self.ids, self)

    # ---- events ------------------------------------------------------------------------------

    def response_object(self, status: str, details: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [copy.deepcopy(i) for i in self.output] if status != "in_progress" else [],
            "conversation_id": self.conversation_id,
            "output_modalities": [self.modality],
            "max_output_tokens": self.max_output_tokens,
            "audio": {"output": {"format": dict(self.output_format), "voice": self.voice}},
            "usage": usage,
            "metadata": self.metadata,
        }

    def created(self) -> list[Event]:
        return [{"type": "response.created", "response": self.response_object("in_progress", None, None)}]

    def add_item(self, item: dict[str, Any]) -> tuple[int, list[Event]]:
        index = len(self.output)
        self.output.append(item)
        events: list[Event] = [
            {"type": "response.output_item.added", "response_id": self.id, "output_index": index, "item": copy.deepcopy(item)}
        ]
        if self.conversation is not None:
            prev = self.conversation.insert(item)
            events.append({"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)})
        return index, events

    def finish_item(self, item: dict[str, Any], index: int, status: str) -> list[Event]:
        if "status" in item:  # MCP items have none
            item["status"] = status
        events: list[Event] = []
        if self.conversation is not None and item["id"] in self.conversation:
            prev = self.conversation.previous_id(item["id"])
            events.append({"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)})
        events.append({"type": "response.output_item.done", "response_id": self.id, "output_index": index, "item": copy.deepcopy(item)})
        return events

    def _part_ref(self, m: _OpenMessage) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": m.item["id"], "output_index": m.output_index, "content_index": 0}

    def _open_message(self) -> list[Event]:
        events = self._close_calls("completed")
        item = {"id": self.ids.new("item"), "object": "realtime.item", "type": "message",
                "status": "in_progress", "role": "assistant", "content": []}
        index, added = self.add_item(item)
        events += added
        m = _OpenMessage(item, index)
        if self.modality == "audio":
            item["content"].append({"type": "output_audio", "transcript": ""})
            part = {"type": "audio", "transcript": ""}
            if self.conversation is not None:
                m.audio = self.conversation.audio(item["id"], 0, create=True)
            else:
                m.audio = StoredAudio()
            assert m.audio is not None
            m.audio.fmt = dict(self.output_format)
        else:
            item["content"].append({"type": "output_text", "text": ""})
            part = {"type": "text", "text": ""}
        events.append({"type": "response.content_part.added", **self._part_ref(m), "part": part})
        self._message = m
        return events

    def _close_message(self, status: str) -> list[Event]:
        m = self._message
        if m is None:
            return []
        self._message = None
        ref = self._part_ref(m)
        if self.modality == "audio":
            if m.audio is None or not m.audio.truncated:
                m.item["content"][0]["transcript"] = m.text
            events: list[Event] = [
                {"type": "response.output_audio.done", **ref},
                {"type": "response.output_audio_transcript.done", **ref, "transcript": m.text},
                {"type": "response.content_part.done", **ref, "part": {"type": "audio", "transcript": m.text}},
            ]
        else:
            m.item["content"][0]["text"] = m.text
            events = [
                {"type": "response.output_text.done", **ref, "text": m.text},
                {"type": "response.content_part.done", **ref, "part": {"type": "text", "text": m.text}},
            ]
        return events + self.finish_item(m.item, m.output_index, status)

    def _close_calls(self, status: str) -> list[Event]:
        events: list[Event] = []
        for call in self._calls.values():
            item = call.item
            events.append({"type": "response.function_call_arguments.done", "response_id": self.id,
                           "item_id": item["id"], "output_index": call.output_index,
                           "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]})
            events += self.finish_item(item, call.output_index, status)
        self._calls.clear()
        return events

    @property
    def audio_ms(self) -> float:
        """How much speech this response produced."""
        return self._audio_ms

    # ---- model output ------------------------------------------------------------------------

    def on_text(self, text: str) -> list[Event]:
        if not text:
            return []
        events = self._open_message() if self._message is None else []
        m = self._message
        assert m is not None
        m.text += text
        m.item["content"][0]["text" if self.modality == "text" else "transcript"] = m.text
        self._text_tokens += estimate_tokens(text)
        kind = "response.output_text.delta" if self.modality == "text" else "response.output_audio_transcript.delta"
        events.append({"type": kind, **self._part_ref(m), "delta": text})
        return events

    def on_audio(self, audio: bytes, transcript: str, duration_ms: float) -> list[Event]:
        """A spoken chunk: its transcript delta first (clients show words as they are heard),
        then its audio."""
        events = self._open_message() if self._message is None else []
        m = self._message
        assert m is not None and m.audio is not None
        keep = not m.audio.truncated  # after a truncate the stored item stays as the user heard it
        if transcript:
            m.text += transcript
            if keep:
                m.item["content"][0]["transcript"] = m.text
            self._text_tokens += estimate_tokens(transcript)
            events.append({"type": "response.output_audio_transcript.delta", **self._part_ref(m), "delta": transcript})
        if audio:
            if keep:
                m.audio.data += audio
                m.audio.duration_ms += duration_ms
                m.audio.marks.append((m.audio.duration_ms, len(m.text)))
            self._audio_ms += duration_ms
            self.produced_audio = True
            events.append({"type": "response.output_audio.delta", **self._part_ref(m),
                           "delta": base64.b64encode(audio).decode("ascii")})
        return events

    def on_tool_call(self, index: int, name: str | None, arguments: str) -> list[Event]:
        events = self._close_message("completed")
        mcp = self.mcp.on_tool_call(index, name, arguments) if index not in self._calls else None
        if mcp is not None:
            self._text_tokens += estimate_tokens(arguments)
            return events + mcp
        call = self._calls.get(index)
        if call is None:
            item = {"id": self.ids.new("item"), "object": "realtime.item", "type": "function_call",
                    "status": "in_progress", "name": name or "", "call_id": self.ids.new("call"), "arguments": ""}
            out_index, added = self.add_item(item)
            events += added
            call = self._calls[index] = _OpenCall(item, out_index)
        elif name and not call.item["name"]:
            call.item["name"] = name
        if arguments:
            call.item["arguments"] += arguments
            self._text_tokens += estimate_tokens(arguments)
            events.append({"type": "response.function_call_arguments.delta", "response_id": self.id,
                           "item_id": call.item["id"], "output_index": call.output_index,
                           "call_id": call.item["call_id"], "delta": arguments})
        return events

    def end_mcp_round(self) -> tuple[list[Event], list[McpCall]]:
        """The model's turn ended: its MCP calls are about to run; app function calls (which
        wait for the client's outputs) end the response once they are done."""
        events, calls = self.mcp.end_round()
        if self._calls:
            self.mcp.stop = True
        return events, calls

    # ---- the end -----------------------------------------------------------------------------

    def usage(self, engine: Usage | None) -> dict[str, Any]:
        text_in = engine.input_tokens if engine else self.input_text_tokens
        cached = engine.cached_tokens if engine else 0
        text_out = engine.output_tokens if engine else self._text_tokens
        audio_out = int(self._audio_ms / 1000 * OUTPUT_AUDIO_TOKENS_PER_S)
        audio_in = self.input_audio_tokens
        total_in, total_out = text_in + audio_in, text_out + audio_out
        return {
            "total_tokens": total_in + total_out,
            "input_tokens": total_in,
            "output_tokens": total_out,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0, "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    def finish(self, status: str, reason: str | None = None, error: dict[str, Any] | None = None,
               engine_usage: Usage | None = None) -> list[Event]:
        """Close whatever is open and emit `response.done` (once)."""
        if self.done:
            return []
        self.done = True
        item_status = "completed" if status == "completed" else "incomplete"
        events = self._close_message(item_status) + self._close_calls(item_status) + self.mcp.close()
        details: dict[str, Any] | None = None
        if status != "completed":
            details = {"type": status}
            if reason:
                details["reason"] = reason
            if error:
                details["error"] = error
        usage = self.usage(engine_usage)
        events.append({"type": "response.done", "response": self.response_object(status, details, usage)})
        return events

