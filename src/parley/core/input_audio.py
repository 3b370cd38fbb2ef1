"""The input audio buffer, turn detection and transcription: the part of the session that
listens.  `InputAudio` owns the buffer, the turn detector and the transcripts; what it needs of
the rest of the session (stop the answer on a barge-in, answer a finished turn, start responses
that waited for a transcript) it asks through the `SessionHooks` it is given.

Timeline: `audio_clock_ms` counts all audio appended this session; the buffer holds the audio
from `buffer_start_ms` on.  While nobody speaks, the buffer keeps only the prefix padding (plus
the VAD's lag), so a long silence costs no memory.  Every committed user audio item is
transcribed: the transcript is what the language model sees.  Transcription events reach the
client only when it asked for them (`audio.input.transcription`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
from typing import Any, Protocol

from ..audio.formats import AudioFormat
from ..protocol import client_events as ce
from ..protocol.errors import ProtocolError
from ..protocol.ids import IdFactory
from .conversation import Conversation
from .io import DetectSpeech, Output, Transcribe, TranscriptDelta, TranscriptDone, TranscriptFailed, TurnTranscript, VadResult
from .outbox import Outbox
from .turns import NeedTranscript, SpeechStart, SpeechStop, TurnDetector

MIN_COMMIT_MS = 100
VAD_LAG_MS = 250  # audio kept beyond the prefix padding while idle, for the VAD's own delay


@functools.lru_cache(maxsize=8)
def _wire(kind: str, rate: int | None) -> AudioFormat:
    return AudioFormat.from_session({"type": kind} if rate is None else {"type": kind, "rate": rate})


def wire_format(fmt: dict[str, Any]) -> AudioFormat:
    """The session's format dict as an `AudioFormat` (cached: this is on the append path)."""
    return _wire(fmt.get("type", "audio/pcm"), fmt.get("rate"))


def bytes_per_ms(fmt: dict[str, Any]) -> float:
    return wire_format(fmt).bytes_per_ms


class SessionHooks(Protocol):
    """What listening asks of the session."""

    def interrupt(self) -> list[Output]:
        """The user barged in: cancel the answer in the conversation and stop its playout."""
        ...

    def respond(self) -> list[Output]:
        """A turn ended (or the idle timeout fired): answer it, unless an answer is running."""
        ...

    def transcripts_changed(self) -> list[Output]:
        """A transcript arrived or failed: start the responses that waited for it."""
        ...


class InputAudio:
    """Buffer bookkeeping, VAD turn decisions, commits and transcripts."""

    def __init__(self, ids: IdFactory, out: Outbox, conversation: Conversation, kind: str,
                 audio_input: dict[str, Any], hooks: SessionHooks) -> None:
        self.ids = ids
        self.out = out
        self.conversation = conversation
        self.kind = kind
        self.hooks = hooks
        self.config = audio_input  # the session's `audio.input`
        self.buffer = bytearray()
        self.buffer_start_ms = 0.0
        self.audio_clock_ms = 0.0
        self.turns: TurnDetector | None = None
        self._turn_item: str | None = None
        self._turn_start_ms = 0.0
        self.pending_transcripts: set[str] = set()
        self.heard: dict[str, str] = {}  # user audio item id -> transcript, for the model
        self.heard_language: str | None = None  # the language of the latest transcribed user turn
        self.idle_deadline_ms: float | None = None
        self._configure_turns()

    def configure(self, audio_input: dict[str, Any]) -> None:
        """The session's `audio.input` changed (`session.update`)."""
        turns_changed = audio_input.get("turn_detection") != self.turn_config
        self.config = audio_input
        if turns_changed:
            self._configure_turns()

    # ---- configuration -----------------------------------------------------------------------

    @property
    def input_format(self) -> dict[str, Any]:
        return self.config["format"]

    @property
    def turn_config(self) -> dict[str, Any] | None:
        return self.config.get("turn_detection")

    @property
    def transcription_config(self) -> dict[str, Any] | None:
        return self.config.get("transcription")

    def _configure_turns(self) -> None:
        cfg = self.turn_config
        if cfg is None:
            self.turns = None
            return
        detector = TurnDetector(dict(cfg), clock_ms=self.turns.clock_ms if self.turns else self.buffer_start_ms)
        if self.turns is not None and self.turns.speaking:
            detector.speaking, detector.turn = True, self.turns.turn
        self.turns = detector

    def _padding_ms(self) -> float:
        cfg = self.turn_config or {}
        return float(cfg.get("prefix_padding_ms", 300))

    # ---- buffer ------------------------------------------------------------------------------

    def buffer_ms(self) -> float:
        return len(self.buffer) / bytes_per_ms(self.input_format)

    def _drop_before(self, ms: float) -> None:
        """Forget buffered audio before `ms` on the audio clock."""
        self._take_until(ms)

    def _take_until(self, ms: float) -> bytes:
        """Remove and return the buffered audio up to `ms` on the audio clock (whole samples)."""
        wire = wire_format(self.input_format)
        cut = min(wire.bytes_for_ms(max(0.0, ms - self.buffer_start_ms)), len(self.buffer))
        audio = bytes(self.buffer[:cut])
        del self.buffer[:cut]
        self.buffer_start_ms += cut / wire.bytes_per_ms
        return audio

    def on_append(self, ev: ce.InputAudioBufferAppend) -> list[Output]:
        try:
            audio = base64.b64decode(ev.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("Invalid 'audio'. Expected base64-encoded audio bytes.", "invalid_value", "audio") from None
        if self.input_format.get("type") == "audio/pcm" and len(audio) % 2:
            raise ProtocolError("Invalid 'audio': PCM16 audio must have an even number of bytes.", "invalid_value", "audio")
        return self.append_audio(audio)

    def append_audio(self, audio: bytes) -> list[Output]:
        """Audio in the session's input format joins the buffer (and the VAD hears it)."""
        self.buffer += audio
        self.audio_clock_ms += len(audio) / bytes_per_ms(self.input_format)
        if self.turns is not None and audio:
            return [DetectSpeech(audio, self.input_format)]
        return []

    def on_commit(self, ev: ce.InputAudioBufferCommit) -> list[Output]:
        ms = self.buffer_ms()
        if ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {ms:.2f}ms of audio.", "input_audio_buffer_commit_empty")
        out: list[Output] = []
        if self.turns is not None and self.turns.speaking:
            out += self._end_turn_events(self.audio_clock_ms)  # a manual commit ends the turn
            return out
        return out + self.commit_buffer(self._take_until(self.audio_clock_ms))

    def on_clear(self, ev: ce.InputAudioBufferClear) -> list[Output]:
        self.buffer.clear()
        self.buffer_start_ms = self.audio_clock_ms
        if self.turns is not None:
            self.turns.speaking = False
            self._turn_item = None
        return self.out.send({"type": "input_audio_buffer.cleared"})

    def commit_buffer(self, audio: bytes, item_id: str | None = None) -> list[Output]:
        """Turn audio into a user `input_audio` item and have it transcribed."""
        item_id = item_id or self.ids.new("item")
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        prev: str | None = None
        if self.kind == "realtime":
            prev = self.conversation.insert(item)
            self.conversation.add_input_audio(item_id, 0, audio, len(audio) / bytes_per_ms(self.input_format))
        out = self.out.send({"type": "input_audio_buffer.committed", "previous_item_id": prev, "item_id": item_id})
        out += self.out.send({"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)})
        out += self.out.send({"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)})
        self.pending_transcripts.add(item_id)
        out.append(Transcribe(audio, dict(self.input_format), copy.deepcopy(self.transcription_config), item_id=item_id))
        return out

    # ---- turn detection ----------------------------------------------------------------------

    def on_vad(self, inp: VadResult) -> list[Output]:
        if self.turns is None:
            return []
        out: list[Output] = []
        for event in self.turns.feed(inp.probabilities, inp.window_ms):
            if isinstance(event, SpeechStart):
                out += self._start_turn(event.onset_ms)
            elif isinstance(event, SpeechStop):
                out += self._end_turn_events(event.end_ms)
            elif isinstance(event, NeedTranscript):
                audio = bytes(self.buffer[: int((self.turns.clock_ms - self.buffer_start_ms) * bytes_per_ms(self.input_format))])
                out.append(Transcribe(audio, dict(self.input_format), None, turn=event.turn))
        if not self.turns.speaking:
            self._drop_before(self.turns.clock_ms - self._padding_ms() - VAD_LAG_MS)
            out += self._check_idle()
        return out

    def _start_turn(self, onset_ms: float) -> list[Output]:
        self.idle_deadline_ms = None
        start = max(self.buffer_start_ms, onset_ms - self._padding_ms())
        self._drop_before(start)
        self._turn_start_ms = start
        self._turn_item = self.ids.new("item")
        out = self.out.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": int(start),
                          "item_id": self._turn_item})
        cfg = self.turn_config or {}
        if cfg.get("interrupt_response", True):
            out += self.hooks.interrupt()
        return out

    def _end_turn_events(self, end_ms: float) -> list[Output]:
        item_id = self._turn_item or self.ids.new("item")
        self._turn_item = None
        if self.turns is not None:
            self.turns.speaking = False
        out = self.out.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(end_ms), "item_id": item_id})
        audio = self._take_until(end_ms)
        if len(audio) / bytes_per_ms(self.input_format) < MIN_COMMIT_MS:
            return out  # too short to be a turn; nothing committed
        out += self.commit_buffer(audio, item_id)
        cfg = self.turn_config or {}
        if self.kind == "realtime" and cfg.get("create_response", True):
            out += self.hooks.respond()
        return out

    def on_turn_transcript(self, inp: TurnTranscript) -> list[Output]:
        if self.turns is None:
            return []
        out: list[Output] = []
        for event in self.turns.transcript(inp.turn, inp.text):
            if isinstance(event, SpeechStop):
                out += self._end_turn_events(self.turns.clock_ms)
        return out

    def _check_idle(self) -> list[Output]:
        """server_vad `idle_timeout_ms`: nobody spoke for that long after the last answer ended."""
        if self.idle_deadline_ms is None or self.turns is None or self.turns.clock_ms < self.idle_deadline_ms:
            return []
        self.idle_deadline_ms = None
        start, end = self.buffer_start_ms, self.turns.clock_ms
        item_id = self.ids.new("item")
        out = self.out.send({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": int(start),
                          "audio_end_ms": int(end), "item_id": item_id})
        audio = self._take_until(end)
        if len(audio) / bytes_per_ms(self.input_format) >= MIN_COMMIT_MS:
            out += self.commit_buffer(audio, item_id)
        return out + self.hooks.respond()

    def arm_idle_timeout(self, response_audio_ms: float) -> None:
        cfg = self.turn_config or {}
        timeout = cfg.get("idle_timeout_ms") if cfg.get("type") == "server_vad" else None
        if timeout and self.turns is not None:
            self.idle_deadline_ms = self.audio_clock_ms + response_audio_ms + float(timeout)

    # ---- transcripts -------------------------------------------------------------------------

    def _transcript_events_wanted(self) -> bool:
        return self.transcription_config is not None

    def on_transcript_delta(self, inp: TranscriptDelta) -> list[Output]:
        if inp.item_id not in self.pending_transcripts or not self._transcript_events_wanted() or not inp.text:
            return []
        return self.out.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": inp.item_id,
                           "content_index": 0, "delta": inp.text})

    def on_transcript_done(self, inp: TranscriptDone) -> list[Output]:
        if inp.item_id not in self.pending_transcripts:
            return []
        self.pending_transcripts.discard(inp.item_id)
        self.heard[inp.item_id] = inp.text
        if inp.language and inp.text.strip():
            self.heard_language = inp.language
        out: list[Output] = []
        if self._transcript_events_wanted():
            item = self.conversation.get(inp.item_id)
            if item is not None:
                item["content"][0]["transcript"] = inp.text
            usage = inp.usage or {"type": "duration", "seconds": round(self.conversation.input_audio_ms(inp.item_id) / 1000, 3)}
            out += self.out.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": inp.item_id,
                               "content_index": 0, "transcript": inp.text, "usage": usage})
        return out + self.hooks.transcripts_changed()

    def on_transcript_failed(self, inp: TranscriptFailed) -> list[Output]:
        if inp.item_id not in self.pending_transcripts:
            return []
        self.pending_transcripts.discard(inp.item_id)
        out: list[Output] = []
        if self._transcript_events_wanted():
            out += self.out.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": inp.item_id,
                               "content_index": 0, "error": {"type": "transcription_error", "code": inp.code,
                                                             "message": inp.message, "param": None}})
        return out + self.hooks.transcripts_changed()
