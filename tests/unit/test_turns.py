"""Turn detection on the audio clock: no sleeping, exact timings."""

from __future__ import annotations

import pytest

from parley.core.turns import NeedTranscript, SpeechStart, SpeechStop, TurnDetector, looks_complete

W = 32.0  # Silero's window at 16 kHz


def feed(det: TurnDetector, pattern: str) -> list:
    """'.' = silence window (p=0.05), '#' = speech (p=0.9), '~' = unsure (p=0.45)."""
    probs = {".": 0.05, "#": 0.9, "~": 0.45}
    return det.feed([probs[c] for c in pattern], W)


def server_vad(**kw) -> TurnDetector:
    return TurnDetector({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200, **kw})


def test_speech_start_and_stop_on_the_audio_clock() -> None:
    det = server_vad()
    events = feed(det, "." * 10 + "#" * 20)
    assert events == [SpeechStart(onset_ms=10 * W)]
    events = feed(det, "." * 7)  # 224 ms of silence >= 200 ms
    assert events == [SpeechStop(end_ms=30 * W + 7 * W)]
    assert not det.speaking


def test_a_click_is_not_a_turn() -> None:
    det = server_vad()
    assert feed(det, "...#...#..") == []


def test_unsure_windows_keep_speech_going_only_before_silence_starts() -> None:
    det = server_vad()
    feed(det, "####")
    assert feed(det, "~~~~~~~~~~") == []  # 0.45 >= 0.5 - 0.15: still speaking
    assert det.speaking
    assert feed(det, "......") == []
    assert isinstance(feed(det, ".")[0], SpeechStop)


def test_longer_silence_duration_waits_longer() -> None:
    det = server_vad(silence_duration_ms=1000)
    feed(det, "####")
    assert feed(det, "." * 31) == []
    assert feed(det, ".") == [SpeechStop(end_ms=4 * W + 32 * W)]


def test_threshold_is_honoured() -> None:
    det = server_vad(threshold=0.95)
    assert feed(det, "#" * 10) == []


def test_semantic_vad_waits_for_unfinished_sentences() -> None:
    det = TurnDetector({"type": "semantic_vad", "eagerness": "high"})
    feed(det, "#" * 10)
    events = feed(det, "." * 10)  # 320 ms: asks for the words so far
    assert events == [NeedTranscript(turn=1)]
    assert det.transcript(1, "I want to go to the") == []  # unfinished: keep listening
    assert feed(det, "." * 40) == []  # 1.6 s
    assert isinstance(feed(det, "." * 30)[-1], SpeechStop)  # gives up at the 2 s maximum


def test_semantic_vad_ends_finished_sentences_early() -> None:
    det = TurnDetector({"type": "semantic_vad", "eagerness": "high"})
    feed(det, "#" * 10)
    assert feed(det, "." * 10) == [NeedTranscript(turn=1)]
    stop = det.transcript(1, "turn off the lights in the kitchen")
    assert stop == [SpeechStop(end_ms=10 * W + 10 * W)]


def test_semantic_vad_speech_resuming_cancels_the_wait() -> None:
    det = TurnDetector({"type": "semantic_vad", "eagerness": "low"})
    feed(det, "#" * 10)
    feed(det, "." * 30)
    det.transcript(1, "and then")
    feed(det, "#" * 5)
    assert det.speaking and feed(det, "." * 26) == [NeedTranscript(turn=1)]  # asks again after 800 ms


@pytest.mark.parametrize("text,complete", [
    ("turn off the lights", True), ("What time is it?", True), ("I want to", False), ("and", False),
    ("so um", False), ("", False), ("call my mother and", False), ("thanks", True), ("wait...", False),
])
def test_looks_complete(text: str, complete: bool) -> None:
    assert looks_complete(text) is complete
