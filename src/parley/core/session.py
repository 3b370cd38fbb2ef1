"""The session state machine, sans I/O.

`Session.handle(input) -> list[Output]`: a parsed client event, a `ProtocolError` from the
edge, or a runtime input (model output, expiry) goes in; server events to send and commands for
the runtime come out, in order.  No asyncio, no sockets, no clock: like h11, the caller does
the I/O and passes time in.  A client mistake becomes an `error` event and the session goes on;
an exception escaping `handle` is a bug in Parley.

`Session` owns the configuration, the conversation and the session-level events
(`session.update`, `conversation.item.*`, expiry), and hands the rest to its collaborators,
each with its own state, built here and given what it needs:

* `listening` (`InputAudio`, input_audio.py): the input buffer, turn detection, transcripts;
* `playout` (`Playout`, playout.py): media sessions' output audio, and truncation;
* `mcp` (`McpTools`, mcp.py): remote MCP servers, their tools and approvals;
* `responder` (`Responder`, responder.py): responses and the model calls they make;
* `out` (`Outbox`, outbox.py): how events are stamped and put in the client's dialect.

`_handlers` is the table of which of them takes each input.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from typing import Any, Callable

from ..protocol import client_events as ce
from ..protocol.errors import ProtocolError
from ..protocol.ids import IdFactory
from ..protocol.session_config import (
    default_realtime,
    default_transcription,
    merge_update,
    to_beta,
    voice_name,
)
from .conversation import Conversation
from .input_audio import InputAudio, bytes_per_ms
from .io import (
    Close,
    Expired,
    McpToolsListed,
    MediaAudio,
    Output,
    Send,
    SessionChanged,
    TranscriptDelta,
    TranscriptDone,
    TranscriptFailed,
    TurnTranscript,
    VadResult,
)
from .items import canonical_item
from .mcp import McpTools
from .outbox import Outbox
from .playout import Playout, truncate_audio
from .responder import Responder
from .response import ResponseRun


@dataclass
class SessionSetup:
    """Everything a session needs to know at birth; the runtime fills it from the request."""

    kind: str = "realtime"  # or "transcription"
    dialect: str = "ga"  # or "beta"
    model: str = "gpt-realtime"
    expires_at: int = 0
    bound: Any = None  # a validated GA session update bound to an ephemeral key
    accept_model: Callable[[str], bool] = lambda _m: True
    context_tokens: int = 8192
    voice: str = "alloy"
    instructions: str | None = None
    temperature: float = 0.8
    max_minutes: float = 60  # for the `session_expired` message; the runtime schedules `Expired`
    media: bool = False  # audio travels on media tracks (WebRTC): the server tracks playout


class Session:
    def __init__(self, setup: SessionSetup, ids: IdFactory | None = None) -> None:
        self.setup = setup
        self.ids = ids or IdFactory()
        self.id = self.ids.new("sess")
        self.conversation_id = self.ids.new("conv")
        self.kind = setup.kind
        self.dialect = setup.dialect
        self.closed = False
        self.config: dict[str, Any] = initial_config(setup, self.id)
        self.conversation = Conversation()
        self.out = Outbox(self.ids, setup.dialect, setup.temperature)
        self.listening = InputAudio(self.ids, self.out, self.conversation, self.kind, self.config["audio"]["input"], self)
        self.playout = Playout(self.out, self.conversation, setup.media, lambda: self.config["audio"]["output"]["format"])
        self.mcp = McpTools(self.ids, self.out, self.conversation, enabled=self.kind == "realtime" and self.dialect == "ga")
        self.responder = Responder(self.ids, self.out, self.conversation, self.conversation_id, lambda: self.config,
                                   setup.context_tokens, self.listening, self.mcp)
        listening = self.listening
        self._handlers: dict[type, Callable[[Any], list[Output]]] = {
            ProtocolError: self.out.error,
            ce.SessionUpdate: self._on_session_update,
            ce.MappedSessionUpdate: self._on_session_update,
            ce.InputAudioBufferAppend: listening.on_append,
            ce.InputAudioBufferCommit: listening.on_commit,
            ce.InputAudioBufferClear: listening.on_clear,
            ce.ConversationItemCreate: self._on_item_create,
            ce.ConversationItemRetrieve: self._on_item_retrieve,
            ce.ConversationItemDelete: self._on_item_delete,
            ce.ConversationItemTruncate: self._on_item_truncate,
            ce.ResponseCreate: self._on_response_create,
            Expired: self._on_expired,
            VadResult: listening.on_vad,
            TranscriptDelta: listening.on_transcript_delta,
            TranscriptDone: listening.on_transcript_done,
            TranscriptFailed: listening.on_transcript_failed,
            TurnTranscript: listening.on_turn_transcript,
            MediaAudio: lambda inp: listening.append_audio(inp.audio),
            McpToolsListed: lambda inp: self.mcp.on_listed(inp) + self.responder.start_deferred(),
            **self.responder.handlers(),
            **self.playout.handlers(),
        }

    # ---- what the runtime reads --------------------------------------------------------------

    @property
    def responses(self) -> dict[str, ResponseRun]:
        """The responses running now, by id."""
        return self.responder.runs

    @property
    def default_response(self) -> str | None:
        """The running response that writes to the default conversation, if any."""
        return self.responder.default

    @property
    def pending_transcripts(self) -> set[str]:
        """User audio items whose transcript has not arrived yet."""
        return self.listening.pending_transcripts

    @property
    def input_format(self) -> dict[str, Any]:
        return self.listening.input_format

    # ---- plumbing ----------------------------------------------------------------------------

    def start(self) -> list[Output]:
        out = [self._session_event("session.created")]
        if self.dialect == "beta" and self.kind == "realtime":
            out += self.out.send({"type": "conversation.created",
                                  "conversation": {"id": self.conversation_id, "object": "realtime.conversation"}})
        return out + self.mcp.import_tools(self.config.get("tools", []))[0]

    def handle(self, inp: Any) -> list[Output]:
        if self.closed:
            return []
        handler = self._handlers.get(type(inp))
        if handler is None:
            raise TypeError(f"Session cannot handle {type(inp).__name__}")
        try:
            return handler(inp)
        except ProtocolError as err:
            event_id = getattr(inp, "event_id", None)
            return self.out.error(err.with_event_id(err.event_id or event_id))

    def describe(self, kind: str = "session.updated") -> str:
        """The session as a `session.created`/`.updated` event, serialised (for a sideband that attaches)."""
        return json.dumps(self._session_event(kind).event, separators=(",", ":"), ensure_ascii=False)

    def _session_event(self, kind: str) -> Send:
        if self.dialect == "beta":
            if self.kind == "transcription":
                kind = "transcription_session." + kind.split(".")[1]
            session = to_beta(self.config, self.out.temperature)
        else:
            session = copy.deepcopy(self.config)
        return Send({"event_id": self.ids.event(), "type": kind, "session": session})

    # ---- what the collaborators ask of the session (input_audio.SessionHooks) ----------------

    def interrupt(self) -> list[Output]:
        out: list[Output] = []
        if self.responder.default is not None:
            out += self.responder.cancel(self.responder.default, "turn_detected")
        return out + self.playout.interrupt()

    def respond(self) -> list[Output]:
        if self.responder.default is not None:
            return []
        return self._on_response_create(ce.ResponseCreate(type="response.create"))

    def transcripts_changed(self) -> list[Output]:
        return self.responder.start_deferred()

    # ---- session -----------------------------------------------------------------------------

    def _on_session_update(self, ev: ce.SessionUpdate) -> list[Output]:
        update = ev.session
        if update.type != self.kind:
            raise ProtocolError(
                f"Passing a {update.type} session update event to a {self.kind} session is not allowed.",
                "invalid_value", "session.type")
        fields = update.model_fields_set
        if "model" in fields and update.model is not None and not self.setup.accept_model(update.model):
            raise ProtocolError(f"Model \"{update.model}\" is not supported in realtime mode.", "invalid_model", "session.model")
        new = merge_update(self.config, update)
        if self.kind == "realtime":
            if self.responder.audio_produced and voice_name(new) != voice_name(self.config):
                raise ProtocolError("Cannot update a conversation's voice if assistant audio is present.",
                                    "cannot_update_voice", "session.audio.output.voice")
            if self.config.get("tracing") is not None and new.get("tracing") != self.config.get("tracing"):
                raise ProtocolError("Tracing cannot be modified once it has been enabled for a session.",
                                    "invalid_value", "session.tracing")
            if new.get("model") is None:
                new["model"] = self.config["model"]
            self.mcp.check_tools(new["tools"], "session.tools")
        temperature = getattr(ev, "temperature", None)
        if temperature is not None:
            self.out.temperature = temperature
        self.config = new
        self.listening.configure(new["audio"]["input"])
        imported, _ = self.mcp.import_tools(new.get("tools", []))
        return [self._session_event("session.updated"), SessionChanged(copy.deepcopy(new))] + imported

    def _on_expired(self, inp: Expired) -> list[Output]:
        out = self.responder.cancel_all("client_cancelled")
        err = ProtocolError(f"Your session hit the maximum duration of {self.setup.max_minutes:g} minutes.",
                            "session_expired")
        out += self.out.error(err)
        self.closed = True
        return out + [Close(1000, "session_expired")]

    def _on_response_create(self, ev: ce.ResponseCreate) -> list[Output]:
        self._require_realtime("response.create")
        return self.responder.create(ev)

    # ---- conversation items ------------------------------------------------------------------

    def _require_realtime(self, what: str) -> None:
        if self.kind != "realtime":
            raise ProtocolError(f"{what} is not supported in transcription sessions.", "invalid_value", "type")

    def _on_item_create(self, ev: ce.ConversationItemCreate) -> list[Output]:
        self._require_realtime("conversation.item.create")
        item, audio = canonical_item(ev.item, "item", self.ids)
        if item["id"] in self.conversation:
            raise ProtocolError(f"Item with id '{item['id']}' already exists.", "invalid_value", "item.id")
        if item["type"] == "function_call_output" and self.conversation.find_call(item["call_id"]) is None:
            raise ProtocolError(f"Tool call with call_id '{item['call_id']}' not found in conversation.",
                                "invalid_value", "item.call_id")
        self.mcp.check_item(item)
        prev_req = ev.previous_item_id
        if prev_req is not None and prev_req != "root" and prev_req not in self.conversation:
            raise ProtocolError(f"Previous item with item_id '{prev_req}' not found.", "invalid_value", "previous_item_id")
        prev = self.conversation.insert(item, None if prev_req == "root" else prev_req, at_root=prev_req == "root")
        for i, data in enumerate(audio):
            if data:
                self.conversation.add_input_audio(item["id"], i, data, len(data) / bytes_per_ms(self.input_format))
        out = self.out.send({"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)})
        out += self.out.send({"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)})
        if self.mcp.note_answer(item):  # an approval answer: a response runs the call, or hears the refusal
            out += self.respond()
        return out

    def _on_item_retrieve(self, ev: ce.ConversationItemRetrieve) -> list[Output]:
        item = self.conversation.snapshot(ev.item_id)
        if item is None:
            raise ProtocolError(f"Item with item_id '{ev.item_id}' not found.", "invalid_value", "item_id")
        for i, part in enumerate(item.get("content", [])):
            stored = self.conversation.audio(ev.item_id, i)
            if part.get("type") in ("input_audio", "output_audio") and stored is not None:
                part["audio"] = base64.b64encode(bytes(stored.data)).decode("ascii")
        return self.out.send({"type": "conversation.item.retrieved", "item": item})

    def _on_item_delete(self, ev: ce.ConversationItemDelete) -> list[Output]:
        self._require_realtime("conversation.item.delete")
        if not self.conversation.delete(ev.item_id):
            raise ProtocolError(f"Item with item_id '{ev.item_id}' not found.", "invalid_value", "item_id")
        return self.out.send({"type": "conversation.item.deleted", "item_id": ev.item_id})

    def _on_item_truncate(self, ev: ce.ConversationItemTruncate) -> list[Output]:
        self._require_realtime("conversation.item.truncate")
        item = self.conversation.get(ev.item_id)
        if item is None:
            raise ProtocolError(f"Error truncating item: the item with id '{ev.item_id}' does not exist.",
                                "item_truncate_invalid_item_id", "item_id")
        content = item.get("content", [])
        if item.get("role") != "assistant" or ev.content_index >= len(content) \
                or content[ev.content_index].get("type") != "output_audio":
            raise ProtocolError("Only assistant messages with audio content can be truncated.",
                                "invalid_value", "content_index")
        stored = self.conversation.audio(ev.item_id, ev.content_index)
        duration = stored.duration_ms if stored else 0.0
        if ev.audio_end_ms > duration + 0.5:
            raise ProtocolError(
                f"Audio content of {duration:.0f}ms is shorter than the requested truncation point of "
                f"{ev.audio_end_ms}ms.", "invalid_value", "audio_end_ms")
        if stored is not None:
            truncate_audio(self.conversation, item, ev.content_index, float(ev.audio_end_ms),
                           self.config["audio"]["output"]["format"])
        return self.out.send({"type": "conversation.item.truncated", "item_id": ev.item_id,
                              "content_index": ev.content_index, "audio_end_ms": ev.audio_end_ms})


def initial_config(setup: SessionSetup, session_id: str) -> dict[str, Any]:
    """The session's configuration at birth: the defaults, then what an ephemeral key bound."""
    if setup.kind == "transcription":
        config = default_transcription()
    else:
        config = default_realtime(setup.model, voice=setup.voice)
        if setup.instructions is not None:
            config["instructions"] = setup.instructions
    config["id"] = session_id
    config["expires_at"] = setup.expires_at
    if setup.bound is not None:
        config = merge_update(config, setup.bound)
    return config
