"""Sessions whose audio travels as media (WebRTC, SIP), not as JSON deltas, and truncation of
assistant audio to what the user heard.  `Playout` owns nothing but the answers to the media
track's reports; `truncate_audio` is the one place an assistant item is cut.

The client of a media session hears response audio from a media track that the runtime plays
in real time, so the server, not the client, knows how much was heard.  The runtime reports
what the track does (`PlayoutStarted`, `PlayoutStopped`, `PlayoutCleared`) and the core turns
that into `output_audio_buffer.*` events.  When the user barges in, or the client sends
`output_audio_buffer.clear`, the core asks the runtime to stop the track (`ClearPlayout`) and
truncates the assistant item at the played position itself: WebRTC clients send no
`conversation.item.truncate`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..protocol import client_events as ce
from ..protocol.errors import ProtocolError
from .conversation import Conversation
from .input_audio import wire_format
from .io import ClearPlayout, DtmfReceived, Output, PlayoutCleared, PlayoutStarted, PlayoutStopped, Send
from .outbox import Outbox


class Playout:
    def __init__(self, out: Outbox, conversation: Conversation, media: bool,
                 output_format: Callable[[], dict[str, Any]]) -> None:
        self.out = out
        self.conversation = conversation
        self.media = media  # audio travels on media tracks: the server tracks playout
        self.output_format = output_format  # the session's current `audio.output.format`

    def handlers(self) -> dict[type, Any]:
        return {
            ce.OutputAudioBufferClear: self.on_output_clear,
            PlayoutStarted: self.on_started,
            PlayoutStopped: self.on_stopped,
            PlayoutCleared: self.on_cleared,
            DtmfReceived: self.on_dtmf,
        }

    def on_dtmf(self, inp: DtmfReceived) -> list[Output]:
        # the hosted API's schema for this SIP-only event has no event_id
        return [Send({"type": "input_audio_buffer.dtmf_event_received", "event": inp.event,
                      "received_at": inp.received_at})]

    def on_output_clear(self, ev: ce.OutputAudioBufferClear) -> list[Output]:
        if not self.media:
            raise ProtocolError("output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                                "invalid_value", "type")
        return [ClearPlayout()]

    def interrupt(self) -> list[Output]:
        """The user started talking over the assistant: stop what is still playing."""
        return [ClearPlayout()] if self.media else []

    def on_started(self, inp: PlayoutStarted) -> list[Output]:
        return self.out.send({"type": "output_audio_buffer.started", "response_id": inp.response_id})

    def on_stopped(self, inp: PlayoutStopped) -> list[Output]:
        return self.out.send({"type": "output_audio_buffer.stopped", "response_id": inp.response_id})

    def on_cleared(self, inp: PlayoutCleared) -> list[Output]:
        if inp.response_id is None:
            return []
        out = self.out.send({"type": "output_audio_buffer.cleared", "response_id": inp.response_id})
        item = self.conversation.get(inp.item_id) if inp.item_id else None
        stored = self.conversation.audio(inp.item_id, inp.content_index) if item is not None else None
        if item is None or stored is None or inp.played_ms >= stored.duration_ms:
            return out  # deleted meanwhile, or everything was heard: nothing to cut
        end_ms = int(max(0.0, inp.played_ms))
        truncate_audio(self.conversation, item, inp.content_index, float(end_ms), self.output_format())
        return out + self.out.send({"type": "conversation.item.truncated", "item_id": item["id"],
                                    "content_index": inp.content_index, "audio_end_ms": end_ms})


def truncate_audio(conversation: Conversation, item: dict[str, Any], content_index: int, end_ms: float,
                   output_format: dict[str, Any]) -> None:
    """Keep the audio up to `end_ms` and only the words spoken by then (from TTS timing).
    `output_format` is the session's, for audio that did not record the format it is in."""
    stored = conversation.audio(item["id"], content_index)
    assert stored is not None
    part = item["content"][content_index]
    transcript = part.get("transcript") or ""
    fmt = stored.fmt or output_format
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
