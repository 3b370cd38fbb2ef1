"""The REST audio helpers without a server: PyAV encoding and decoding (audio/codec.py), the
audio-id store and the transcript formats."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from parley.audio.codec import AudioDecodeError, StreamEncoder, decode, encode
from parley.engines.stt import Transcript
from parley.server.audio_store import AudioStore
from parley.server.transcript_formats import render

RATE = 24000


def tone(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return np.round(0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_encode_then_decode_keeps_the_tone(fmt):
    pcm = tone()
    out = decode(encode(pcm, RATE, fmt), RATE)
    assert abs(out.size - pcm.size) < 0.1 * RATE  # codec padding: under 100 ms
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert abs(np.argmax(spectrum) * RATE / out.size - 440) < 5
    assert 0.2 * 32767 < np.abs(out).max() < 0.4 * 32767


def test_streamed_pieces_make_one_valid_file():
    pcm = tone(2.0)
    for fmt in ("mp3", "flac", "wav", "aac"):
        enc = StreamEncoder(fmt, RATE)
        pieces = [enc.feed(pcm[i:i + 2400]) for i in range(0, pcm.size, 2400)] + [enc.finish()]
        assert pieces[0], fmt  # the first 100 ms already give bytes to send
        assert abs(decode(b"".join(pieces), RATE).size - pcm.size) < 0.1 * RATE


def test_wav_lengths_whole_and_streamed():
    pcm = tone(0.5)
    with wave.open(io.BytesIO(encode(pcm, RATE, "wav"))) as w:
        assert w.getnframes() == pcm.size and w.getframerate() == RATE
    enc = StreamEncoder("wav", RATE)
    streamed = enc.feed(pcm) + enc.finish()
    assert streamed[4:8] == b"\xff\xff\xff\xff" and streamed[44:] == pcm.astype("<i2").tobytes()
    assert encode(pcm, RATE, "pcm") == pcm.astype("<i2").tobytes()


def test_decode_resamples_and_refuses_garbage():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(48000)
        w.writeframes(np.zeros(96000, np.int16).tobytes())  # 1 s of stereo
    assert decode(buf.getvalue(), 16000).size == pytest.approx(16000, abs=200)
    with pytest.raises(AudioDecodeError):
        decode(b"definitely not audio" * 50, 16000)


def test_audio_store_expires_and_is_bounded():
    store = AudioStore(ttl_s=10, max_items=2)
    a, expires = store.put("one", now=100)
    assert a.startswith("audio_") and expires == 110
    assert store.get(a, now=109) == "one" and store.get(a, now=110) is None
    b, _ = store.put("two", now=101)
    c, _ = store.put("three", now=102)
    assert store.get(a, now=103) is None and store.get(b, now=103) == "two" and len(store) == 2
    store.put_transcript(c, "three!")
    assert store.get(c, now=103) == "three!"
    assert store.get("audio_unknown", now=103) is None


def test_transcript_formats():
    final = Transcript("hello world", language="en")
    assert render(final, "text", seconds=2.5)[0] == "hello world\n"
    assert render(final, "srt", seconds=3725.25)[0] == "1\n00:00:00,000 --> 01:02:05,250\nhello world\n\n"
    assert render(final, "vtt", seconds=2.5)[0] == "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello world\n\n"
    body, media = render(final, "json", seconds=2.5)
    assert media == "application/json" and body["text"] == "hello world"
    assert body["usage"]["input_tokens"] == 25  # 10 audio tokens a second
    verbose, _ = render(final, "verbose_json", seconds=2.5)
    assert verbose["language"] == "english" and verbose["segments"][0]["end"] == 2.5
    assert "words" not in verbose
