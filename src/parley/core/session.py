"""The session state machine, sans I/O.

`Session.handle(input) -> list[Output]`: a parsed client event, a `ProtocolError` from the
edge, or a runtime input (model output, expiry) goes in; server events to send and commands for
the runtime come out, in order.  No asyncio, no sockets, no clock: like h11, the caller does
the I/O and passes time in.  A client mistake becomes an `error` event and the session goes on;
an exception escaping `handle` is a bug in Parley.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from ..engines.llm import ChatRequest
from ..protocol import client_events as ce
from ..protocol import item_models as im
from ..protocol.beta import event_to_beta
from ..protocol.errors import ProtocolError, invalid_value
from ..protocol.ids import IdFactory
from ..protocol.session_config import (
    default_realtime,
    default_transcription,
    merge_update,
    to_beta,
    voice_name,
)
from . import context
from .conversation import Conversation
from .input_audio import InputAudioMixin, bytes_per_ms, wire_format
from .mcp import McpMixin, add_usage
from .io import (
    Close,
    Expired,
    ModelAudio,
    ModelDone,
    ModelFailed,
    ModelText,
    ModelToolCall,
    Output,
    ResponsePlan,
    Send,
    SessionChanged,
    StartResponse,
    StopResponse,
    TranscriptDelta,
    TranscriptDone,
    TranscriptFailed,
    TurnTranscript,
    UsageReport,
    VadResult,
)
from .playout import PlayoutMixin
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


@dataclass
class _PendingStart:
    """A response whose model call waits for user transcripts (the model hears words)."""

    run: ResponseRun
    items: list[dict[str, Any]]
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    temperature: float | None
    speed: float
    waiting: set[str] = field(default_factory=set)


class Session(InputAudioMixin, PlayoutMixin, McpMixin):
    def __init__(self, setup: SessionSetup, ids: IdFactory | None = None) -> None:
        self.setup = setup
        self.ids = ids or IdFactory()
        self.id = self.ids.new("sess")
        self.conversation_id = self.ids.new("conv")
        self.kind = setup.kind
        self.dialect = setup.dialect
        self.temperature = setup.temperature
        if setup.kind == "transcription":
            config = default_transcription()
        else:
            config = default_realtime(setup.model, voice=setup.voice)
            if setup.instructions is not None:
                config["instructions"] = setup.instructions
        config["id"] = self.id
        config["expires_at"] = setup.expires_at
        if setup.bound is not None:
            config = merge_update(config, setup.bound)
        self.config: dict[str, Any] = config
        self.conversation = Conversation()
        self.responses: dict[str, ResponseRun] = {}
        self.default_response: str | None = None
        self.audio_produced = False
        self.closed = False
        self._audio_ms: dict[str, float] = {}  # user audio item id -> duration
        self._deferred: dict[str, _PendingStart] = {}
        self._init_input_audio()
        self._init_mcp()
        self._handlers: dict[type, Callable[[Any], list[Output]]] = {
            ProtocolError: self._on_protocol_error,
            ce.SessionUpdate: self._on_session_update,
            ce.MappedSessionUpdate: self._on_session_update,
            ce.InputAudioBufferAppend: self._on_append,
            ce.InputAudioBufferCommit: self._on_commit,
            ce.InputAudioBufferClear: self._on_clear,
            ce.ConversationItemCreate: self._on_item_create,
            ce.ConversationItemRetrieve: self._on_item_retrieve,
            ce.ConversationItemDelete: self._on_item_delete,
            ce.ConversationItemTruncate: self._on_item_truncate,
            ce.ResponseCreate: self._on_response_create,
            ce.ResponseCancel: self._on_response_cancel,
            ModelText: self._on_model_text,
            ModelToolCall: self._on_model_tool_call,
            ModelAudio: self._on_model_audio,
            ModelDone: self._on_model_done,
            ModelFailed: self._on_model_failed,
            Expired: self._on_expired,
            VadResult: self._on_vad,
            TranscriptDelta: self._on_transcript_delta,
            TranscriptDone: self._on_transcript_done,
            TranscriptFailed: self._on_transcript_failed,
            TurnTranscript: self._on_turn_transcript,
            **self._playout_handlers(),
            **self._mcp_handlers(),
        }

    # ---- plumbing ----------------------------------------------------------------------------

    def start(self) -> list[Output]:
        out = [self._session_event("session.created")]
        if self.dialect == "beta" and self.kind == "realtime":
            out += self._send({"type": "conversation.created",
                               "conversation": {"id": self.conversation_id, "object": "realtime.conversation"}})
        return out + self.import_mcp_tools(self.config.get("tools", []))[0]

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
            return self._error(err.with_event_id(err.event_id or event_id))

    def _send(self, event: dict[str, Any]) -> list[Output]:
        if self.dialect == "beta":
            converted = event_to_beta(event, self.temperature)
            if converted is None:
                return []
            event = converted
        return [Send({"event_id": self.ids.event(), **event})]

    def _sends(self, events: list[dict[str, Any]]) -> list[Output]:
        out: list[Output] = []
        for e in events:
            out += self._send(e)
        return out

    def _error(self, err: ProtocolError) -> list[Output]:
        return [Send({"event_id": self.ids.event(), "type": "error", "error": err.to_error_object()})]

    def describe(self, kind: str = "session.updated") -> str:
        """The session as a `session.created`/`.updated` event, serialised (for a sideband that attaches)."""
        return json.dumps(self._session_event(kind).event, separators=(",", ":"), ensure_ascii=False)

    def _session_event(self, kind: str) -> Send:
        if self.dialect == "beta":
            if self.kind == "transcription":
                kind = "transcription_session." + kind.split(".")[1]
            session = to_beta(self.config, self.temperature)
        else:
            session = copy.deepcopy(self.config)
        return Send({"event_id": self.ids.event(), "type": kind, "session": session})

    def _on_protocol_error(self, err: ProtocolError) -> list[Output]:
        return self._error(err)

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
            if self.audio_produced and voice_name(new) != voice_name(self.config):
                raise ProtocolError("Cannot update a conversation's voice if assistant audio is present.",
                                    "cannot_update_voice", "session.audio.output.voice")
            if self.config.get("tracing") is not None and new.get("tracing") != self.config.get("tracing"):
                raise ProtocolError("Tracing cannot be modified once it has been enabled for a session.",
                                    "invalid_value", "session.tracing")
            if new.get("model") is None:
                new["model"] = self.config["model"]
            self.check_mcp_tools(new["tools"], "session.tools")
        temperature = getattr(ev, "temperature", None)
        if temperature is not None:
            self.temperature = temperature
        turns_changed = new["audio"]["input"].get("turn_detection") != self.turn_config
        self.config = new
        if turns_changed:
            self._configure_turns()
        imported, _ = self.import_mcp_tools(new.get("tools", []))
        return [self._session_event("session.updated"), SessionChanged(copy.deepcopy(new))] + imported

    # ---- conversation items ------------------------------------------------------------------

    def _require_realtime(self, what: str) -> None:
        if self.kind != "realtime":
            raise ProtocolError(f"{what} is not supported in transcription sessions.", "invalid_value", "type")

    def _canonical_item(self, model: Any, param: str) -> tuple[dict[str, Any], list[bytes]]:
        """A created item in the shape the server echoes, plus any audio it carried."""
        item = im.item_to_dict(model)
        item.setdefault("id", self.ids.new("item"))
        if item["type"] != "mcp_approval_response":  # that item has neither field in the GA schema
            item["object"] = "realtime.item"
            item["status"] = item.get("status") or "completed"
        audio: list[bytes] = []
        for i, part in enumerate(item.get("content", [])):
            if part.get("type") == "input_audio":
                raw = part.pop("audio", None)
                try:
                    audio.append(base64.b64decode(raw, validate=True) if raw else b"")
                except (binascii.Error, ValueError):
                    raise ProtocolError(f"Invalid '{param}.content[{i}].audio'. Expected base64-encoded audio bytes.",
                                        "invalid_value", f"{param}.content[{i}].audio") from None
                part.setdefault("transcript", None)
            elif part.get("type") == "output_audio":
                part.setdefault("transcript", "")
        if item["type"] == "function_call":
            item.setdefault("call_id", self.ids.new("call"))
        return item, audio

    def _on_item_create(self, ev: ce.ConversationItemCreate) -> list[Output]:
        self._require_realtime("conversation.item.create")
        item, audio = self._canonical_item(ev.item, "item")
        if item["id"] in self.conversation:
            raise ProtocolError(f"Item with id '{item['id']}' already exists.", "invalid_value", "item.id")
        if item["type"] == "function_call_output" and self.conversation.find_call(item["call_id"]) is None:
            raise ProtocolError(f"Tool call with call_id '{item['call_id']}' not found in conversation.",
                                "invalid_value", "item.call_id")
        self.check_mcp_item(item)
        prev_req = ev.previous_item_id
        if prev_req is not None and prev_req != "root" and prev_req not in self.conversation:
            raise ProtocolError(f"Previous item with item_id '{prev_req}' not found.", "invalid_value", "previous_item_id")
        prev = self.conversation.insert(item, None if prev_req == "root" else prev_req, at_root=prev_req == "root")
        for i, data in enumerate(audio):
            if data:
                stored = self.conversation.audio(item["id"], i, create=True)
                assert stored is not None
                stored.data += data
                stored.duration_ms = len(data) / bytes_per_ms(self.input_format)
                self._audio_ms[item["id"]] = self._audio_ms.get(item["id"], 0.0) + stored.duration_ms
        out = self._send({"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)})
        out += self._send({"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)})
        return out + self.mcp_item_added(item)

    def _on_item_retrieve(self, ev: ce.ConversationItemRetrieve) -> list[Output]:
        item = self.conversation.snapshot(ev.item_id)
        if item is None:
            raise ProtocolError(f"Item with item_id '{ev.item_id}' not found.", "invalid_value", "item_id")
        for i, part in enumerate(item.get("content", [])):
            stored = self.conversation.audio(ev.item_id, i)
            if part.get("type") in ("input_audio", "output_audio") and stored is not None:
                part["audio"] = base64.b64encode(bytes(stored.data)).decode("ascii")
        return self._send({"type": "conversation.item.retrieved", "item": item})

    def _on_item_delete(self, ev: ce.ConversationItemDelete) -> list[Output]:
        self._require_realtime("conversation.item.delete")
        if not self.conversation.delete(ev.item_id):
            raise ProtocolError(f"Item with item_id '{ev.item_id}' not found.", "invalid_value", "item_id")
        self._audio_ms.pop(ev.item_id, None)
        return self._send({"type": "conversation.item.deleted", "item_id": ev.item_id})

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
            self.truncate_audio(item, ev.content_index, float(ev.audio_end_ms))
        return self._send({"type": "conversation.item.truncated", "item_id": ev.item_id,
                           "content_index": ev.content_index, "audio_end_ms": ev.audio_end_ms})

    def truncate_audio(self, item: dict[str, Any], content_index: int, end_ms: float) -> None:
        """Keep the audio up to `end_ms` and only the words spoken by then (from TTS timing)."""
        stored = self.conversation.audio(item["id"], content_index)
        assert stored is not None
        part = item["content"][content_index]
        transcript = part.get("transcript") or ""
        fmt = stored.fmt or self.config["audio"]["output"]["format"]
        del stored.data[wire_format(fmt).bytes_for_ms(end_ms):]
        chars, start_ms, start_chars = 0, 0.0, 0
        for mark_ms, mark_chars in stored.marks:
            if mark_ms <= end_ms:
                chars, start_ms, start_chars = mark_chars, mark_ms, mark_chars
                continue
            # the chunk being spoken at end_ms: keep the share of its words already heard
            share = (end_ms - start_ms) / max(mark_ms - start_ms, 1e-6)
            chunk = transcript[start_chars:mark_chars]
            lead = len(chunk) - len(chunk.lstrip())
            words = chunk.strip().split(" ")
            heard = " ".join(words[: int(len(words) * share)])
            chars = start_chars + (lead + len(heard) if heard else 0)
            break
        part["transcript"] = transcript[:chars].rstrip()
        stored.truncated = True
        stored.marks = [(m, c) for m, c in stored.marks if m <= end_ms]
        if not stored.marks or stored.marks[-1][0] < end_ms:
            stored.marks.append((end_ms, len(part["transcript"])))  # so truncating again here is a no-op
        stored.duration_ms = min(stored.duration_ms, end_ms)

    # ---- responses ---------------------------------------------------------------------------

    def _resolve_input(self, items: list[Any]) -> list[dict[str, Any]]:
        out = []
        for i, it in enumerate(items):
            if isinstance(it, im.ItemReference):
                ref = self.conversation.snapshot(it.id)
                if ref is None:
                    raise ProtocolError(f"Item with item_id '{it.id}' not found.", "invalid_value", f"response.input[{i}].id")
                out.append(ref)
            else:
                out.append(self._canonical_item(it, f"response.input[{i}]")[0])
        return out

    def _on_response_create(self, ev: ce.ResponseCreate) -> list[Output]:
        self._require_realtime("response.create")
        p = ev.response or ce.ResponseParams()
        conversation = p.conversation or "auto"
        if conversation not in ("auto", "none"):
            raise invalid_value("response.conversation", conversation, ["auto", "none"])
        in_conversation = conversation == "auto"
        if in_conversation and self.default_response is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.default_response}. "
                "Wait until the response is finished before creating a new one.",
                "conversation_already_has_active_response")
        cfg = self.config
        modality = (p.output_modalities or cfg["output_modalities"])[0]
        instructions = p.instructions if p.instructions is not None else cfg["instructions"]
        tools = plain(p.tools) if p.tools is not None else cfg["tools"]
        if p.tools is not None:
            self.check_mcp_tools(tools, "response.tools")
        tool_choice = plain(p.tool_choice) if p.tool_choice is not None else cfg["tool_choice"]
        max_out = p.max_output_tokens if p.max_output_tokens is not None else cfg["max_output_tokens"]
        out_cfg = cfg["audio"]["output"]
        voice = out_cfg["voice"]
        fmt = out_cfg["format"]
        if p.audio is not None and p.audio.output is not None:
            if p.audio.output.voice is not None:
                voice = plain(p.audio.output.voice)
            if p.audio.output.format is not None:
                fmt = plain(p.audio.output.format)
        items = self._resolve_input(p.input) if p.input is not None else self.conversation.items()
        temperature = getattr(p, "temperature", None)
        if temperature is None and self.dialect == "beta":
            temperature = self.temperature
        response_id = self.ids.new("resp")
        run = ResponseRun(
            id=response_id, ids=self.ids,
            conversation=self.conversation if in_conversation else None,
            conversation_id=self.conversation_id if in_conversation else None,
            modality=modality, voice=voice["id"] if isinstance(voice, dict) else voice,
            output_format=fmt, max_output_tokens=max_out, metadata=p.metadata,
        )
        self.responses[response_id] = run
        if in_conversation:
            self.default_response = response_id
        pending = _PendingStart(run, items, instructions, tools, tool_choice, temperature,
                                float(out_cfg.get("speed", 1.0)))
        pending.waiting = {i["id"] for i in items} & self.pending_transcripts
        out = self._sends(run.created())
        if p.tools is not None:  # MCP servers named here are listed first
            imported, listing = self.import_mcp_tools(tools)
            out += imported
            pending.waiting |= listing
        if pending.waiting:
            self._deferred[response_id] = pending
            return out
        return out + self._start(pending)

    def _start_deferred(self) -> list[Output]:
        out: list[Output] = []
        for rid, pending in list(self._deferred.items()):
            pending.waiting &= self.pending_transcripts | self.mcp_listing()
            if not pending.waiting:
                del self._deferred[rid]
                if rid in self.responses:
                    out += self._start(pending)
        return out

    def _model_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items as the model should see them: user audio carries what was heard."""
        out = []
        for item in items:
            if item["id"] in self.heard and item.get("type") == "message":
                item = copy.deepcopy(item)
                for part in item["content"]:
                    if part.get("type") == "input_audio" and not part.get("transcript"):
                        part["transcript"] = self.heard[item["id"]]
            out.append(item)
        return out

    def _start(self, pending: _PendingStart) -> list[Output]:
        first = self.mcp_before_model(pending)  # approved MCP calls run before the model
        if first is not None:
            return first
        run = pending.run
        chat_tools, tool_choice = self.offer_tools(run, pending.tools, pending.tool_choice)
        items = self.mcp_model_items(run, self._model_items(pending.items))
        max_out = run.max_output_tokens
        messages = context.items_to_messages(items)
        system = [{"role": "system", "content": pending.instructions}] if pending.instructions else []
        # room for the reply, but never more than half the context: the conversation must fit too
        reserve = min(max_out if isinstance(max_out, int) else 1024, self.setup.context_tokens // 2)
        budget = self.setup.context_tokens - reserve - sum(context.message_tokens(m) for m in system)
        fitted = context.truncate(messages, budget=max(budget, 0), policy=self.config.get("truncation", "auto"))
        if fitted is None:
            err = {"type": "invalid_request_error", "code": "context_length_exceeded",
                   "message": "The conversation does not fit in the model's context and truncation is disabled."}
            return self._finish(run, "failed", error=err)
        kept, _dropped = fitted
        request_messages = system + kept
        run.input_text_tokens += sum(context.message_tokens(m) for m in request_messages)
        run.input_audio_tokens += int(sum(self._audio_ms.get(i["id"], 0.0) for i in items) / 1000
                                     * context.INPUT_AUDIO_TOKENS_PER_S)
        request = ChatRequest(
            messages=request_messages, tools=chat_tools, tool_choice=tool_choice,
            max_tokens=max_out if isinstance(max_out, int) else None,
            temperature=pending.temperature, model=self.config.get("model"),
        )
        transcription = (self.config.get("audio", {}).get("input") or {}).get("transcription") or {}
        plan = ResponsePlan(request=request, modality=run.modality, voice=run.voice,
                            speed=pending.speed, output_format=dict(run.output_format),
                            language=transcription.get("language") or None)
        return [StartResponse(run.id, plan)]

    def _on_response_cancel(self, ev: ce.ResponseCancel) -> list[Output]:
        response_id = ev.response_id or self.default_response
        if response_id is None or response_id not in self.responses:
            raise ProtocolError("Cancellation failed: no active response found", "response_cancel_not_active")
        return self.cancel_response(response_id, "client_cancelled")

    def cancel_response(self, response_id: str, reason: str) -> list[Output]:
        run = self.responses[response_id]
        return [StopResponse(response_id)] + self._finish(run, "cancelled", reason=reason)

    def _finish(self, run: ResponseRun, status: str, **kw: Any) -> list[Output]:
        events = run.finish(status, **kw)
        self.responses.pop(run.id, None)
        self._deferred.pop(run.id, None)
        if run.conversation is not None:
            self.arm_idle_timeout(run.audio_ms)
        if self.default_response == run.id:
            self.default_response = None
        if run.produced_audio and run.conversation is not None:
            self.audio_produced = True
        usage = events[-1]["response"]["usage"] if events else None
        out = self._sends(events)
        if usage is not None:
            out.append(UsageReport(run.id, usage["total_tokens"]))
        return out

    def _run(self, response_id: str) -> ResponseRun | None:
        return self.responses.get(response_id)

    def _on_model_text(self, inp: ModelText) -> list[Output]:
        run = self._run(inp.response_id)
        return self._sends(run.on_text(inp.text)) if run else []

    def _on_model_tool_call(self, inp: ModelToolCall) -> list[Output]:
        run = self._run(inp.response_id)
        return self._sends(run.on_tool_call(inp.index, inp.name, inp.arguments)) if run else []

    def _on_model_audio(self, inp: ModelAudio) -> list[Output]:
        run = self._run(inp.response_id)
        if run is None:
            return []
        out = self._sends(run.on_audio(inp.audio, inp.transcript, inp.duration_ms))
        if run.produced_audio and run.conversation is not None:
            self.audio_produced = True  # the voice is locked from the first assistant audio on
        return out

    def _on_model_done(self, inp: ModelDone) -> list[Output]:
        run = self._run(inp.response_id)
        if run is None:
            return []
        usage = add_usage(run.mcp.usage, inp.usage)  # earlier model calls of a response with MCP calls
        if inp.reason == "length":
            return self._finish(run, "incomplete", reason="max_output_tokens", engine_usage=usage)
        if inp.reason == "content_filter":
            return self._finish(run, "incomplete", reason="content_filter", engine_usage=usage)
        more = self.mcp_round_done(run, usage)
        return more if more is not None else self._finish(run, "completed", engine_usage=usage)

    def _on_model_failed(self, inp: ModelFailed) -> list[Output]:
        run = self._run(inp.response_id)
        if run is None:
            return []
        error = {"type": "server_error", "code": inp.code, "message": inp.message}
        return self._finish(run, "failed", error=error)

    def _on_expired(self, inp: Expired) -> list[Output]:
        out: list[Output] = []
        for rid in list(self.responses):
            out += self.cancel_response(rid, "client_cancelled")
        err = ProtocolError(f"Your session hit the maximum duration of {self.setup.max_minutes:g} minutes.",
                            "session_expired")
        out += self._error(err)
        self.closed = True
        return out + [Close(1000, "session_expired")]


def plain(value: Any) -> Any:
    """A validated model (or list of them) as the plain data the session stores."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
