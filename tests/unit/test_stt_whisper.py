"""FasterWhisperSTT through its real loading path, on the tiny random Whisper in
tests/fixtures/tiny-whisper-ct2 (built by tests/fixtures/make_tiny_whisper.py).  The model's
weights are random, so it transcribes nonsense: these tests check the plumbing, not accuracy."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from parley.engines.errors import EngineError
from parley.engines.stt import STTEngine, Transcript, TranscriptDelta

pytest.importorskip("faster_whisper", reason="pip install faster-whisper")
from parley.engines.stt_whisper import FasterWhisperSTT  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-whisper-ct2"


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached


@pytest.fixture(scope="module")
def engine() -> Iterator[FasterWhisperSTT]:
    """Loaded once per module (the engine works from any event loop: its work is in threads)."""
    if not (FIXTURE / "model.bin").is_file():
        pytest.skip("run tests/fixtures/make_tiny_whisper.py to build the fixture")
    eng = FasterWhisperSTT(str(FIXTURE), threads=1, beam_size=1, temperature=0.0)
    start = time.perf_counter()
    asyncio.run(eng.load())
    print(f"tiny whisper loaded in {time.perf_counter() - start:.2f}s")
    yield eng
    asyncio.run(eng.aclose())


async def collect(engine: FasterWhisperSTT, pcm: np.ndarray, **kwargs: str | None) -> tuple[list[str], Transcript]:
    events = [ev async for ev in engine.transcribe(pcm, **kwargs)]
    final = events[-1]
    assert isinstance(final, Transcript) and all(isinstance(e, TranscriptDelta) for e in events[:-1])
    return [e.text for e in events[:-1]], final


async def test_loads_the_local_directory_and_transcribes(engine: FasterWhisperSTT) -> None:
    assert isinstance(engine, STTEngine) and engine.streams_partials and engine.sample_rate == 16000
    assert engine.loaded and engine.model_path == FIXTURE
    start = time.perf_counter()
    deltas, final = await collect(engine, noise(1.0), language="en-US", prompt="lights, kitchen")
    print(f"1 s transcribed in {time.perf_counter() - start:.2f}s: {final.text[:40]!r}")
    assert final.audio_seconds == pytest.approx(1.0) and final.language == "en"
    assert len(deltas) >= 1 and "".join(deltas).strip() == final.text


async def test_concurrent_requests_take_turns_and_empty_audio_is_empty(engine: FasterWhisperSTT) -> None:
    results = await asyncio.gather(*(collect(engine, noise(0.5, seed)) for seed in range(3)))
    assert all(final.audio_seconds == pytest.approx(0.5) for _, final in results)
    deltas, final = await collect(engine, np.zeros(0, np.int16))
    assert deltas == [] and final.text == "" and final.audio_seconds == 0.0
    with pytest.raises(EngineError) as info:
        await collect(engine, np.zeros(100, np.float32))
    assert info.value.code == "invalid_audio"


async def test_cancelling_the_consumer_leaves_the_engine_usable(engine: FasterWhisperSTT) -> None:
    async def consume() -> None:
        async for _ in engine.transcribe(noise(2.0)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, final = await asyncio.wait_for(collect(engine, noise(0.5)), 10)
    assert final.audio_seconds == pytest.approx(0.5)


async def test_missing_path_names_the_setting(tmp_path: Path) -> None:
    engine = FasterWhisperSTT(str(tmp_path / "no-such-model"))
    with pytest.raises(EngineError) as info:
        await engine.load()
    await engine.aclose()
    assert "PARLEY_STT_MODEL" in info.value.message and info.value.code == "model_not_found"
    assert not info.value.retryable


async def test_directory_without_tokenizer_is_refused(tmp_path: Path) -> None:
    if not (FIXTURE / "model.bin").is_file():
        pytest.skip("fixture not built")
    partial = tmp_path / "model"
    shutil.copytree(FIXTURE, partial)
    (partial / "tokenizer.json").unlink()
    engine = FasterWhisperSTT(str(partial))
    with pytest.raises(EngineError) as info:
        await engine.load()
    await engine.aclose()
    assert "PARLEY_STT_MODEL" in info.value.message and "tokenizer.json" in info.value.message


async def test_corrupt_model_is_an_engine_error(tmp_path: Path) -> None:
    if not (FIXTURE / "model.bin").is_file():
        pytest.skip("fixture not built")
    broken = tmp_path / "model"
    shutil.copytree(FIXTURE, broken)
    (broken / "model.bin").write_bytes(b"not a model")
    engine = FasterWhisperSTT(str(broken))
    with pytest.raises(EngineError) as info:
        await engine.load()
    await engine.aclose()
    assert info.value.code == "model_load_failed" and "PARLEY_STT_MODEL" in info.value.message


@pytest.mark.parametrize("model", ["Systran/faster-whisper-small", "small.en"])
async def test_hub_model_offline_names_the_setting(model: str, tmp_path: Path) -> None:
    engine = FasterWhisperSTT(model, cache_dir=tmp_path)
    with pytest.raises(EngineError) as info:
        await engine.load()
    await engine.aclose()
    assert "PARLEY_STT_MODEL" in info.value.message and "HF_HUB_OFFLINE" in info.value.message
    assert info.value.code == "model_not_found" and not info.value.retryable


async def test_unknown_name_is_refused_without_the_hub() -> None:
    engine = FasterWhisperSTT("not a model name")
    with pytest.raises(EngineError) as info:
        await engine.load()
    await engine.aclose()
    assert "PARLEY_STT_MODEL" in info.value.message


class _SteppedWhisper:
    """Stands in for a loaded `WhisperModel`: yields its segments one at a time, each only when
    the test releases it, so the test can see each delta arrive before the next is decoded."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.release = [threading.Event() for _ in texts]
        self.calls: list[dict[str, object]] = []

    def transcribe(self, audio: np.ndarray, **kwargs: object) -> tuple[Iterator[SimpleNamespace], SimpleNamespace]:
        self.calls.append({"seconds": audio.size / 16000, "dtype": audio.dtype, **kwargs})

        def segments() -> Iterator[SimpleNamespace]:
            for text, go in zip(self.texts, self.release):
                assert go.wait(5)
                yield SimpleNamespace(text=text)

        return segments(), SimpleNamespace(language="fr")


async def test_each_segment_is_a_delta_as_soon_as_it_is_decoded() -> None:
    engine = FasterWhisperSTT("unused", beam_size=2, temperature=0.0)
    stub = _SteppedWhisper([" Bonjour.", " Comment allez-vous ?"])
    engine._whisper = stub  # as if load() had run
    stream = engine.transcribe(noise(1.0), language="fr-FR", prompt="salut")
    stub.release[0].set()
    assert await asyncio.wait_for(anext(stream), 5) == TranscriptDelta("Bonjour.")
    stub.release[1].set()
    assert await asyncio.wait_for(anext(stream), 5) == TranscriptDelta(" Comment allez-vous ?")
    final = await asyncio.wait_for(anext(stream), 5)
    assert final == Transcript("Bonjour. Comment allez-vous ?", language="fr", audio_seconds=1.0)
    [call] = stub.calls
    assert call["language"] == "fr" and call["initial_prompt"] == "salut" and call["dtype"] == np.float32
    assert call["beam_size"] == 2 and call["temperature"] == 0.0 and call["vad_filter"] is False
    await engine.aclose()


async def test_unreachable_hub_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HF_HUB_OFFLINE, but no network either: huggingface_hub wraps the connection error."""
    from faster_whisper import utils
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args: object, **kwargs: object) -> str:
        assert kwargs["local_files_only"] is False
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from exc

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(utils, "download_model", unreachable)
    engine = FasterWhisperSTT("small.en")
    with pytest.raises(EngineError) as info:
        await engine.load()
    await engine.aclose()
    assert info.value.retryable and info.value.code == "model_unavailable"
    assert "PARLEY_STT_MODEL" in info.value.message and "could not be reached" in info.value.message
