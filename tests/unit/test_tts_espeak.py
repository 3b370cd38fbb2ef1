"""EspeakTTS: real espeak-ng synthesis in process, and the voice map of engines/tts.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from parley.engines.errors import EngineError
from parley.engines.tts import OPENAI_VOICES, TTSEngine, VoiceMap
from parley.engines.tts_espeak import ESPEAK_VOICES, EspeakTTS, _Espeak, split_text, speed_to_rate

SENTENCE = "Hello world, this is a test."
LONG = " ".join(["This sentence is here to make the text long enough to take a while."] * 30)


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


async def speak(tts: EspeakTTS, text: str, voice: str = "alloy", speed: float = 1.0,
                language: str | None = None) -> np.ndarray:
    chunks = [chunk async for chunk in tts.synthesize(text, voice=voice, speed=speed, language=language)]
    assert all(len(c) % 2 == 0 for c in chunks)
    return np.frombuffer(b"".join(chunks), dtype="<i2")


def test_is_a_tts_engine(tts: EspeakTTS) -> None:
    assert isinstance(tts, TTSEngine)
    assert tts.name == "espeak"
    assert tts.sample_rate == 22050


async def test_synthesizes_plausible_speech(tts: EspeakTTS) -> None:
    audio = await speak(tts, SENTENCE)
    assert audio.dtype == np.int16
    seconds = len(audio) / tts.sample_rate
    assert 0.8 <= seconds <= 4.0
    assert np.abs(audio).max() > 5000
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    assert rms > 500


async def test_yields_chunks_of_the_configured_size() -> None:
    tts = EspeakTTS(chunk_ms=20)
    chunks = [c async for c in tts.synthesize(SENTENCE, voice="alloy")]
    assert len(chunks) > 10
    assert all(len(c) == 441 * 2 for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 441 * 2


async def test_speed_changes_duration(tts: EspeakTTS) -> None:
    fast = await speak(tts, SENTENCE, speed=1.5)
    normal = await speak(tts, SENTENCE, speed=1.0)
    slow = await speak(tts, SENTENCE, speed=0.75)
    assert len(fast) < len(normal) < len(slow)
    assert len(slow) / len(fast) > 1.5


def test_speed_to_rate() -> None:
    assert speed_to_rate(1.0) == (175, 1.0)
    assert speed_to_rate(1.5) == (262, 1.0)
    rate, rest = speed_to_rate(0.25)  # espeak's minimum, and the rest by time-stretching
    assert rate == 80 and rest == pytest.approx(0.25 / (80 / 175))
    assert speed_to_rate(4.0) == (450, pytest.approx(4.0 / (450 / 175)))  # and maximum
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(EngineError) as err:
            speed_to_rate(bad)
        assert err.value.code == "invalid_speed"


@pytest.mark.parametrize("voice", OPENAI_VOICES)
async def test_every_openai_voice_speaks(tts: EspeakTTS, voice: str) -> None:
    audio = await speak(tts, SENTENCE, voice=voice)
    assert 0.8 <= len(audio) / tts.sample_rate <= 4.0
    assert np.abs(audio).max() > 5000


async def test_voices_differ(tts: EspeakTTS) -> None:
    female = await speak(tts, SENTENCE, voice="shimmer")
    male = await speak(tts, SENTENCE, voice="cedar")
    assert not np.array_equal(female, male)


async def test_native_voice_names_and_unknown_voice(tts: EspeakTTS) -> None:
    audio = await speak(tts, SENTENCE, voice="en-us+m2")
    assert len(audio) > 0
    with pytest.raises(EngineError) as err:
        await speak(tts, SENTENCE, voice="no-such-voice")
    assert err.value.code == "invalid_voice"
    assert len(await speak(tts, SENTENCE, voice="alloy")) > 0  # still usable afterwards


async def test_voice_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    tts = EspeakTTS(voice_overrides={"alloy": "en-us+m1"})
    assert tts.voices.resolve("alloy") == "en-us+m1"
    assert tts.voices.resolve("echo") == ESPEAK_VOICES["echo"]
    used: list[str] = []
    real_synth = tts._native.synth

    def spy(text, voice, *args):
        used.append(voice)
        return real_synth(text, voice, *args)

    monkeypatch.setattr(tts._native, "synth", spy)
    assert len(await speak(tts, SENTENCE, voice="alloy")) > 0
    assert len(await speak(tts, SENTENCE, voice="echo")) > 0
    assert used == ["en-us+m1", ESPEAK_VOICES["echo"]]


def test_voice_map() -> None:
    vm = VoiceMap({v: f"native-{v}" for v in OPENAI_VOICES}, {"ash": "x"})
    assert vm.resolve("alloy") == "native-alloy"
    assert vm.resolve("ash") == "x"
    assert vm.resolve("something-else") == "something-else"
    assert vm.with_overrides({"alloy": "y"}).resolve("alloy") == "y"
    assert vm.with_overrides({"alloy": "y"}).resolve("ash") == "x"
    with pytest.raises(ValueError):
        VoiceMap({"alloy": "a"})
    with pytest.raises(TypeError):
        vm.defaults["alloy"] = "z"  # type: ignore[index]


async def test_empty_text_yields_nothing(tts: EspeakTTS) -> None:
    assert len(await speak(tts, "")) == 0
    assert len(await speak(tts, "   \n ")) == 0


async def test_long_text_is_split_and_streams(tts: EspeakTTS) -> None:
    pieces = split_text(LONG, max_chars=300)
    assert len(pieces) > 3
    assert all(len(p) <= 300 for p in pieces)
    assert " ".join(pieces) == LONG
    audio = await speak(tts, LONG)
    assert len(audio) / tts.sample_rate > 30


def test_split_text_cuts_overlong_sentences_at_spaces() -> None:
    text = "word " * 200
    pieces = split_text(text, max_chars=50)
    assert all(0 < len(p) <= 50 for p in pieces)
    assert " ".join(pieces).split() == text.split()
    assert split_text("One. Two! Three?", max_chars=5) == ["One.", "Two!", "Three?"]
    assert split_text("Supercalifragilistic is long", max_chars=5) == [
        "Supercalifragilistic",
        "is",
        "long",
    ]
    assert split_text("One. Two! Three?") == ["One. Two! Three?"]


def close_in_length(a: np.ndarray, b: np.ndarray) -> bool:
    # espeak carries a little state from one utterance to the next, so repeated syntheses
    # differ by a few samples; a wrong voice, speed or mixed-up audio differs by far more.
    return abs(len(a) - len(b)) <= 0.03 * len(b)


async def test_concurrent_synthesis_from_two_tasks(tts: EspeakTTS) -> None:
    other = "A different sentence, in another voice, rather longer than the first one."
    alone_a = await speak(tts, SENTENCE, voice="alloy", speed=1.5)
    alone_b = await speak(tts, other, voice="echo", speed=0.75)
    for _ in range(3):
        a, b = await asyncio.gather(
            speak(tts, SENTENCE, voice="alloy", speed=1.5),
            speak(tts, other, voice="echo", speed=0.75),
        )
        assert close_in_length(a, alone_a)
        assert close_in_length(b, alone_b)


async def test_concurrent_long_texts_interleave(tts: EspeakTTS) -> None:
    results = await asyncio.gather(*(speak(tts, LONG, voice=v) for v in ("alloy", "echo", "sage")))
    assert all(len(r) / tts.sample_rate > 30 for r in results)


async def test_event_loop_keeps_running_during_synthesis(tts: EspeakTTS) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await speak(tts, LONG)
    task.cancel()
    assert ticks > len(split_text(LONG))


async def test_cancelling_the_consumer_stops_and_frees_the_engine(tts: EspeakTTS) -> None:
    got_first = asyncio.Event()
    chunks: list[bytes] = []

    async def consume() -> None:
        async for chunk in tts.synthesize(LONG, voice="alloy"):
            chunks.append(chunk)
            got_first.set()
            await asyncio.sleep(0.01)  # a consumer pacing playout

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < len(chunks) < 20
    # The lock was released: the next synthesis works at once.
    assert len(await asyncio.wait_for(speak(tts, SENTENCE), 5)) > 0


async def test_closing_the_iterator_early(tts: EspeakTTS) -> None:
    stream = tts.synthesize(LONG, voice="alloy")
    first = await stream.__anext__()
    assert len(first) > 0
    await stream.aclose()
    assert len(await speak(tts, SENTENCE)) > 0


async def test_cancel_while_waiting_for_the_worker(tts: EspeakTTS) -> None:
    # Cancel while the synthesis thread may still be running: it must stop and let go.
    for _ in range(5):
        task = asyncio.create_task(speak(tts, LONG))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(await asyncio.wait_for(speak(tts, SENTENCE), 5)) > 0


class _SetAfter:
    """An abort flag that turns itself on after `n` checks (one check per espeak buffer)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_abort_stops_espeak_mid_synthesis(tts: EspeakTTS) -> None:
    native = _Espeak.get()
    text = " ".join(["A long single piece of text without any sentence ends"] * 20)
    full = native.synth(text, "en-us", 175, True, threading.Event())
    partial = native.synth(text, "en-us", 175, True, _SetAfter(5))  # type: ignore[arg-type]
    assert len(full) / 2 / native.sample_rate > 20
    assert 0 < len(partial) < len(full) / 10
    again = native.synth(text, "en-us", 175, True, threading.Event())
    assert abs(len(again) - len(full)) <= 0.03 * len(full)  # espeak is left in a usable state


async def test_closed_engine_refuses() -> None:
    tts = EspeakTTS()
    await tts.aclose()
    with pytest.raises(EngineError) as err:
        await speak(tts, SENTENCE)
    assert err.value.code == "engine_closed"


def test_missing_library_is_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import parley.engines.tts_espeak as mod

    monkeypatch.setattr(mod, "_find_library", lambda: ("/nonexistent/libespeak-ng.so.1", None))
    with pytest.raises(EngineError) as err:
        mod._Espeak()
    assert err.value.code == "engine_unavailable"


def _pitch_hz(audio: np.ndarray, rate: int) -> float:
    """Median fundamental of the voiced 40 ms frames (autocorrelation, 70-400 Hz)."""
    frame, found = int(rate * 0.04), []
    x = audio.astype(np.float64)
    for start in range(0, len(x) - frame, frame):
        f = x[start:start + frame]
        if np.sqrt(np.mean(f ** 2)) < 1000:
            continue
        ac = np.correlate(f, f, "full")[frame - 1:]
        lo, hi = rate // 400, rate // 70
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            found.append(rate / lag)
    return float(np.median(found))


async def test_the_slowest_api_speed_is_reached_by_stretching_at_the_same_pitch(tts: EspeakTTS) -> None:
    normal = await speak(tts, SENTENCE, speed=1.0)
    slowest = await speak(tts, SENTENCE, speed=0.25)
    ratio = len(slowest) / len(normal)
    pitch_normal, pitch_slow = _pitch_hz(normal, tts.sample_rate), _pitch_hz(slowest, tts.sample_rate)
    print(f"\nspeed 0.25: {ratio:.2f}x as long; pitch {pitch_normal:.0f} Hz -> {pitch_slow:.0f} Hz")
    assert 3.0 < ratio < 5.0  # espeak alone stops at 80 wpm (about 2.2x as long)
    assert abs(pitch_slow - pitch_normal) / pitch_normal < 0.12


def test_voice_in_language_keeps_the_variant() -> None:
    from parley.engines.tts_espeak import voice_in_language

    assert voice_in_language("en-us+f3", None) == "en-us+f3"
    assert voice_in_language("en-us+f3", "en") == "en-us+f3"
    assert voice_in_language("en-us+f3", "es") == "es+f3"
    assert voice_in_language("en-us+m3", "de-AT") == "de+m3"
    assert voice_in_language("en-us+f3", "pt-BR") == "pt-br+f3"
    assert voice_in_language("en-us+f3", "zh") == "cmn+f3"
    assert voice_in_language("en-gb-x-rp+m2", "en-US") == "en-gb-x-rp+m2"  # already English


@pytest.mark.parametrize("language,text", [("es", "Hola, ¿cómo estás? Las luces de la cocina están apagadas."),
                                           ("de", "Guten Tag. Das Licht in der Küche ist jetzt aus.")])
async def test_other_languages_are_spoken_in_their_own_voice(tts: EspeakTTS, language: str, text: str) -> None:
    own = await speak(tts, text, voice="alloy", language=language)
    english = await speak(tts, text, voice="alloy")
    assert 1.0 < len(own) / tts.sample_rate < 8.0 and np.abs(own).max() > 5000
    assert not np.array_equal(own, english)  # another voice (language rules), not English rules
