"""Responses of a session, from `response.create` to `response.done`: `Responder` owns the
running `ResponseRun`s, which one writes to the default conversation, and the responses whose
model call waits (for user transcripts, or for MCP servers to list their tools).

It builds each model call (`StartResponse` with a `ChatRequest`: the conversation as chat
messages, fitted to the context), feeds model output to its run, runs MCP calls between model
calls (with `McpTools`), and finishes, cancels and accounts for responses.  What it needs of the
listening side (transcripts pending and heard, the idle timeout) it reads from `InputAudio`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocol import client_events as ce
from ..protocol import item_models as im
from ..protocol.errors import ProtocolError, invalid_value
from ..protocol.ids import IdFactory
from . import context
from .chat import ChatRequest, Usage, add_usage
from .conversation import Conversation
from .input_audio import InputAudio
from .io import (
    ModelAudio,
    ModelDone,
    ModelFailed,
    ModelText,
    ModelToolCall,
    McpToolResult,
    Output,
    ResponsePlan,
    StartResponse,
    StopResponse,
    UsageReport,
)
from .items import canonical_item, plain
from .mcp import McpTools
from .outbox import Outbox
from .response import ResponseRun


@dataclass
class PendingStart:
    """A response's next model call, kept until it can start (the model hears words) and, with
    MCP calls, to ask the model again with their results."""

    run: ResponseRun
    items: list[dict[str, Any]]
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    temperature: float | None
    speed: float
    waiting: set[str] = field(default_factory=set)


class Responder:
    def __init__(self, ids: IdFactory, out: Outbox, conversation: Conversation, conversation_id: str,
                 config: Callable[[], dict[str, Any]], context_tokens: int,
                 listening: InputAudio, mcp: McpTools) -> None:
        self.ids = ids
        self.out = out
        self.conversation = conversation
        self.conversation_id = conversation_id
        self.config = config  # the session's current configuration
        self.context_tokens = context_tokens
        self.listening = listening
        self.mcp = mcp
        self.runs: dict[str, ResponseRun] = {}
        self.default: str | None = None  # the response writing to the default conversation
        self.audio_produced = False  # assistant audio is in the conversation: the voice is locked
        self._deferred: dict[str, PendingStart] = {}

    def handlers(self) -> dict[type, Callable[[Any], list[Output]]]:
        return {
            ce.ResponseCancel: self.on_cancel,
            ModelText: self.on_model_text,
            ModelToolCall: self.on_model_tool_call,
            ModelAudio: self.on_model_audio,
            ModelDone: self.on_model_done,
            ModelFailed: self.on_model_failed,
            McpToolResult: self.on_mcp_result,
        }

    # ---- creating ----------------------------------------------------------------------------

    def _resolve_input(self, items: list[Any]) -> list[dict[str, Any]]:
        out = []
        for i, it in enumerate(items):
            if isinstance(it, im.ItemReference):
                ref = self.conversation.snapshot(it.id)
                if ref is None:
                    raise ProtocolError(f"Item with item_id '{it.id}' not found.", "invalid_value", f"response.input[{i}].id")
                out.append(ref)
            else:
                out.append(canonical_item(it, f"response.input[{i}]", self.ids)[0])
        return out

    def create(self, ev: ce.ResponseCreate) -> list[Output]:
        p = ev.response or ce.ResponseParams()
        conversation = p.conversation or "auto"
        if conversation not in ("auto", "none"):
            raise invalid_value("response.conversation", conversation, ["auto", "none"])
        in_conversation = conversation == "auto"
        if in_conversation and self.default is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.default}. "
                "Wait until the response is finished before creating a new one.",
                "conversation_already_has_active_response")
        cfg = self.config()
        modality = (p.output_modalities or cfg["output_modalities"])[0]
        instructions = p.instructions if p.instructions is not None else cfg["instructions"]
        tools = plain(p.tools) if p.tools is not None else cfg["tools"]
        if p.tools is not None:
            self.mcp.check_tools(tools, "response.tools")
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
        if temperature is None and self.out.dialect == "beta":
            temperature = self.out.temperature
        response_id = self.ids.new("resp")
        run = ResponseRun(
            id=response_id, ids=self.ids,
            conversation=self.conversation if in_conversation else None,
            conversation_id=self.conversation_id if in_conversation else None,
            modality=modality, voice=voice["id"] if isinstance(voice, dict) else voice,
            output_format=fmt, max_output_tokens=max_out, metadata=p.metadata,
        )
        self.runs[response_id] = run
        if in_conversation:
            self.default = response_id
        pending = PendingStart(run, items, instructions, tools, tool_choice, temperature,
                               float(out_cfg.get("speed", 1.0)))
        pending.waiting = {i["id"] for i in items} & self.listening.pending_transcripts
        out = self.out.sends(run.created())
        if p.tools is not None:  # MCP servers named here are listed first
            imported, listing = self.mcp.import_tools(tools)
            out += imported
            pending.waiting |= listing
        if pending.waiting:
            self._deferred[response_id] = pending
            return out
        return out + self._start(pending)

    def start_deferred(self) -> list[Output]:
        """Start the responses whose transcripts and MCP listings have all arrived."""
        out: list[Output] = []
        for rid, pending in list(self._deferred.items()):
            pending.waiting &= self.listening.pending_transcripts | self.mcp.listing()
            if not pending.waiting:
                del self._deferred[rid]
                if rid in self.runs:
                    out += self._start(pending)
        return out

    # ---- the model call ----------------------------------------------------------------------

    def _model_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items as the model should see them: user audio carries what was heard."""
        heard = self.listening.heard
        out = []
        for item in items:
            if item["id"] in heard and item.get("type") == "message":
                item = copy.deepcopy(item)
                for part in item["content"]:
                    if part.get("type") == "input_audio" and not part.get("transcript"):
                        part["transcript"] = heard[item["id"]]
            out.append(item)
        return out

    def _start(self, pending: PendingStart) -> list[Output]:
        run = pending.run
        run.mcp.next = pending  # how to ask the model again after MCP calls
        if run.conversation is not None and self.mcp.approved:  # approved MCP calls run before the model
            return self.mcp.run_approved(run) + self._mcp_continue(run)
        chat_tools, tool_choice = self.mcp.offer_tools(run, pending.tools, pending.tool_choice)
        items = self.mcp.model_items(run, self._model_items(pending.items))
        max_out = run.max_output_tokens
        messages = context.items_to_messages(items)
        system = [{"role": "system", "content": pending.instructions}] if pending.instructions else []
        # room for the reply, but never more than half the context: the conversation must fit too
        reserve = min(max_out if isinstance(max_out, int) else 1024, self.context_tokens // 2)
        budget = self.context_tokens - reserve - sum(context.message_tokens(m) for m in system)
        config = self.config()
        fitted = context.truncate(messages, budget=max(budget, 0), policy=config.get("truncation", "auto"))
        if fitted is None:
            err = {"type": "invalid_request_error", "code": "context_length_exceeded",
                   "message": "The conversation does not fit in the model's context and truncation is disabled."}
            return self._finish(run, "failed", error=err)
        kept, _dropped = fitted
        request_messages = system + kept
        run.input_text_tokens += sum(context.message_tokens(m) for m in request_messages)
        run.input_audio_tokens += int(sum(self.conversation.input_audio_ms(i["id"]) for i in items) / 1000
                                      * context.INPUT_AUDIO_TOKENS_PER_S)
        request = ChatRequest(
            messages=request_messages, tools=chat_tools, tool_choice=tool_choice,
            max_tokens=max_out if isinstance(max_out, int) else None,
            temperature=pending.temperature, model=config.get("model"),
        )
        transcription = (config.get("audio", {}).get("input") or {}).get("transcription") or {}
        plan = ResponsePlan(request=request, modality=run.modality, voice=run.voice,
                            speed=pending.speed, output_format=dict(run.output_format),
                            language=transcription.get("language") or self.listening.heard_language)
        return [StartResponse(run.id, plan)]

    # ---- MCP calls between model calls -------------------------------------------------------

    def _mcp_round_done(self, run: ResponseRun, usage: Usage | None) -> list[Output] | None:
        """The model's turn ended: run its MCP calls (None when it made none)."""
        events, calls = run.end_mcp_round()
        if not events:
            return None
        run.mcp.usage = usage
        return self.out.sends(events) + self.mcp.launch(run, calls) + self._mcp_continue(run)

    def on_mcp_result(self, inp: McpToolResult) -> list[Output]:
        run = next((r for r in self.runs.values() if inp.item_id in r.mcp.running), None)
        if run is None:
            return []  # its response ended meanwhile
        return self.out.sends(run.mcp.finish_call(inp.item_id, inp.output, inp.error)) + self._mcp_continue(run)

    def _mcp_continue(self, run: ResponseRun) -> list[Output]:
        """Once every call has its result, ask the model again, or end the response."""
        if run.mcp.running:
            return []
        pending = run.mcp.next
        if run.mcp.stop or pending is None:
            return self._finish(run, "completed", engine_usage=run.mcp.usage)
        run.mcp.rounds += 1
        seen = {i["id"] for i in pending.items}
        items = pending.items + [i for i in run.output if i["id"] not in seen]
        return self._start(dataclasses.replace(pending, items=items))

    # ---- the end -----------------------------------------------------------------------------

    def on_cancel(self, ev: ce.ResponseCancel) -> list[Output]:
        response_id = ev.response_id or self.default
        if response_id is None or response_id not in self.runs:
            raise ProtocolError("Cancellation failed: no active response found", "response_cancel_not_active")
        return self.cancel(response_id, "client_cancelled")

    def cancel(self, response_id: str, reason: str) -> list[Output]:
        run = self.runs[response_id]
        return [StopResponse(response_id)] + self._finish(run, "cancelled", reason=reason)

    def cancel_all(self, reason: str) -> list[Output]:
        out: list[Output] = []
        for rid in list(self.runs):
            out += self.cancel(rid, reason)
        return out

    def _finish(self, run: ResponseRun, status: str, **kw: Any) -> list[Output]:
        events = run.finish(status, **kw)
        self.runs.pop(run.id, None)
        self._deferred.pop(run.id, None)
        if run.conversation is not None:
            self.listening.arm_idle_timeout(run.audio_ms)
        if self.default == run.id:
            self.default = None
        if run.produced_audio and run.conversation is not None:
            self.audio_produced = True
        usage = events[-1]["response"]["usage"] if events else None
        out = self.out.sends(events)
        if usage is not None:
            out.append(UsageReport(run.id, usage["total_tokens"]))
        return out

    # ---- model output ------------------------------------------------------------------------

    def on_model_text(self, inp: ModelText) -> list[Output]:
        run = self.runs.get(inp.response_id)
        return self.out.sends(run.on_text(inp.text)) if run else []

    def on_model_tool_call(self, inp: ModelToolCall) -> list[Output]:
        run = self.runs.get(inp.response_id)
        return self.out.sends(run.on_tool_call(inp.index, inp.name, inp.arguments)) if run else []

    def on_model_audio(self, inp: ModelAudio) -> list[Output]:
        run = self.runs.get(inp.response_id)
        if run is None:
            return []
        out = self.out.sends(run.on_audio(inp.audio, inp.transcript, inp.duration_ms))
        if run.produced_audio and run.conversation is not None:
            self.audio_produced = True  # the voice is locked from the first assistant audio on
        return out

    def on_model_done(self, inp: ModelDone) -> list[Output]:
        run = self.runs.get(inp.response_id)
        if run is None:
            return []
        usage = add_usage(run.mcp.usage, inp.usage)  # earlier model calls of a response with MCP calls
        if inp.reason == "length":
            return self._finish(run, "incomplete", reason="max_output_tokens", engine_usage=usage)
        if inp.reason == "content_filter":
            return self._finish(run, "incomplete", reason="content_filter", engine_usage=usage)
        more = self._mcp_round_done(run, usage)
        return more if more is not None else self._finish(run, "completed", engine_usage=usage)

    def on_model_failed(self, inp: ModelFailed) -> list[Output]:
        run = self.runs.get(inp.response_id)
        if run is None:
            return []
        error = {"type": "server_error", "code": inp.code, "message": inp.message}
        return self._finish(run, "failed", error=error)
