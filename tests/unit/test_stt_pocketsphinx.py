"""PocketSphinxSTT on real (synthetic) speech: flite's `slt` voice, which it understands best.

flite comes from Debian: `apt-get install -y flite`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from parley.audio.resample import resample
from parley.engines.errors import EngineError
from parley.engines.stt import STTEngine, Transcript, TranscriptDelta

pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
from parley.engines.stt_pocketsphinx import PocketSphinxSTT  # noqa: E402

SENTENCES = [
    "turn off the lights in the kitchen",
    "what is the weather like in paris today",
    "please set a timer for ten minutes",
    "call my mother tomorrow morning",
    "how far is the moon from the earth",
]


def flite(text: str, directory: Path) -> np.ndarray:
    """`text` spoken by flite's slt voice, as it would reach the engine: flite's WAV sent at the
    wire rate (24 kHz) and resampled to 16 kHz, with 100 ms of silence either side."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install -y flite)")
    path = directory / (text.replace(" ", "_") + ".wav")
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True, capture_output=True)
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    pcm = resample(resample(pcm, rate, 24000), 24000, 16000)
    pad = np.zeros(1600, np.int16)
    return np.concatenate([pad, pcm, pad])


def word_errors(ref: str, hyp: str) -> int:
    """Levenshtein distance between the two word sequences."""
    r, h = ref.split(), hyp.split()
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[:], i
        for j, hw in enumerate(h, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (rw != hw))
    return row[-1]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    directory = tmp_path_factory.mktemp("flite")
    return {text: flite(text, directory) for text in SENTENCES}


@pytest.fixture(scope="module")
def engine() -> PocketSphinxSTT:
    return PocketSphinxSTT()  # ~0.25 s, once; aclose() is tested on an engine of its own


async def run(engine: PocketSphinxSTT, pcm: np.ndarray, **kwargs: str | None) -> tuple[list[str], Transcript]:
    events = [ev async for ev in engine.transcribe(pcm, **kwargs)]
    final = events[-1]
    assert isinstance(final, Transcript) and all(isinstance(e, TranscriptDelta) for e in events[:-1])
    return [e.text for e in events[:-1]], final


def test_satisfies_the_interface(engine: PocketSphinxSTT) -> None:
    assert isinstance(engine, STTEngine)
    assert engine.sample_rate == 16000 and not engine.streams_partials


async def test_word_error_rate_on_flite_speech(engine: PocketSphinxSTT, speech: dict[str, np.ndarray]) -> None:
    """All five sentences at once, as five sessions would send them: they take turns on the one
    decoder.  English variants of `language` are accepted, and `prompt` is ignored."""
    languages = ["en", "en-US", None, "en_GB", None]
    start = time.perf_counter()
    results = await asyncio.gather(*(run(engine, pcm, language=lang, prompt="ignored")
                                     for pcm, lang in zip(speech.values(), languages)))  # fmt: skip
    decode_s = time.perf_counter() - start
    errors = words = 0
    for (text, pcm), (deltas, final) in zip(speech.items(), results):
        errors += word_errors(text, final.text)
        words += len(text.split())
        print(f"  {text!r} -> {final.text!r}")
        assert "".join(deltas) == final.text and len(deltas) == len(final.text.split())
        assert final.language == "en" and final.audio_seconds == pytest.approx(pcm.size / 16000)
    audio_s = sum(pcm.size for pcm in speech.values()) / 16000
    wer = errors / words
    print(f"pocketsphinx WER {wer:.1%} over {words} words; RTF {decode_s / audio_s:.2f}")
    assert wer < 0.35


async def test_silence_is_an_empty_transcript(engine: PocketSphinxSTT) -> None:
    deltas, final = await run(engine, np.zeros(4000, np.int16))
    assert deltas == [] and final.text == ""
    deltas, final = await run(engine, np.zeros(0, np.int16))
    assert deltas == [] and final.text == "" and final.audio_seconds == 0.0


async def test_other_languages_are_refused(engine: PocketSphinxSTT) -> None:
    with pytest.raises(EngineError) as info:
        await run(engine, np.zeros(1600, np.int16), language="de")
    assert info.value.code == "unsupported_language" and not info.value.retryable


async def test_cancelling_stops_the_decoder(engine: PocketSphinxSTT, speech: dict[str, np.ndarray]) -> None:
    long = np.concatenate([speech[t] for t in SENTENCES] * 8)  # ~2 min of audio: ~20 s of decoding

    async def consume() -> None:
        async for _ in engine.transcribe(long):
            pass

    pids = engine.worker_pids
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The worker stops at its next one-second slice, so the next turn is not stuck behind it,
    # and it is the same worker: aborted, not killed.
    began = time.perf_counter()
    _, final = await asyncio.wait_for(run(engine, speech[SENTENCES[3]]), 5)
    print(f"the turn after a cancelled one took {1000 * (time.perf_counter() - began):.0f} ms")
    assert "tomorrow" in final.text and engine.worker_pids == pids


async def test_closed_engine_refuses_work() -> None:
    engine = PocketSphinxSTT(word_deltas=False, options={"topn": 2})
    await engine.aclose()
    with pytest.raises(EngineError) as info:
        await run(engine, np.zeros(1600, np.int16))
    assert "closed" in info.value.message


def test_missing_model_files_are_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        PocketSphinxSTT(lm=str(tmp_path / "nope.lm.bin"))
    assert info.value.code == "model_not_found" and "nope.lm.bin" in info.value.message


def test_bad_decoder_options_are_an_engine_error() -> None:
    with pytest.raises(EngineError) as info:
        PocketSphinxSTT(options={"no_such_option": 1})
    assert info.value.code == "engine_unavailable"


async def test_decoding_does_not_stall_the_event_loop(engine: PocketSphinxSTT, speech: dict[str, np.ndarray]) -> None:
    """A 5 ms asyncio probe keeps ticking while 12 s of speech is decoded: the decoder holds the
    GIL inside `process_raw`, so it must not run in this process.  (In a thread of this process
    the probe's longest gap was 274 and 377 ms in two runs.)"""
    pcm = np.concatenate(list(speech.values()))
    await run(engine, speech[SENTENCES[0]])  # warm: the first turn of a worker is slower
    gaps: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(1000 * (time.perf_counter() - began))

    task = asyncio.create_task(probe())
    began = time.perf_counter()
    _, final = await run(engine, pcm)
    took = 1000 * (time.perf_counter() - began)
    done.set()
    await task
    print(f"transcribed {pcm.size / 16000:.1f} s in {took:.0f} ms; probe woke {len(gaps)} times, "
          f"longest gap {max(gaps):.1f} ms (5 ms asked)")
    assert "kitchen" in final.text
    assert max(gaps) < 50


def gone(pid: int) -> bool:
    """`pid` has exited and been reaped (by us: it is no longer our child, nor a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return False


async def test_a_killed_worker_fails_its_turn_and_is_replaced(speech: dict[str, np.ndarray]) -> None:
    engine = PocketSphinxSTT()
    try:
        [pid] = engine.worker_pids
        long = np.concatenate([speech[t] for t in SENTENCES] * 4)  # ~10 s of decoding
        task = asyncio.create_task(run(engine, long))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError) as info:
            await asyncio.wait_for(task, 2)
        print(f"  {info.value.message}")
        assert info.value.code == "stt_error" and info.value.retryable and "killed by signal 9" in info.value.message
        [new_pid] = engine.worker_pids
        assert new_pid != pid and gone(pid)
        _, final = await asyncio.wait_for(run(engine, speech[SENTENCES[2]]), 10)
        assert "please" in final.text  # a fresh decoder: its first turn is the least accurate
        # A worker that dies between turns is replaced before the next turn, which succeeds.
        os.kill(new_pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        _, final = await asyncio.wait_for(run(engine, speech[SENTENCES[0]]), 10)
        assert "kitchen" in final.text and gone(new_pid) and engine.worker_pids != [new_pid]
    finally:
        await engine.aclose()


async def test_a_hung_worker_fails_its_turn_in_time_and_is_replaced(speech: dict[str, np.ndarray]) -> None:
    """A worker that stops answering (here: stopped with SIGSTOP mid-turn) is killed once its
    answer is overdue, and the next turn runs on a fresh one."""
    engine = PocketSphinxSTT()
    try:
        [worker] = engine._pool._workers  # type: ignore[union-attr]
        worker.hang_base_s, worker.hang_per_audio_s = 1.0, 0.0
        [pid] = engine.worker_pids
        long = np.concatenate([speech[t] for t in SENTENCES] * 4)  # ~10 s of decoding
        task = asyncio.create_task(run(engine, long))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(EngineError) as info:
            await asyncio.wait_for(task, 5)
        waited = time.monotonic() - began
        print(f"  {info.value.message} (after {waited:.2f} s)")
        assert info.value.code == "stt_timeout" and info.value.retryable and waited < 2.0
        [new_pid] = engine.worker_pids
        assert new_pid != pid and gone(pid)
        _, final = await asyncio.wait_for(run(engine, speech[SENTENCES[0]]), 10)
        assert final.text  # the replacement decodes
    finally:
        await engine.aclose()


async def test_workers_decode_in_parallel_and_aclose_reaps_them(speech: dict[str, np.ndarray]) -> None:
    engine = PocketSphinxSTT(workers=2)
    pids = engine.worker_pids
    assert len(set(pids)) == 2
    results = await asyncio.gather(run(engine, speech[SENTENCES[0]]), run(engine, speech[SENTENCES[4]]))
    assert "kitchen" in results[0][1].text and "earth" in results[1][1].text
    # Closing while a turn runs: the turn fails at once, the workers are stopped and reaped.
    task = asyncio.create_task(run(engine, np.concatenate([speech[t] for t in SENTENCES] * 4)))
    await asyncio.sleep(0.3)
    began = time.perf_counter()
    await engine.aclose()
    with pytest.raises(EngineError) as info:
        await asyncio.wait_for(task, 2)
    print(f"aclose took {1000 * (time.perf_counter() - began):.0f} ms")
    assert info.value.code == "stt_unavailable"
    assert all(gone(pid) for pid in pids) and engine.worker_pids == []


def test_at_least_one_worker() -> None:
    with pytest.raises(EngineError):
        PocketSphinxSTT(workers=0)
