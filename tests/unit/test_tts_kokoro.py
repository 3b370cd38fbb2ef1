"""KokoroTTS through kokoro-onnx's real loading and synthesis code, on a tiny stand-in model.

`tests/support/tiny_kokoro.py` writes an ONNX graph with Kokoro v1.0's exact signature (tokens,
style, speed -> audio) that makes a tone `SAMPLES_PER_TOKEN` samples per phoneme id long, and a
voices file in the real .npz format, so lengths can be checked exactly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("kokoro_onnx", reason="pip install kokoro-onnx")
pytest.importorskip("onnx", reason="pip install onnx (builds the tiny model)")

from parley.engines.errors import EngineError  # noqa: E402
from parley.engines.speech_registry import _tts  # noqa: E402
from parley.engines.tts import OPENAI_VOICES, TTSEngine  # noqa: E402
from parley.engines.tts_kokoro import KOKORO_VOICES, KokoroTTS, _hub_spec  # noqa: E402
from tests.support.tiny_kokoro import AMPLITUDE, expected_samples, write_fixture, write_voices  # noqa: E402

SHORT = "Hello world."
LONG = "Hello world. This sentence makes the text quite a lot longer than the first one."


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kokoro")
    write_fixture(directory)
    return directory


@pytest.fixture(scope="module")
def tts(fixture_dir: Path) -> Iterator[KokoroTTS]:
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), str(fixture_dir / "voices-v1.0.bin"), end_pause_s=0)
    yield engine
    asyncio.run(engine.aclose())


async def speak(tts: KokoroTTS, text: str, voice: str = "alloy", speed: float = 1.0,
                language: str | None = None) -> np.ndarray:
    chunks = [chunk async for chunk in tts.synthesize(text, voice=voice, speed=speed, language=language)]
    assert all(len(c) % 2 == 0 and c for c in chunks)
    return np.frombuffer(b"".join(chunks), dtype="<i2")


def phoneme_ids(tts: KokoroTTS, text: str, language: str = "en-us") -> int:
    tokenizer = tts._kokoro.tokenizer
    return len(tokenizer.tokenize(tokenizer.phonemize(text, language)))


def crossings(audio: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(np.signbit(audio))))


# --- loading and synthesis -------------------------------------------------------------------


def test_loads_through_kokoro_onnx(tts: KokoroTTS) -> None:
    import kokoro_onnx

    assert isinstance(tts, TTSEngine)
    assert isinstance(tts._kokoro, kokoro_onnx.Kokoro)
    assert tts.name == "kokoro" and tts.sample_rate == 24_000
    assert set(KOKORO_VOICES) == set(OPENAI_VOICES)
    assert set(KOKORO_VOICES.values()) <= set(tts._kokoro.get_voices())


async def test_synthesizes_the_model_output_as_pcm16(tts: KokoroTTS) -> None:
    audio = await speak(tts, SHORT)
    assert len(audio) == expected_samples(phoneme_ids(tts, SHORT))  # offline phonemes -> model -> PCM
    assert abs(int(np.abs(audio).max()) - AMPLITUDE * 32767) < 200  # not silent, not clipped


async def test_length_grows_with_text_and_shrinks_with_speed(tts: KokoroTTS) -> None:
    short, long = await speak(tts, SHORT), await speak(tts, LONG)
    assert len(long) > 3 * len(short)
    fast, slow = await speak(tts, SHORT, speed=1.5), await speak(tts, SHORT, speed=0.5)
    assert len(fast) < len(short) < len(slow)
    assert len(fast) == expected_samples(phoneme_ids(tts, SHORT), 1.5)
    assert len(slow) == expected_samples(phoneme_ids(tts, SHORT), 0.5)


async def test_speed_below_kokoros_range_is_reached_by_stretching(tts: KokoroTTS) -> None:
    at_half = len(await speak(tts, SHORT, speed=0.5))  # Kokoro's own slowest
    at_quarter = len(await speak(tts, SHORT, speed=0.25))  # the API's slowest: Kokoro at 0.5, stretched 2x
    assert 1.8 < at_quarter / at_half < 2.2
    with pytest.raises(EngineError) as err:
        await speak(tts, SHORT, speed=0)
    assert err.value.code == "invalid_speed"


async def test_long_text_is_spoken_in_pieces(fixture_dir: Path) -> None:
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), None, max_chars=20, chunk_ms=20, end_pause_s=0.1)
    try:
        chunks = [c async for c in engine.synthesize(LONG, voice="alloy")]
        whole = expected_samples(phoneme_ids(engine, LONG))
    finally:
        await engine.aclose()
    assert all(len(c) <= 960 for c in chunks)
    assert len(b"".join(chunks)) // 2 > whole


@pytest.mark.parametrize("voice", OPENAI_VOICES)
async def test_every_openai_voice_speaks(tts: KokoroTTS, voice: str) -> None:
    assert len(await speak(tts, SHORT, voice=voice)) > 0


async def test_voices_differ_and_native_names_work(tts: KokoroTTS) -> None:
    heart, puck = await speak(tts, SHORT, voice="alloy"), await speak(tts, SHORT, voice="am_puck")
    assert crossings(heart) != crossings(puck)  # the style sets the tiny model's pitch
    assert np.array_equal(await speak(tts, SHORT, voice="af_heart"), heart)


async def test_british_and_spanish_voices_use_their_language(tts: KokoroTTS) -> None:
    text = "Hola, buenos dias."
    spanish = await speak(tts, text, voice="ef_dora")
    assert len(spanish) == expected_samples(phoneme_ids(tts, text, "es"))
    british = await speak(tts, SHORT, voice="ballad")
    assert len(british) == expected_samples(phoneme_ids(tts, SHORT, "en-gb"))


def test_a_language_picks_a_voice_of_that_language_and_gender(tts: KokoroTTS) -> None:
    assert tts.voice_for("alloy", None) == ("af_heart", "en-us")
    assert tts.voice_for("alloy", "en-GB") == ("af_heart", "en-us")  # already English
    assert tts.voice_for("alloy", "es") == ("ef_dora", "es")  # a Spanish female voice
    # no Spanish male voice in the fixture's file, no German voice in Kokoro: the mapped voice,
    # phonemized in that language
    assert tts.voice_for("ash", "es") == ("am_michael", "es")
    assert tts.voice_for("alloy", "de") == ("af_heart", "de")


async def test_spanish_text_is_spoken_with_spanish_phonemes(tts: KokoroTTS) -> None:
    text = "Hola, buenos dias."
    spanish = await speak(tts, text, voice="alloy", language="es")
    assert len(spanish) == expected_samples(phoneme_ids(tts, text, "es"))
    assert np.array_equal(spanish, await speak(tts, text, voice="ef_dora"))


async def test_voice_overrides(fixture_dir: Path) -> None:
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), None, voice_overrides={"alloy": "bf_emma"})
    try:
        assert engine.voices.resolve("alloy") == "bf_emma"
        assert len(await speak(engine, SHORT, voice="alloy")) > 0
    finally:
        await engine.aclose()


async def test_unknown_voice_and_punctuation(tts: KokoroTTS) -> None:
    with pytest.raises(EngineError) as err:
        await speak(tts, SHORT, voice="zz_nobody")
    assert err.value.code == "invalid_voice"
    assert len(await speak(tts, "... !")) == 0


async def test_synthesis_errors_do_not_quote_the_text(fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), None)

    def fail(text: str, **kwargs: object) -> None:
        raise ValueError(f"No phonemes of {text!r} are in the model vocabulary")

    monkeypatch.setattr(engine._kokoro, "create", fail)
    try:
        with pytest.raises(EngineError) as err:
            await speak(engine, "my secret words")
    finally:
        await engine.aclose()
    assert err.value.code == "tts_error" and not err.value.retryable
    assert "secret" not in err.value.message and err.value.__cause__ is None


# --- cancellation and concurrency ----------------------------------------------------------


def test_onnxruntime_honours_the_terminate_flag(tts: KokoroTTS) -> None:
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.terminate = True
    tts._session.run_options = options
    try:
        with pytest.raises(Exception, match="(?i)terminat"):
            tts._kokoro.create(SHORT, voice="af_heart")
    finally:
        tts._session.run_options = None


async def test_cancelling_stops_the_run_in_flight(fixture_dir: Path) -> None:
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), None)
    real = engine._session._session
    entered, terminated = threading.Event(), threading.Event()

    class SlowSession:  # a model run that lasts until onnxruntime is told to terminate it
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def run(self, names: object, feed: object, options: object = None) -> object:
            entered.set()
            for _ in range(500):
                if getattr(options, "terminate", False):
                    terminated.set()
                    raise RuntimeError("Exiting due to terminate flag being set to true.")
                threading.Event().wait(0.01)
            raise AssertionError("the run was never terminated")

    engine._session._session = SlowSession()
    try:
        task = asyncio.create_task(speak(engine, SHORT))
        assert await asyncio.to_thread(entered.wait, 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(terminated.wait, 3)
        engine._session._session = real  # the worker is free again for the next text
        assert len(await speak(engine, SHORT)) > 0
    finally:
        await engine.aclose()


async def test_concurrent_callers_take_turns(tts: KokoroTTS) -> None:
    results = await asyncio.gather(*(speak(tts, text) for text in (SHORT, LONG, SHORT)))
    assert len(results[0]) == len(results[2]) < len(results[1])


async def test_closed_engine_refuses(fixture_dir: Path) -> None:
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), None)
    await engine.aclose()
    with pytest.raises(EngineError) as err:
        await speak(engine, SHORT)
    assert err.value.code == "engine_closed"


# --- settings and files ----------------------------------------------------------------------


def test_missing_model_file_names_the_setting(tmp_path: Path, fixture_dir: Path) -> None:
    with pytest.raises(EngineError) as err:
        KokoroTTS(str(tmp_path / "kokoro-v1.0.onnx"), str(fixture_dir / "voices-v1.0.bin"))
    assert "PARLEY_TTS_MODEL" in err.value.message
    assert err.value.code == "model_not_found" and not err.value.retryable
    with pytest.raises(EngineError) as err:
        KokoroTTS("", None)
    assert "PARLEY_TTS_MODEL" in err.value.message


def test_missing_voices_file_names_its_setting(tmp_path: Path, fixture_dir: Path) -> None:
    model = fixture_dir / "kokoro-v1.0.onnx"
    with pytest.raises(EngineError) as err:
        KokoroTTS(str(model), str(tmp_path / "voices-v1.0.bin"))
    assert "PARLEY_TTS_VOICES" in err.value.message
    alone = tmp_path / "kokoro-v1.0.onnx"
    alone.write_bytes(model.read_bytes())
    with pytest.raises(EngineError) as err:
        KokoroTTS(str(alone), None)  # and no voices*.bin beside it
    assert "PARLEY_TTS_VOICES" in err.value.message


def test_broken_files_name_their_setting(tmp_path: Path, fixture_dir: Path) -> None:
    bad_model = tmp_path / "kokoro-v1.0.onnx"
    bad_model.write_bytes(b"this is not an onnx model")
    with pytest.raises(EngineError) as err:
        KokoroTTS(str(bad_model), str(fixture_dir / "voices-v1.0.bin"))
    assert "PARLEY_TTS_MODEL" in err.value.message and err.value.code == "model_load_failed"
    bad_voices = tmp_path / "voices-v1.0.bin"
    bad_voices.write_bytes(b"not an npz")
    with pytest.raises(EngineError) as err:
        KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), str(bad_voices))
    assert "PARLEY_TTS_VOICES" in err.value.message and err.value.code == "model_load_failed"


def test_a_voices_file_without_the_mapped_voices_still_loads(tmp_path: Path, fixture_dir: Path) -> None:
    voices = write_voices(tmp_path / "voices-other.bin", ["ef_dora"])
    engine = KokoroTTS(str(fixture_dir / "kokoro-v1.0.onnx"), str(voices))
    try:
        with pytest.raises(EngineError) as err:
            asyncio.run(speak(engine, SHORT, voice="alloy"))
        assert err.value.code == "invalid_voice"
        assert len(asyncio.run(speak(engine, "Hola.", voice="ef_dora"))) > 0
    finally:
        asyncio.run(engine.aclose())


def test_hub_ids_and_local_paths_are_told_apart(fixture_dir: Path) -> None:
    assert _hub_spec("fastrtc/kokoro-onnx:kokoro-v1.0.onnx", ".onnx") == ("fastrtc/kokoro-onnx", "kokoro-v1.0.onnx")
    assert _hub_spec("fastrtc/kokoro-onnx", ".onnx") == ("fastrtc/kokoro-onnx", None)
    for local in ("models/kokoro.onnx", "/models/kokoro.onnx", "./kokoro.onnx", "kokoro.onnx",
                  str(fixture_dir / "kokoro-v1.0.onnx")):  # fmt: skip
        assert _hub_spec(local, ".onnx") is None, local


def test_hub_id_offline_without_cache_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError) as err:
        KokoroTTS("fastrtc/kokoro-onnx:kokoro-v1.0.onnx", None, cache_dir=tmp_path)
    assert "PARLEY_TTS_MODEL" in err.value.message
    assert err.value.code == "model_not_found"


def test_hub_id_found_in_the_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface-hub's cache layout: models--owner--repo/{refs/main, snapshots/<commit>/<files>}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--fastrtc--kokoro-onnx"
    write_fixture(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    engine = KokoroTTS("fastrtc/kokoro-onnx:kokoro-v1.0.onnx", None, cache_dir=tmp_path)
    try:
        assert engine.model_file.name == "kokoro-v1.0.onnx" and engine.voices_file.name == "voices-v1.0.bin"
        assert commit in str(engine.model_file)
        assert len(asyncio.run(speak(engine, SHORT))) > 0
    finally:
        asyncio.run(engine.aclose())


async def test_registry_builds_it_from_settings(fixture_dir: Path) -> None:
    settings = SimpleNamespace(tts_engine="auto", tts_voice_map="alloy=am_michael", tts_base_url=None,
                               tts_model=str(fixture_dir / "kokoro-v1.0.onnx"),
                               tts_voices=str(fixture_dir / "voices-v1.0.bin"))  # fmt: skip
    engine, status = _tts(settings)
    try:
        assert isinstance(engine, KokoroTTS) and status.startswith("kokoro")
        assert engine.voices.resolve("alloy") == "am_michael"
    finally:
        await engine.aclose()
    settings.tts_model = str(fixture_dir / "missing.onnx")
    engine, status = _tts(settings)  # falls back to espeak, saying why
    assert not isinstance(engine, KokoroTTS)
    assert "PARLEY_TTS_MODEL" in status
    if engine is not None:
        await engine.aclose()
