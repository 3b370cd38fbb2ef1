"""Sessions whose audio travels as media (WebRTC, SIP), not as JSON deltas: a mixin of `Session`.

The client of such a session hears response audio from a media track that the runtime plays
in real time, so the server, not the client, knows how much was heard.  The runtime reports
what the track does (`PlayoutStarted`, `PlayoutStopped`, `PlayoutCleared`) and the core turns
that into `output_audio_buffer.*` events.  When the user barges in, or the client sends
`output_audio_buffer.clear`, the core asks the runtime to stop the track (`ClearPlayout`) and
truncates the assistant item at the played position itself: WebRTC clients send no
`conversation.item.truncate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import client_events as ce
from ..protocol.errors import ProtocolError
from .io import ClearPlayout, DtmfReceived, MediaAudio, Output, PlayoutCleared, PlayoutStarted, PlayoutStopped, Send

if TYPE_CHECKING:
    from .session import Session


class PlayoutMixin:
    def _playout_handlers(self: Session) -> dict[type, object]:
        return {
            ce.OutputAudioBufferClear: self._on_output_clear,
            MediaAudio: self._on_media_audio,
            PlayoutStarted: self._on_playout_started,
            PlayoutStopped: self._on_playout_stopped,
            PlayoutCleared: self._on_playout_cleared,
            DtmfReceived: self._on_dtmf,
        }

    def _on_dtmf(self: Session, inp: DtmfReceived) -> list[Output]:
        # the hosted API's schema for this SIP-only event has no event_id
        return [Send({"type": "input_audio_buffer.dtmf_event_received", "event": inp.event,
                      "received_at": inp.received_at})]

    def _on_media_audio(self: Session, inp: MediaAudio) -> list[Output]:
        return self.append_audio(inp.audio)

    def _on_output_clear(self: Session, ev: ce.OutputAudioBufferClear) -> list[Output]:
        if not self.setup.media:
            raise ProtocolError("output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                                "invalid_value", "type")
        return [ClearPlayout()]

    def interrupt_playout(self: Session) -> list[Output]:
        """The user started talking over the assistant: stop what is still playing."""
        return [ClearPlayout()] if self.setup.media else []

    def _on_playout_started(self: Session, inp: PlayoutStarted) -> list[Output]:
        return self._send({"type": "output_audio_buffer.started", "response_id": inp.response_id})

    def _on_playout_stopped(self: Session, inp: PlayoutStopped) -> list[Output]:
        return self._send({"type": "output_audio_buffer.stopped", "response_id": inp.response_id})

    def _on_playout_cleared(self: Session, inp: PlayoutCleared) -> list[Output]:
        if inp.response_id is None:
            return []
        out = self._send({"type": "output_audio_buffer.cleared", "response_id": inp.response_id})
        item = self.conversation.get(inp.item_id) if inp.item_id else None
        stored = self.conversation.audio(inp.item_id, inp.content_index) if item is not None else None
        if item is None or stored is None or inp.played_ms >= stored.duration_ms:
            return out  # deleted meanwhile, or everything was heard: nothing to cut
        end_ms = int(max(0.0, inp.played_ms))
        self.truncate_audio(item, inp.content_index, float(end_ms))
        return out + self._send({"type": "conversation.item.truncated", "item_id": item["id"],
                                 "content_index": inp.content_index, "audio_end_ms": end_ms})
