"""The test-speech fixture (tests/support/speech.py): flite speech with known boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import speech as speech_mod
from tests.support.speech import (
    SPEECH_THRESHOLD,
    FliteMissing,
    Speech,
    add_noise,
    flite_voices,
    make_speech,
    silence,
    speech_bounds,
    to_g711,
)
from parley.audio.formats import PCMA, PCMU
from parley.audio.resample import resample

TEXT = "turn off the lights in the kitchen"


@pytest.fixture(scope="module")
def sp() -> Speech:
    return make_speech(TEXT)


def test_shape_and_padding(sp: Speech) -> None:
    assert sp.rate == 24000 and sp.text == TEXT
    assert sp.pcm.dtype == np.int16 and sp.pcm.ndim == 1
    lead, tail = round(0.5 * sp.rate), round(0.8 * sp.rate)
    assert not sp.pcm[:lead].any() and not sp.pcm[-tail:].any()  # digital silence
    spoken_s = (sp.pcm.size - lead - tail) / sp.rate
    assert 1.2 < spoken_s < 4.0  # a seven-word sentence
    assert np.abs(sp.pcm.astype(np.int32)).max() > 8000  # at a sensible level


def test_boundaries_are_where_the_speech_is(sp: Speech) -> None:
    # flite's own output starts and ends with a little breath noise; the boundaries skip it.
    assert 500 <= sp.speech_start_ms < 900
    assert sp.speech_start_ms + 1000 < sp.speech_end_ms <= sp.duration_ms - 800
    start = int(sp.speech_start_ms * sp.rate / 1000)
    end = int(round(sp.speech_end_ms * sp.rate / 1000))
    magnitude = np.abs(sp.pcm.astype(np.int32))
    assert magnitude[start] > SPEECH_THRESHOLD and magnitude[end - 1] > SPEECH_THRESHOLD
    assert magnitude[:start].max() <= SPEECH_THRESHOLD
    assert magnitude[end:].max() <= SPEECH_THRESHOLD
    # most of the energy lies between them
    energy = magnitude.astype(np.float64) ** 2
    assert energy[start:end].sum() > 0.999 * energy.sum()


def test_padding_moves_the_boundaries() -> None:
    a = make_speech(TEXT, lead_ms=500, tail_ms=800, rate=16000)
    b = make_speech(TEXT, lead_ms=1500, tail_ms=0, rate=16000)
    assert b.speech_start_ms - a.speech_start_ms == pytest.approx(1000, abs=0.1)
    assert b.speech_end_ms - a.speech_end_ms == pytest.approx(1000, abs=0.1)
    assert b.duration_ms == pytest.approx(a.duration_ms + 200, abs=0.1)


def test_rates_agree() -> None:
    hi, lo = make_speech(TEXT, rate=48000), make_speech(TEXT, rate=8000)
    assert hi.pcm.size == pytest.approx(6 * lo.pcm.size, abs=6)
    assert abs(hi.speech_start_ms - lo.speech_start_ms) < 10
    assert abs(hi.speech_end_ms - lo.speech_end_ms) < 10


def test_pcm_bytes_is_little_endian_pcm16(sp: Speech) -> None:
    data = sp.pcm_bytes()
    assert len(data) == 2 * sp.pcm.size
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), sp.pcm)


@pytest.mark.parametrize("ms", [20, 50, 100, 33])
def test_chunks_cover_the_audio(sp: Speech, ms: int) -> None:
    chunks = list(sp.chunks(ms))
    size = 2 * round(sp.rate * ms / 1000)
    assert all(len(c) == size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= size
    assert b"".join(chunks) == sp.pcm_bytes()
    assert len(chunks) == -(-sp.pcm.size * 2 // size)


def test_chunks_reject_sub_sample_sizes(sp: Speech) -> None:
    with pytest.raises(ValueError):
        next(sp.chunks(0))


def test_same_text_same_audio_and_voices_differ() -> None:
    a, b = make_speech(TEXT, rate=16000), make_speech(TEXT, rate=16000)
    np.testing.assert_array_equal(a.pcm, b.pcm)
    other = make_speech(TEXT, voice="kal", rate=16000)
    assert other.pcm.size != a.pcm.size or not np.array_equal(other.pcm, a.pcm)


def test_unknown_voice_is_an_error() -> None:
    assert {"slt", "kal", "awb", "rms"} <= flite_voices()
    with pytest.raises(ValueError, match="no voice"):
        make_speech("hello", voice="no-such-voice")


def test_is_cached_on_disk(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech_mod, "_CACHE_DIR", tmp_path)
    speech_mod._flite.cache_clear()
    try:
        first = make_speech("the cache test sentence", rate=16000)
        files = list(tmp_path.glob("*.wav"))
        assert len(files) == 1
        speech_mod._flite.cache_clear()
        monkeypatch.setattr(speech_mod.shutil, "which", lambda name: None)  # flite "gone"
        again = make_speech("the cache test sentence", rate=16000)  # served from the disk cache
        np.testing.assert_array_equal(first.pcm, again.pcm)
        with pytest.raises(FliteMissing, match="apt-get install -y flite"):
            make_speech("a sentence that is not cached", rate=16000)
    finally:
        speech_mod._flite.cache_clear()


def test_silence() -> None:
    quiet = silence(100, 16000)
    assert quiet.dtype == np.int16 and quiet.size == 1600 and not quiet.any()
    assert silence(20).size == 480  # 24 kHz by default


@pytest.mark.parametrize("snr_db", [0, 10, 20, 30])
def test_add_noise_hits_the_snr(sp: Speech, snr_db: float) -> None:
    noisy = add_noise(sp.pcm, snr_db, seed=3)
    assert noisy.dtype == np.int16 and noisy.shape == sp.pcm.shape
    noise = noisy.astype(np.float64) - sp.pcm
    start, end = (int(t * sp.rate / 1000) for t in (sp.speech_start_ms, sp.speech_end_ms))
    signal_power = np.mean(sp.pcm[start:end].astype(np.float64) ** 2)
    measured = 10 * np.log10(signal_power / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.3)
    lead = noisy[: int(0.4 * sp.rate)]
    assert lead.any()  # the silence is noisy too


def test_add_noise_is_seeded(sp: Speech) -> None:
    np.testing.assert_array_equal(add_noise(sp.pcm, 20, seed=7), add_noise(sp.pcm, 20, seed=7))
    assert not np.array_equal(add_noise(sp.pcm, 20, seed=7), add_noise(sp.pcm, 20, seed=8))


def test_speech_bounds_and_errors() -> None:
    pcm = np.zeros(1000, dtype=np.int16)
    pcm[100] = 5000
    pcm[199] = -5000
    assert speech_bounds(pcm, 1000) == (100.0, 200.0)
    with pytest.raises(ValueError):
        speech_bounds(np.zeros(10, dtype=np.int16), 1000)
    with pytest.raises(ValueError):
        add_noise(np.zeros(10, dtype=np.int16), 20)


@pytest.mark.parametrize(("law", "fmt"), [("ulaw", PCMU), ("pcma", PCMA), ("g711_ulaw", PCMU)])
def test_to_g711_is_8khz_telephone_audio(sp: Speech, law: str, fmt) -> None:
    data = to_g711(sp.pcm, law)
    assert isinstance(data, bytes)
    assert len(data) == pytest.approx(sp.pcm.size / 3, abs=3)  # one byte per 8 kHz sample
    decoded = fmt.decode(data)
    start, end = speech_bounds(decoded, 8000)
    assert abs(start - sp.speech_start_ms) < 10 and abs(end - sp.speech_end_ms) < 10
    reference = resample(sp.pcm, 24000, 8000).astype(np.float64)
    n = min(reference.size, decoded.size)
    error = decoded[:n] - reference[:n]
    assert 10 * np.log10(np.mean(reference**2) / np.mean(error**2)) > 30  # G.711's ~38 dB SQNR


def test_to_g711_laws_differ_and_unknown_law_is_an_error(sp: Speech) -> None:
    assert to_g711(sp.pcm, "ulaw") != to_g711(sp.pcm, "alaw")
    assert to_g711(sp.pcm, "ulaw") == PCMU.encode(resample(sp.pcm, 24000, 8000))
    lo = make_speech(TEXT, rate=16000)
    assert to_g711(lo.pcm, "alaw", rate=16000) == PCMA.encode(resample(lo.pcm, 16000, 8000))
    with pytest.raises(ValueError, match="G.711"):
        to_g711(sp.pcm, "opus")
