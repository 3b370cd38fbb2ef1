"""SileroVAD: the real Silero ONNX model on onnxruntime, on flite speech (tests/support/speech)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest


from parley.audio.resample import resample  # noqa: E402
from parley.engines.errors import EngineError  # noqa: E402
from parley.engines.vad import VADEngine, VADStream  # noqa: E402
from parley.engines.vad_silero import SileroStream, SileroVAD, default_model_path  # noqa: E402
from parley.audio.formats import PCMU  # noqa: E402
from tests.support.speech import Speech, add_noise, make_speech, silence, to_g711  # noqa: E402

RATE = 16000
WINDOW_MS = 32.0
THRESHOLD = 0.5
TOLERANCE_MS = 100.0
SENTENCES = [
    "turn off the lights in the kitchen",
    "what is the weather in paris today",
    "please call my sister and tell her I will be late",
]


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module", params=SENTENCES, ids=lambda t: t.split()[0])
def speech(request: pytest.FixtureRequest) -> Speech:
    return make_speech(request.param, rate=RATE)


def probabilities(vad: SileroVAD, pcm: np.ndarray) -> np.ndarray:
    return np.array(vad.stream().process(pcm))


def detect(probs: np.ndarray, threshold: float = THRESHOLD) -> tuple[float, float]:
    """(onset, offset) in ms: the start of the first window and the end of the last window
    whose probability reaches `threshold`."""
    above = np.flatnonzero(probs >= threshold)
    assert above.size, f"no window reached {threshold}: max {probs.max():.3f}"
    return above[0] * WINDOW_MS, (above[-1] + 1) * WINDOW_MS


def windows_within(start_ms: float, end_ms: float) -> slice:
    """The windows that lie entirely inside [start_ms, end_ms]."""
    return slice(int(np.ceil(start_ms / WINDOW_MS)), int(end_ms // WINDOW_MS))


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[vad] {line}", file=sys.stderr)


# --- the engine --------------------------------------------------------------------------------


def test_is_a_vad_engine(vad: SileroVAD) -> None:
    assert isinstance(vad, VADEngine)
    assert vad.name == "silero"
    stream = vad.stream()
    assert isinstance(stream, VADStream)
    assert (stream.sample_rate, stream.window_samples) == (16000, 512)
    assert WINDOW_MS == 1000 * stream.window_samples / stream.sample_rate


def test_the_model_ships_in_parleys_own_package_data() -> None:
    import parley

    path = default_model_path()
    assert path.name == "silero_vad.onnx" and path.is_file()
    assert path.parent == Path(parley.__file__).parent / "engines" / "models"
    assert "MIT License" in (path.parent / "silero_vad.LICENSE").read_text()
    assert "torch" not in sys.modules


def test_streams_share_one_session_per_model(vad: SileroVAD) -> None:
    a, b, c = vad.stream(), vad.stream(), SileroVAD(model_path=default_model_path()).stream()
    assert a._session is b._session is c._session


def test_explicit_model_path(vad: SileroVAD, tmp_path: Path) -> None:
    copy = tmp_path / "vad.onnx"
    copy.write_bytes(default_model_path().read_bytes())
    sp = make_speech(SENTENCES[0], rate=RATE)
    probs = probabilities(SileroVAD(model_path=copy), sp.pcm)
    np.testing.assert_allclose(probs, probabilities(vad, sp.pcm), atol=1e-6)


def test_missing_model_file_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not found") as info:
        SileroVAD(model_path=tmp_path / "nope.onnx")
    assert info.value.code == "vad_unavailable"
    assert not info.value.retryable
    assert "PARLEY_VAD_MODEL" in info.value.message


def test_an_install_without_the_model_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import parley.engines.vad_silero as mod

    monkeypatch.setattr(mod, "_MODEL_FILE", "no_such_model.onnx")
    with pytest.raises(EngineError, match="PARLEY_VAD_MODEL") as info:
        SileroVAD()
    assert "pip install --force-reinstall parley" in info.value.message


def test_a_file_that_is_not_a_model_is_an_engine_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    engine = SileroVAD(model_path=junk)
    with pytest.raises(EngineError, match="cannot load the Silero VAD model.*PARLEY_VAD_MODEL"):
        engine.stream()


def test_an_onnx_model_that_is_not_silero_is_an_engine_error(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "not_silero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    other = tmp_path / "other.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(other))
    with pytest.raises(EngineError, match="not a Silero VAD.*PARLEY_VAD_MODEL"):
        SileroVAD(model_path=other).stream()


def test_rejects_unsupported_rates_and_input() -> None:
    with pytest.raises(ValueError, match="16000"):
        SileroVAD(sample_rate=24000)
    stream = SileroVAD().stream()
    with pytest.raises(TypeError, match="int16"):
        stream.process(np.zeros(512, dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        stream.process(np.zeros((2, 512), dtype=np.int16))


# --- the decisions -----------------------------------------------------------------------------


def test_one_probability_per_completed_window(vad: SileroVAD) -> None:
    stream = vad.stream()
    assert stream.process(np.zeros(0, dtype=np.int16)) == []
    assert stream.process(np.zeros(511, dtype=np.int16)) == []
    assert len(stream.process(np.zeros(1, dtype=np.int16))) == 1
    probs = stream.process(np.zeros(512 * 3 + 100, dtype=np.int16))
    assert len(probs) == 3
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probs)
    assert len(stream.process(np.zeros(412, dtype=np.int16))) == 1  # the 100 left over + 412


def test_high_in_speech_low_in_leading_silence(vad: SileroVAD, speech: Speech) -> None:
    probs = probabilities(vad, speech.pcm)
    assert len(probs) == speech.pcm.size // 512
    lead = probs[windows_within(0, speech.speech_start_ms)]
    inside = probs[windows_within(speech.speech_start_ms, speech.speech_end_ms)]
    assert lead.size >= 15 and inside.size >= 40
    assert lead.max() < 0.2, lead
    assert inside.min() > THRESHOLD, inside


def test_a_threshold_finds_onset_and_offset(vad: SileroVAD, speech: Speech,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    onset, offset = detect(probabilities(vad, speech.pcm))
    report(capsys, f"{speech.text!r}: speech {speech.speech_start_ms:.0f}-{speech.speech_end_ms:.0f} ms, "
                   f"detected {onset:.0f}-{offset:.0f} ms (onset {onset - speech.speech_start_ms:+.0f}, "
                   f"offset {offset - speech.speech_end_ms:+.0f})")
    assert abs(onset - speech.speech_start_ms) <= TOLERANCE_MS
    assert abs(offset - speech.speech_end_ms) <= TOLERANCE_MS


def test_trailing_silence_goes_back_to_low(vad: SileroVAD, speech: Speech) -> None:
    probs = probabilities(vad, speech.pcm)
    after = probs[windows_within(speech.speech_end_ms + 300, speech.duration_ms)]
    assert after.size >= 10
    assert after.max() < 0.2, after


@pytest.mark.parametrize("chunk_ms", [20, 50, 100])
def test_chunked_streaming_matches_one_call(vad: SileroVAD, speech: Speech, chunk_ms: int) -> None:
    whole = probabilities(vad, speech.pcm)
    stream = vad.stream()
    chunked: list[float] = []
    for chunk in speech.chunks(chunk_ms):
        chunked += stream.process(np.frombuffer(chunk, dtype="<i2").astype(np.int16))
    assert len(chunked) == len(whole)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_streams_are_independent(vad: SileroVAD) -> None:
    sp = make_speech(SENTENCES[0], rate=RATE)
    quiet = silence(sp.duration_ms, RATE)
    alone_speech, alone_quiet = probabilities(vad, sp.pcm), probabilities(vad, quiet)
    a, b = vad.stream(), vad.stream()
    got_a: list[float] = []
    got_b: list[float] = []
    for start in range(0, sp.pcm.size, 320):  # interleaved, 20 ms at a time
        got_a += a.process(sp.pcm[start : start + 320])
        got_b += b.process(quiet[start : start + 320])
    np.testing.assert_allclose(got_a, alone_speech, atol=1e-6)
    np.testing.assert_allclose(got_b, alone_quiet, atol=1e-6)
    assert max(got_b) < 0.2 < max(got_a)


def test_reset_forgets_everything(vad: SileroVAD) -> None:
    sp = make_speech(SENTENCES[0], rate=RATE)
    stream = vad.stream()
    stream.process(sp.pcm[: 16000 + 100])  # mid-speech, with a partial window pending
    stream.reset()
    np.testing.assert_allclose(stream.process(sp.pcm), probabilities(vad, sp.pcm), atol=1e-6)


def test_the_model_has_memory(vad: SileroVAD) -> None:
    """The same window scores differently after speech than after silence: the state is used."""
    sp = make_speech(SENTENCES[0], rate=RATE)
    end = int(sp.speech_end_ms * RATE / 1000)
    window = sp.pcm[end : end + 512]  # the first window of the trailing silence
    after_speech = vad.stream()
    after_speech.process(sp.pcm[end - 16000 : end])
    after_silence = vad.stream()
    after_silence.process(np.zeros(16000, dtype=np.int16))
    assert after_speech.process(window)[0] > after_silence.process(window)[0] + 0.3


def test_detects_onset_in_white_noise_at_20_db(vad: SileroVAD, speech: Speech,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    noisy = add_noise(speech.pcm, snr_db=20, seed=1)
    probs = probabilities(vad, noisy)
    onset, offset = detect(probs)
    lead = probs[windows_within(0, speech.speech_start_ms)]
    report(capsys, f"{speech.text!r} + noise at 20 dB: detected {onset:.0f}-{offset:.0f} ms "
                   f"(onset {onset - speech.speech_start_ms:+.0f}, offset {offset - speech.speech_end_ms:+.0f}), "
                   f"max in leading noise {lead.max():.3f}")
    assert lead.max() < THRESHOLD  # noise alone does not trigger
    assert abs(onset - speech.speech_start_ms) <= TOLERANCE_MS


def test_runs_at_8khz() -> None:
    vad8 = SileroVAD(sample_rate=8000)
    stream = vad8.stream()
    assert (stream.sample_rate, stream.window_samples) == (8000, 256)
    sp = make_speech(SENTENCES[0], rate=8000)
    onset, offset = detect(np.array(stream.process(sp.pcm)))
    assert abs(onset - sp.speech_start_ms) <= TOLERANCE_MS
    assert abs(offset - sp.speech_end_ms) <= TOLERANCE_MS


def test_24khz_wire_audio_resampled_to_16khz(vad: SileroVAD) -> None:
    """What the runtime does with the Realtime API's 24 kHz PCM."""
    sp = make_speech(SENTENCES[0], rate=24000)
    onset, offset = detect(probabilities(vad, resample(sp.pcm, 24000, RATE)))
    assert abs(onset - sp.speech_start_ms) <= TOLERANCE_MS
    assert abs(offset - sp.speech_end_ms) <= TOLERANCE_MS


def test_phone_audio_g711_at_8khz_resampled_to_16khz(vad: SileroVAD) -> None:
    """A phone bridge's path: 8 kHz µ-law decoded and resampled up to the model's rate."""
    sp = make_speech(SENTENCES[0], rate=24000)
    phone = PCMU.decode(to_g711(sp.pcm, "ulaw"))
    onset, offset = detect(probabilities(vad, resample(phone, 8000, RATE)))
    assert abs(onset - sp.speech_start_ms) <= TOLERANCE_MS
    assert abs(offset - sp.speech_end_ms) <= TOLERANCE_MS


def test_cost_per_window(vad: SileroVAD, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured and printed, not asserted (benchmarks are benchmarks)."""
    sp = make_speech(SENTENCES[0], rate=RATE)
    audio = np.tile(sp.pcm, 5)
    stream = vad.stream()
    stream.process(audio[:5120])  # warm up
    stream.reset()
    best = float("inf")
    for _ in range(3):
        stream.reset()
        started = time.perf_counter()
        n = len(stream.process(audio))
        best = min(best, (time.perf_counter() - started) / n)
    report(capsys, f"Silero cost: {best * 1e6:.0f} µs per {WINDOW_MS:.0f} ms window over {n} windows "
                   f"(real-time factor {best * 1000 / WINDOW_MS:.4f}, ~{WINDOW_MS / 1000 / best:.0f} streams per core)")
    assert n == audio.size // 512
