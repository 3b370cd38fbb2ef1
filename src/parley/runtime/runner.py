"""One live session: the only place where the core meets asyncio.

The runner owns every task of its session: a reader (transport -> parsed events -> inbox), a
writer (bounded outbox -> transport), one pipeline task per running response, and the expiry
timer.  A single loop takes inputs from the inbox one at a time, hands them to the core, and
carries out what the core returns, in order.  When the session ends, every task is cancelled
and awaited: nothing outlives its session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.io import (
    CallMcpTool,
    ClearPlayout,
    Close,
    DetectSpeech,
    Expired,
    ListMcpTools,
    MediaAudio,
    ModelFailed,
    Output,
    Send,
    SessionChanged,
    StartResponse,
    StopResponse,
    Transcribe,
    UsageReport,
)
from ..core.session import Session
from ..engines.llm import LLMEngine
from ..engines.stt import STTEngine
from ..engines.tts import TTSEngine
from ..engines.vad import VADEngine
from ..protocol.client_events import parse_client_event
from ..protocol.errors import ProtocolError
from .limits import TokenLimiter
from . import metrics
from .listening import VadRunner, run_transcription
from .mcp import McpClients
from .media import Media, pump_microphone
from .queues import Inbox, Outbox, SlowClient
from .pipeline import run_response

log = logging.getLogger("parley.session")

_CLOSED = object()
_AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


class Transport(Protocol):
    """What a runner needs from a connection: text messages in and out, and a close."""

    async def receive(self) -> str | bytes | None:
        """The next client message; None once the client has gone."""
        ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class Engines:
    llm: LLMEngine
    tts: Callable[[], TTSEngine | None] = lambda: None  # read per response: it may still be loading
    vad: VADEngine | None = None
    stt: Callable[[dict[str, Any] | None], STTEngine | None] = lambda _cfg: None


@dataclass
class RunnerLimits:
    max_event_bytes: int = 15 * 1024 * 1024
    outbox_bytes: int = 4 * 1024 * 1024  # unsent events per session before the loop waits
    slow_client_timeout_s: float = 10.0  # then the session is closed with 1013


class SessionRunner:
    def __init__(
        self,
        session: Session,
        transport: Transport,
        engines: Engines,
        *,
        key_id: str,
        limiter: TokenLimiter,
        limits: RunnerLimits | None = None,
        clock: Callable[[], float] = time.time,
        transport_name: str = "websocket",
        media: Media | None = None,
    ) -> None:
        self.session = session
        self.transport = transport
        self.engines = engines
        self.key_id = key_id
        self.limiter = limiter
        self.limits = limits or RunnerLimits()
        self.clock = clock
        self.inbox = Inbox()
        self.outbox = Outbox(self.limits.outbox_bytes, self.limits.slow_client_timeout_s)
        self._responses: dict[str, asyncio.Task[None]] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._vad: VadRunner | None = None
        self.mcp = McpClients(session_id=session.id)  # remote MCP servers: one client per server label
        self._tasks: list[asyncio.Task[Any]] = []
        self._close: Close | None = None
        self._abandon_outbox = False
        self.transport_name = transport_name
        self.media = media  # WebRTC: audio goes to a media track, not into events
        self._speech_end: float | None = None  # wall time of the last speech_stopped
        self._barge_in: float | None = None  # wall time of a speech_started that interrupts

    def shutdown(self, code: int = 1001, reason: str = "server_shutting_down") -> None:
        """End the session from outside (server shutdown): close with `code` after what is queued."""
        self._close = Close(code, reason)
        self.inbox.put_control(_CLOSED)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        expiry = None
        if self.session.setup.expires_at:
            delay = max(0.0, self.session.setup.expires_at - self.clock())
            expiry = loop.call_later(delay, self.inbox.put_control, Expired())
        writer = asyncio.create_task(self._write(), name=f"{self.session.id}-writer")
        reader = asyncio.create_task(self._read(), name=f"{self.session.id}-reader")
        self._tasks = [writer, reader]
        if self.media is not None:
            self._tasks.append(asyncio.create_task(self._listen(self.media), name=f"{self.session.id}-microphone"))
        metrics.SESSIONS_LIVE.inc()
        metrics.SESSIONS_TOTAL.labels(self.transport_name).inc()
        log.info("session started", extra={"session_id": self.session.id, "key_id": self.key_id,
                                           "dialect": self.session.dialect, "kind": self.session.kind})
        try:
            await self._execute(self.session.start())
            while not self.session.closed:
                inp = await self.inbox.get()
                if inp is _CLOSED:
                    break
                try:
                    outputs = self.session.handle(inp)
                except Exception:  # a bug in Parley: end this session cleanly, never the server
                    log.exception("session core failed", extra={"session_id": self.session.id})
                    await self._send_event({"event_id": self.session.ids.event(), "type": "error", "error": {
                        "type": "server_error", "code": "server_error", "message": "The server had an error "
                        "while processing your request; the session is closed.", "param": None, "event_id": None}})
                    self._close = Close(1011, "server_error")
                    break
                await self._execute(outputs)
        except SlowClient as exc:
            log.warning("closing a session whose client does not read", extra={"session_id": self.session.id,
                                                                               "reason": str(exc)})
            self._close = Close(1013, "slow_client")
            metrics.SLOW_CLIENTS.inc()
            self._abandon_outbox = True
        finally:
            if expiry is not None:
                expiry.cancel()
            for task in [*self._responses.values(), *self._jobs]:
                task.cancel()
            for task in self._tasks[1:]:
                task.cancel()
            await self._drain_outbox(writer)
            for task in [*self._responses.values(), *self._jobs, *self._tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._responses.clear()
            await self.mcp.aclose()
            if self._close is not None:
                # a client that reads nothing cannot take a close frame either: do not wait on it
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.transport.close(self._close.code, self._close.reason), 2.0)
            metrics.SESSIONS_LIVE.dec()
            log.info("session ended", extra={"session_id": self.session.id, "key_id": self.key_id})

    async def _drain_outbox(self, writer: asyncio.Task[None]) -> None:
        """Let queued events reach the client (briefly) before closing, then stop the writer."""
        if not writer.done() and not self._abandon_outbox:
            await self.outbox.end(_CLOSED)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout=2.0)
        writer.cancel()

    # ---- tasks -------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                message = await self.transport.receive()
                if message is None:
                    break
                if len(message) > self.limits.max_event_bytes:
                    limit_mib = self.limits.max_event_bytes / (1024 * 1024)
                    await self.inbox.put(ProtocolError(
                        f"Event too large: {len(message)} bytes exceeds the maximum of {limit_mib:g} MiB per event.",
                        "event_too_large"))
                    continue
                event = parse_client_event(message, self.session.dialect)
                metrics.count(metrics.EVENTS_IN, "invalid" if isinstance(event, ProtocolError) else event.type)
                await self.inbox.put(event)
        except Exception:
            log.debug("reader stopped", exc_info=True, extra={"session_id": self.session.id})
        finally:
            self.inbox.put_control(_CLOSED)

    async def _listen(self, media: Media) -> None:
        """Microphone audio from the media track joins the input buffer, as appends would."""
        async def deliver(audio: bytes) -> None:
            await self.inbox.put(MediaAudio(audio))

        try:
            await pump_microphone(media.source, lambda: self.session.input_format, deliver)
        except Exception:
            log.debug("microphone stopped", exc_info=True, extra={"session_id": self.session.id})

    async def _write(self) -> None:
        try:
            while True:
                text = await self.outbox.get()
                if text is _CLOSED:
                    return
                await self.transport.send(text)
        except Exception:
            log.debug("writer stopped", exc_info=True, extra={"session_id": self.session.id})
            self.inbox.put_control(_CLOSED)

    # ---- carrying out the core's outputs -----------------------------------------------------

    async def _send_event(self, event: dict[str, Any]) -> None:
        self._observe(event)
        if self.media is not None and self._to_media(event):
            return
        await self.outbox.put(json.dumps(event, separators=(",", ":"), ensure_ascii=False))

    def _to_media(self, event: dict[str, Any]) -> bool:
        """Media sessions: response audio is played on the track instead of being sent."""
        assert self.media is not None
        kind = event["type"]
        if kind in _AUDIO_DELTAS:
            self.media.playout.push(event["response_id"], event["item_id"], event["content_index"],
                                    base64.b64decode(event["delta"]), self.session.config["audio"]["output"]["format"])
            return True
        if kind == "response.done":
            self.media.playout.finish(event["response"]["id"])
        return False

    def _observe(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        metrics.count(metrics.EVENTS_OUT, kind)
        if kind.endswith("audio.delta"):
            if self._speech_end is not None:
                metrics.SPEECH_TO_AUDIO.observe(time.monotonic() - self._speech_end)
                self._speech_end = None
        elif kind == "input_audio_buffer.speech_stopped":
            self._speech_end = time.monotonic()
        elif kind == "input_audio_buffer.speech_started":
            self._speech_end = None
            self._barge_in = time.monotonic() if self.session.default_response else None
        elif kind == "response.done":
            response = event["response"]
            metrics.RESPONSES.labels(response["status"]).inc()
            details = response.get("status_details") or {}
            if self._barge_in is not None and details.get("reason") == "turn_detected":
                metrics.BARGE_IN.observe(time.monotonic() - self._barge_in)
                self._barge_in = None
        elif kind == "error":
            metrics.ERRORS.labels(str(event["error"].get("code"))).inc()

    def _forget_response(self, response_id: str, task: asyncio.Task[None]) -> None:
        if self._responses.get(response_id) is task:  # a response with MCP calls runs again under its id
            del self._responses[response_id]

    async def _execute(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                await self._send_event(out.event)
            elif isinstance(out, StartResponse):
                if self.limiter.remaining(self.key_id, self.clock()) <= 0:
                    await self.inbox.put(ModelFailed(
                        out.response_id, f"Rate limit reached for tokens per minute (limit {self.limiter.limit}). "
                        "Try again when rate_limits.updated shows tokens remaining.", "rate_limit_exceeded"))
                    continue
                task = asyncio.create_task(
                    run_response(out.response_id, out.plan, self.engines.llm, self.engines.tts(), self.inbox.put),
                    name=out.response_id,
                )
                self._responses[out.response_id] = task
                task.add_done_callback(functools.partial(self._forget_response, out.response_id))
            elif isinstance(out, StopResponse):
                task = self._responses.pop(out.response_id, None)
                if task is not None:
                    task.cancel()
                self.mcp.cancel(out.response_id)
            elif isinstance(out, (ListMcpTools, CallMcpTool)):
                self.mcp.start(out, self.inbox.put)
            elif isinstance(out, UsageReport):
                now = self.clock()
                self.limiter.record(self.key_id, out.total_tokens, now)
                await self._send_event({"event_id": self.session.ids.event(), "type": "rate_limits.updated",
                                        "rate_limits": self.limiter.rate_limits(self.key_id, now)})
            elif isinstance(out, Close):
                self._close = out
            elif isinstance(out, DetectSpeech):
                if self.engines.vad is not None:
                    if self._vad is None:
                        self._vad = VadRunner(self.engines.vad)
                    result = await self._vad.process(out.audio, out.fmt)
                    if result.probabilities:  # no whole window yet: nothing for the core to decide
                        await self._execute(self.session.handle(result))
            elif isinstance(out, Transcribe):
                job = asyncio.create_task(run_transcription(out, self.engines.stt(out.config), self.inbox.put))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
                if out.item_id is not None:
                    began = time.monotonic()
                    job.add_done_callback(lambda _t, b=began: metrics.STT_LATENCY.observe(time.monotonic() - b))
            elif isinstance(out, ClearPlayout):
                if self.media is not None:
                    await self._execute(self.session.handle(self.media.playout.clear()))
            elif isinstance(out, SessionChanged):
                pass  # the core reconfigures turn detection itself; engines are chosen per job
