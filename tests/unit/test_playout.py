"""The playout queue (runtime) and the core's side of media sessions (output_audio_buffer.*,
barge-in truncation at the played position), without sockets or clocks."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from parley.core.io import ClearPlayout, MediaAudio, PlayoutCleared, PlayoutStarted, PlayoutStopped, Send
from parley.core.session import Session, SessionSetup
from parley.protocol.client_events import parse_client_event
from parley.runtime.playout import FRAME_SAMPLES, Playout

PCM = {"type": "audio/pcm", "rate": 24000}


def tone(ms: float, rate: int = 24000, amp: int = 8000) -> bytes:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (amp * np.sin(2 * np.pi * 440 * t)).astype(np.int16).tobytes()


def drain(playout: Playout, frames: int) -> list[bytes]:
    return [playout.next_frame() for _ in range(frames)]


def test_frames_are_20ms_at_48k_and_silence_when_idle() -> None:
    events: list = []
    p = Playout(events.append)
    frame = p.next_frame()
    assert len(frame) == FRAME_SAMPLES * 2 and not any(frame)
    assert events == [] and not p.busy


def test_started_with_the_first_audio_and_stopped_after_finish_and_drain() -> None:
    events: list = []
    p = Playout(events.append)
    p.push("resp_1", "item_1", 0, tone(100), PCM)
    assert events == [PlayoutStarted("resp_1")]
    p.push("resp_1", "item_1", 0, tone(100), PCM)
    drain(p, 1)
    assert events == [PlayoutStarted("resp_1")]
    drain(p, 12)  # all audio played, but the response is not done: no stop yet (an underrun)
    assert events == [PlayoutStarted("resp_1")]
    p.finish("resp_1")
    drain(p, 2)
    assert events == [PlayoutStarted("resp_1"), PlayoutStopped("resp_1")]
    assert not p.busy


def test_audio_is_resampled_to_48k_with_its_length_kept() -> None:
    p = Playout(lambda e: None)
    p.push("r", "i", 0, tone(500), PCM)
    p.finish("r")
    audio = np.frombuffer(b"".join(drain(p, 30)), dtype=np.int16)
    loud = np.flatnonzero(np.abs(audio) > 1000)
    assert abs((loud[-1] - loud[0]) / 48 - 500) < 5


def test_g711_output_plays_too() -> None:
    from parley.audio.g711 import ulaw_encode

    p = Playout(lambda e: None)
    p.push("r", "i", 0, ulaw_encode(np.frombuffer(tone(200, rate=8000), dtype=np.int16)), {"type": "audio/pcmu"})
    audio = np.frombuffer(b"".join(drain(p, 12)), dtype=np.int16)
    assert np.abs(audio).max() > 4000


def test_clear_reports_the_played_position_and_empties_the_queue() -> None:
    events: list = []
    p = Playout(events.append)
    for _ in range(5):
        p.push("resp_1", "item_1", 0, tone(200), PCM)  # 1 s queued in 200 ms deltas
    drain(p, 23)  # 460 ms played
    cleared = p.clear()
    assert cleared.response_id == "resp_1" and cleared.item_id == "item_1"
    assert abs(cleared.played_ms - 460) < 5
    assert not any(p.next_frame()) and not p.busy
    assert PlayoutStopped("resp_1") not in events


def test_clear_with_nothing_playing() -> None:
    assert Playout(lambda e: None).clear() == PlayoutCleared()


def media_session() -> Session:
    return Session(SessionSetup(media=True))


def sends(outputs: list) -> list[dict]:
    return [o.event for o in outputs if isinstance(o, Send)]


def test_output_audio_buffer_clear_is_refused_without_media_and_asks_for_a_clear_with_it() -> None:
    ws = Session(SessionSetup())
    out = ws.handle(parse_client_event('{"type":"output_audio_buffer.clear","event_id":"c1"}'))
    assert sends(out)[0]["type"] == "error" and sends(out)[0]["error"]["event_id"] == "c1"
    rtc = media_session()
    assert rtc.handle(parse_client_event('{"type":"output_audio_buffer.clear"}')) == [ClearPlayout()]


def test_playout_reports_become_output_audio_buffer_events() -> None:
    s = media_session()
    started = sends(s.handle(PlayoutStarted("resp_1")))[0]
    stopped = sends(s.handle(PlayoutStopped("resp_1")))[0]
    assert (started["type"], started["response_id"]) == ("output_audio_buffer.started", "resp_1")
    assert (stopped["type"], stopped["response_id"]) == ("output_audio_buffer.stopped", "resp_1")
    assert s.handle(PlayoutCleared()) == []


def spoken_item(s: Session) -> tuple[str, str]:
    """Run one audio response to completion; returns (response id, item id)."""
    from parley.core.io import ModelAudio, ModelDone, StartResponse

    out = s.handle(parse_client_event('{"type":"response.create"}'))
    rid = next(o.response_id for o in out if isinstance(o, StartResponse))
    s.handle(ModelAudio(rid, tone(1000), "One two three four. ", 1000))
    s.handle(ModelAudio(rid, tone(1000), "Five six seven eight.", 1000))
    done = sends(s.handle(ModelDone(rid)))
    item_id = next(e for e in done if e["type"] == "response.done")["response"]["output"][0]["id"]
    return rid, item_id


def test_cleared_playout_truncates_the_item_where_it_stopped() -> None:
    s = media_session()
    rid, item_id = spoken_item(s)
    events = sends(s.handle(PlayoutCleared(rid, item_id, 0, 1500.0)))
    assert [e["type"] for e in events] == ["output_audio_buffer.cleared", "conversation.item.truncated"]
    assert events[1]["audio_end_ms"] == 1500
    got = sends(s.handle(parse_client_event(f'{{"type":"conversation.item.retrieve","item_id":"{item_id}"}}')))[0]
    part = got["item"]["content"][0]
    assert part["transcript"] == "One two three four. Five six"
    assert len(base64.b64decode(part["audio"])) == 1500 * 48
    # everything heard: nothing to cut
    assert [e["type"] for e in sends(s.handle(PlayoutCleared(rid, item_id, 0, 5000.0)))] == ["output_audio_buffer.cleared"]


def test_speech_start_clears_playout_even_after_the_response_is_done() -> None:
    from parley.core.io import VadResult

    s = media_session()
    spoken_item(s)
    s.handle(MediaAudio(b"\0\0" * 2400))
    out = s.handle(VadResult([0.99] * 10, 32.0))
    assert ClearPlayout() in out
    assert any(isinstance(o, Send) and o.event["type"] == "input_audio_buffer.speech_started" for o in out)


@pytest.mark.parametrize("interrupt", [True, False])
def test_interrupt_response_false_keeps_playing(interrupt: bool) -> None:
    from parley.core.io import VadResult

    s = media_session()
    s.handle(parse_client_event('{"type":"session.update","session":{"type":"realtime","audio":{"input":{'
                                '"turn_detection":{"type":"server_vad","interrupt_response":%s}}}}}' % str(interrupt).lower()))
    s.handle(MediaAudio(b"\0\0" * 2400))
    out = s.handle(VadResult([0.99] * 10, 32.0))
    assert (ClearPlayout() in out) is interrupt
