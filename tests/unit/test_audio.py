"""G.711 codecs, resampling and the wire formats of parley.audio."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parley.audio import g711
from parley.audio.formats import PCM16, PCMA, PCMU, AudioFormat
from parley.audio.resample import StreamResampler, resample

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # deprecated in 3.11, removed in 3.13: the reference while it lasts
    except ImportError:  # pragma: no cover - Python >= 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def sine(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_frequency(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


# --- G.711 ---------------------------------------------------------------------------------


@needs_audioop
@pytest.mark.parametrize(
    ("encode", "reference"),
    [(g711.ulaw_encode, "lin2ulaw"), (g711.alaw_encode, "lin2alaw")],
)
def test_g711_encode_is_bit_exact_on_every_16_bit_sample(encode, reference) -> None:
    expected = getattr(audioop, reference)(ALL_SAMPLES.astype("<i2").tobytes(), 2)
    assert encode(ALL_SAMPLES) == expected


@needs_audioop
@pytest.mark.parametrize(
    ("decode", "reference"),
    [(g711.ulaw_decode, "ulaw2lin"), (g711.alaw_decode, "alaw2lin")],
)
def test_g711_decode_is_bit_exact_on_every_code(decode, reference) -> None:
    expected = np.frombuffer(getattr(audioop, reference)(ALL_CODES, 2), dtype="<i2")
    np.testing.assert_array_equal(decode(ALL_CODES), expected)


def test_g711_known_values() -> None:
    # Silence and the extremes, from the G.711 tables.
    assert g711.ulaw_encode(np.array([0, 32767, -32768], dtype=np.int16)) == b"\xff\x80\x00"
    assert g711.alaw_encode(np.array([0, 32767, -32768], dtype=np.int16)) == b"\xd5\xaa\x2a"
    np.testing.assert_array_equal(g711.ulaw_decode(b"\xff\x7f\x80\x00"), [0, 0, 32124, -32124])
    np.testing.assert_array_equal(g711.alaw_decode(b"\xd5\x55\xaa\x2a"), [8, -8, 32256, -32256])


@pytest.mark.parametrize(
    ("encode", "decode", "peak"),
    [(g711.ulaw_encode, g711.ulaw_decode, 32124), (g711.alaw_encode, g711.alaw_decode, 32256)],
)
def test_g711_round_trip_error_bounds(encode, decode, peak: int) -> None:
    x = ALL_SAMPLES.astype(np.int32)
    back = decode(encode(ALL_SAMPLES)).astype(np.int32)
    error = np.abs(back - x)
    # Logarithmic quantisation: at most half of the largest step (1024) plus the bits below
    # the codec's 13/14-bit input, about 1/32 of the magnitude, and nearly exact when small.
    in_range = np.abs(x) <= peak
    assert error[in_range].max() <= 516
    assert (error[np.abs(x) > 1024] <= np.abs(x[np.abs(x) > 1024]) / 28).all()
    assert error[np.abs(x) < 64].max() <= 8
    # Beyond the codec's largest value, samples clip to it.
    assert np.abs(back).max() == peak
    np.testing.assert_array_equal(np.abs(back[~in_range]), peak)
    # Decoding is a fixed point: code -> linear -> code gives the same code back
    # (except µ-law's "negative zero" 0x7f, which decodes to 0 and re-encodes as 0xff).
    codes = np.frombuffer(encode(decode(ALL_CODES)), dtype=np.uint8)
    differs = np.nonzero(codes != np.arange(256))[0].tolist()
    assert differs in ([], [0x7F])


def test_g711_rejects_non_int16() -> None:
    with pytest.raises(TypeError):
        g711.ulaw_encode(np.zeros(4, dtype=np.float32))


# --- resampling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_rate", "to_rate"),
    [(24000, 16000), (24000, 8000), (8000, 24000), (22050, 24000), (16000, 48000)],
)
def test_resample_keeps_frequency_and_length(from_rate: int, to_rate: int) -> None:
    x = sine(440.0, from_rate, 1.0)
    y = resample(x, from_rate, to_rate)
    assert y.dtype == np.int16
    assert abs(len(y) - len(x) * to_rate / from_rate) <= 1
    assert abs(peak_frequency(y, to_rate) - 440.0) <= 2.0
    # Amplitude survives (RMS of a sine is A/sqrt(2)); skip the filter's edges.
    middle = y[len(y) // 10 : -len(y) // 10].astype(np.float64)
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(10000 / np.sqrt(2), rel=0.02)


def test_resample_same_rate_and_empty() -> None:
    x = sine(440.0, 24000, 0.1)
    np.testing.assert_array_equal(resample(x, 24000, 24000), x)
    assert resample(np.zeros(0, dtype=np.int16), 24000, 16000).size == 0


def test_resample_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        resample(np.zeros(10, dtype=np.float32), 24000, 16000)
    with pytest.raises(ValueError):
        resample(np.zeros((2, 10), dtype=np.int16), 24000, 16000)
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)


@pytest.mark.parametrize(("from_rate", "to_rate"), [(24000, 16000), (8000, 24000), (22050, 24000)])
@pytest.mark.parametrize("chunk_ms", [10, 20, 37])
def test_stream_resampler_matches_one_shot(from_rate: int, to_rate: int, chunk_ms: int) -> None:
    x = sine(440.0, from_rate, 1.0) + sine(1234.0, from_rate, 1.0, 5000.0)
    one_shot = resample(x, from_rate, to_rate)
    stream = StreamResampler(from_rate, to_rate)
    step = from_rate * chunk_ms // 1000
    parts = [stream.push(x[i : i + step]) for i in range(0, len(x), step)]
    parts.append(stream.flush())
    streamed = np.concatenate(parts)
    assert streamed.dtype == np.int16
    assert abs(len(streamed) - len(one_shot)) <= 1
    n = min(len(streamed), len(one_shot))
    # Same filter; only int16 dither differs.
    assert np.abs(streamed[:n].astype(np.int32) - one_shot[:n]).max() <= 8


def test_stream_resampler_is_reusable_after_flush_and_passes_through_equal_rates() -> None:
    x = sine(300.0, 24000, 0.5)
    stream = StreamResampler(24000, 16000)
    first = np.concatenate([stream.push(x), stream.flush()])
    second = np.concatenate([stream.push(x), stream.flush()])
    assert len(first) == len(second) == 8000
    assert np.abs(first.astype(np.int32) - second).max() <= 8
    assert stream.push(np.zeros(0, dtype=np.int16)).size == 0
    same = StreamResampler(24000, 24000)
    np.testing.assert_array_equal(same.push(x), x)
    assert same.flush().size == 0


# --- wire formats --------------------------------------------------------------------------


def test_format_from_session() -> None:
    assert AudioFormat.from_session({"type": "audio/pcm", "rate": 24000}) == PCM16
    assert AudioFormat.from_session({"type": "audio/pcm"}) == PCM16
    assert AudioFormat.from_session({"type": "audio/pcmu"}) == PCMU
    assert AudioFormat.from_session({"type": "audio/pcma", "rate": None}) == PCMA
    assert AudioFormat.from_session("pcm16") == PCM16
    assert AudioFormat.from_session("g711_ulaw") == PCMU
    assert AudioFormat.from_session("g711_alaw") == PCMA
    for fmt in (PCM16, PCMU, PCMA):
        assert AudioFormat.from_session(fmt.to_session()) == fmt


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "audio/pcm", "rate": 16000},
        {"type": "audio/opus"},
        {"type": "audio/pcmu", "rate": 24000},
        {"type": "audio/pcm", "rate": 24000, "channels": 2},
        {},
        "mp3",
    ],
)
def test_format_from_session_rejects(bad) -> None:
    with pytest.raises(ValueError):
        AudioFormat.from_session(bad)


def test_format_durations() -> None:
    assert PCM16.bytes_per_ms == 48
    assert PCMU.bytes_per_ms == PCMA.bytes_per_ms == 8
    assert PCM16.duration_ms(48000) == 1000
    assert PCM16.duration_ms(960) == 20
    assert PCMU.duration_ms(160) == 20
    assert PCMA.duration_ms(8000) == 1000
    assert PCM16.bytes_for_ms(20) == 960
    assert PCMU.bytes_for_ms(20) == 160
    assert PCM16.bytes_for_ms(0.03) == 0  # rounds down to whole samples
    assert PCM16.bytes_for_ms(1.05) % 2 == 0


def test_format_decode_encode() -> None:
    x = sine(440.0, 24000, 0.1)
    wire = PCM16.encode(x)
    assert wire == x.astype("<i2").tobytes()
    np.testing.assert_array_equal(PCM16.decode(wire), x)
    np.testing.assert_array_equal(PCM16.decode(memoryview(wire)), x)
    assert PCM16.decode(wire).dtype == np.int16
    with pytest.raises(ValueError):
        PCM16.decode(b"\x00\x01\x02")
    with pytest.raises(TypeError):
        PCM16.encode(x.astype(np.float32))

    y = sine(440.0, 8000, 0.1)
    for fmt in (PCMU, PCMA):
        wire = fmt.encode(y)
        assert len(wire) == len(y) == fmt.bytes_for_ms(100)
        back = fmt.decode(wire)
        assert back.dtype == np.int16
        assert np.abs(back.astype(np.int32) - y).max() <= 10000 / 30


def test_format_validation() -> None:
    with pytest.raises(ValueError):
        AudioFormat("audio/pcmu", 16000)
    with pytest.raises(ValueError):
        AudioFormat("audio/flac", 24000)
