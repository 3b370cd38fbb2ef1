"""Batched Silero VAD: one model call for many sessions' windows gives the same probabilities as
one call per window (the model, `SileroVAD.step`, and the runtime's `VadBatcher` / `VadRunner`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest


from parley.audio.resample import resample  # noqa: E402
from parley.engines.errors import EngineError  # noqa: E402
from parley.engines.vad import BatchVADEngine, BatchVADStream  # noqa: E402
from parley.engines.vad_silero import SileroStream, SileroVAD, _load_session  # noqa: E402
from parley.runtime.listening import VadRunner  # noqa: E402
from parley.runtime.load import LoopLoad  # noqa: E402
from parley.runtime.vad_batch import VadBatcher, shared_batcher  # noqa: E402
from tests.support.speech import add_noise, make_speech, silence, to_g711  # noqa: E402

RATE = 16000
SENTENCES = ["turn off the lights in the kitchen", "what is the weather in paris today"]


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Different audio per session: two sentences, one noisy, silence, and noise alone."""
    a = make_speech(SENTENCES[0], rate=RATE).pcm
    b = make_speech(SENTENCES[1], rate=RATE).pcm
    n = min(a.size, b.size)
    rng = np.random.default_rng(3)
    return [a[:n], b[:n], add_noise(a[:n], snr_db=10, seed=2), silence(1000 * n / RATE, RATE)[:n],
            (rng.standard_normal(n) * 3000).astype(np.int16)]


def alone(vad: SileroVAD, pcm: np.ndarray) -> list[float]:
    return vad.stream().process(pcm)


# --- the model ---------------------------------------------------------------------------------


def test_the_shipped_model_takes_a_batch_with_the_same_results_as_batch_1(vad: SileroVAD,
                                                                             clips: list[np.ndarray]) -> None:
    """The ONNX graph itself: input [B, 576] and state [2, B, 128]; row b of a batched call is
    what a batch-1 call with row b's input and state gives."""
    session = _load_session(vad.model_path)
    sr = np.array(RATE, dtype=np.int64)
    b = len(clips)
    windows = min(c.size for c in clips) // 512
    x = np.zeros((b, 576), np.float32)
    state = np.zeros((2, b, 128), np.float32)
    rows = [np.zeros((1, 576), np.float32) for _ in range(b)]
    states = [np.zeros((2, 1, 128), np.float32) for _ in range(b)]
    batched, single = np.zeros((windows, b)), np.zeros((windows, b))
    for w in range(windows):
        for i, clip in enumerate(clips):
            x[i, :64] = x[i, -64:]
            x[i, 64:] = clip[512 * w: 512 * (w + 1)] / 32768.0
            rows[i][0, :64] = rows[i][0, -64:]
            rows[i][0, 64:] = x[i, 64:]
        out, state = session.run(None, {"input": x, "state": state, "sr": sr})
        assert out.shape == (b, 1) and state.shape == (2, b, 128)
        batched[w] = out[:, 0]
        for i in range(b):
            o, states[i] = session.run(None, {"input": rows[i], "state": states[i], "sr": sr})
            single[w, i] = o[0, 0]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
    assert batched[:, 0].max() > 0.5 > batched[:, 3].max()  # speech vs silence: real decisions


# --- SileroVAD.step ----------------------------------------------------------------------------


def test_is_a_batch_engine(vad: SileroVAD) -> None:
    assert isinstance(vad, BatchVADEngine)
    assert isinstance(vad.stream(), BatchVADStream)


def test_step_over_many_streams_matches_each_stream_alone(vad: SileroVAD, clips: list[np.ndarray]) -> None:
    expected = [alone(vad, c) for c in clips]
    streams = [vad.stream() for _ in clips]
    got: list[list[float]] = [[] for _ in clips]
    rng = np.random.default_rng(0)
    offsets = [0] * len(clips)
    while any(o < c.size for o, c in zip(offsets, clips)):
        for i, clip in enumerate(clips):  # ragged chunks, 0-900 samples: sessions out of step
            size = int(rng.integers(0, 900))
            streams[i].feed(clip[offsets[i]: offsets[i] + size])
            offsets[i] += size
        while True:
            ready = [s for s in streams if s.waiting]
            if not ready:
                break
            for s, p in zip(ready, vad.step(ready)):
                got[streams.index(s)].append(p)
    for i in range(len(clips)):
        assert len(got[i]) == len(expected[i]) == clips[i].size // 512
        np.testing.assert_allclose(got[i], expected[i], rtol=0, atol=1e-6)


def test_feed_then_process_decides_everything_waiting(vad: SileroVAD, clips: list[np.ndarray]) -> None:
    s = vad.stream()
    assert s.feed(clips[0][:1000]) == 1 and s.waiting == 1
    assert s.feed(clips[0][1000:1100]) == 2
    probs = s.process(clips[0][1100:2048])
    assert s.waiting == 0 and len(probs) == 4
    np.testing.assert_allclose(probs, alone(vad, clips[0][:2048]), atol=1e-6)


def test_step_refuses_what_it_cannot_do(vad: SileroVAD) -> None:
    a, b = vad.stream(), vad.stream()
    a.feed(np.zeros(512, np.int16))
    assert vad.step([]) == []
    with pytest.raises(ValueError, match="waiting"):
        vad.step([a, b])
    b.feed(np.zeros(600, np.int16))
    with pytest.raises(ValueError, match="twice"):
        vad.step([a, b, a])
    other = SileroVAD(sample_rate=8000).stream()
    other.feed(np.zeros(256, np.int16))
    with pytest.raises(ValueError, match="one engine"):
        vad.step([a, other])
    assert len(vad.step([a, b])) == 2 and a.waiting == b.waiting == 0


def test_reset_after_batched_steps(vad: SileroVAD, clips: list[np.ndarray]) -> None:
    a, b = vad.stream(), vad.stream()
    a.feed(clips[0][:5000])
    b.feed(clips[1][:5000])
    while a.waiting:
        vad.step([a, b])
    a.reset()
    assert a.waiting == 0
    np.testing.assert_allclose(a.process(clips[0]), alone(vad, clips[0]), atol=1e-6)


# --- the runtime's batcher ---------------------------------------------------------------------


async def stream_sessions(batcher: VadBatcher, vad: SileroVAD, clips: Sequence[np.ndarray],
                          chunk: int) -> list[list[float]]:
    """One task per session, each feeding `chunk` samples a turn, all in step (as a burst)."""
    async def session(clip: np.ndarray) -> list[float]:
        stream, out = vad.stream(), []
        for start in range(0, clip.size, chunk):
            out += await batcher.process(stream, clip[start: start + chunk])
            await asyncio.sleep(0)
        return out

    return list(await asyncio.gather(*(session(c) for c in clips)))


@pytest.mark.parametrize("chunk", [320, 1600], ids=["20ms", "100ms"])
async def test_batcher_gives_each_session_its_own_probabilities_in_order(
        vad: SileroVAD, clips: list[np.ndarray], chunk: int) -> None:
    batcher = VadBatcher(vad)
    sessions = list(clips) * 4  # 20 sessions
    got = await stream_sessions(batcher, vad, sessions, chunk)
    for clip, probs in zip(sessions, got):
        np.testing.assert_allclose(probs, alone(vad, clip), rtol=0, atol=1e-6)
    stats = batcher.stats()
    assert stats["windows"] == sum(c.size // 512 for c in sessions)
    assert stats["windows_per_call"] > 10  # the sessions' windows did share calls
    assert max(batcher.batch_sizes) == len(sessions)


async def test_no_whole_window_returns_at_once_without_a_model_call(vad: SileroVAD) -> None:
    batcher = VadBatcher(vad)
    stream = vad.stream()
    coro = batcher.process(stream, np.zeros(300, np.int16))
    with pytest.raises(StopIteration) as done:  # finished on the first step: it never yielded
        coro.send(None)
    assert done.value.value == []
    assert batcher.stats()["calls"] == 0
    assert await batcher.process(stream, np.zeros(300, np.int16)) != []


async def test_a_session_alone_is_decided_on_the_next_loop_iteration(vad: SileroVAD) -> None:
    batcher = VadBatcher(vad)
    task = asyncio.ensure_future(batcher.process(vad.stream(), np.zeros(512, np.int16)))
    await asyncio.sleep(0)  # the task runs and waits
    await asyncio.sleep(0)  # the flush
    await asyncio.sleep(0)  # the task takes its result
    assert task.done() and len(task.result()) == 1
    assert batcher.batch_sizes == {1: 1}


async def test_while_busy_model_calls_are_spaced_and_windows_arriving_meanwhile_share_one(vad: SileroVAD) -> None:
    """At most one call per `min_interval_s` while windows keep coming: the first window after a
    quiet spell goes at once, later ones wait for the interval and share a call."""
    batcher = VadBatcher(vad, min_interval_s=0.05, load=LoopLoad(busy_above=-1.0, span_s=0))  # always busy
    loop = asyncio.get_running_loop()
    assert len(await batcher.process(vad.stream(), np.zeros(512, np.int16))) == 1  # at once
    after_first = loop.time()

    async def arrive(delay: float) -> float:
        await asyncio.sleep(delay)
        assert len(await batcher.process(vad.stream(), np.zeros(512, np.int16))) == 1
        return loop.time()

    done = await asyncio.gather(*(arrive(d) for d in (0.0, 0.01, 0.02)))
    assert batcher.batch_sizes == {1: 1, 3: 1}  # the three shared the second call
    assert min(done) - after_first >= 0.04  # which waited for the interval
    await asyncio.sleep(0.06)  # quiet again: the next window is decided at once
    before = loop.time()
    await batcher.process(vad.stream(), np.zeros(512, np.int16))
    assert loop.time() - before < 0.03


async def test_with_cpu_to_spare_every_window_is_decided_at_once(vad: SileroVAD) -> None:
    batcher = VadBatcher(vad, min_interval_s=0.05, load=LoopLoad(busy_above=2.0, span_s=0))  # never busy
    loop = asyncio.get_running_loop()
    for _ in range(3):
        before = loop.time()
        assert len(await batcher.process(vad.stream(), np.zeros(512, np.int16))) == 1
        assert loop.time() - before < 0.03
    assert batcher.batch_sizes == {1: 3}


async def test_a_model_failure_reaches_every_waiting_session(vad: SileroVAD) -> None:
    class Broken:
        name = "broken"

        def stream(self) -> SileroStream:
            return vad.stream()

        def step(self, streams: Sequence[SileroStream]) -> list[float]:
            raise EngineError("Silero VAD inference failed: boom", code="vad_failed")

    batcher = VadBatcher(Broken())  # type: ignore[arg-type]
    results = await asyncio.gather(*(batcher.process(vad.stream(), np.zeros(600, np.int16)) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, EngineError) and r.code == "vad_failed" for r in results)
    # and it still works afterwards
    batcher.engine = vad
    assert len(await batcher.process(vad.stream(), np.zeros(512, np.int16))) == 1


async def test_a_cancelled_session_does_not_break_the_others(vad: SileroVAD, clips: list[np.ndarray]) -> None:
    batcher = VadBatcher(vad)
    doomed = asyncio.ensure_future(batcher.process(vad.stream(), clips[0][:2048]))
    kept = asyncio.ensure_future(batcher.process(vad.stream(), clips[1][:2048]))
    await asyncio.sleep(0)
    doomed.cancel()
    np.testing.assert_allclose(await kept, alone(vad, clips[1][:2048]), atol=1e-6)
    assert doomed.cancelled()


async def test_one_shared_batcher_per_engine_and_loop(vad: SileroVAD) -> None:
    first = shared_batcher(vad)
    assert first is not None and first is shared_batcher(vad)
    assert shared_batcher(SileroVAD()) is not first  # another engine, another batcher
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(asyncio.run(_shared_in_new_loop(vad))))
    thread.start()
    thread.join()
    assert other[0] is not None and other[0] is not first


async def _shared_in_new_loop(vad: SileroVAD) -> VadBatcher | None:
    return shared_batcher(vad)


async def test_an_engine_that_cannot_batch_runs_inline(vad: SileroVAD) -> None:
    class OneByOne:
        name = "one-by-one"

        def stream(self) -> Any:
            return vad.stream()

    assert shared_batcher(OneByOne()) is None  # type: ignore[arg-type]
    runner = VadRunner(OneByOne())  # type: ignore[arg-type]
    result = await runner.process(np.zeros(2400, np.int16).tobytes(), {"type": "audio/pcm", "rate": 24000})
    assert len(result.probabilities) == 3 and result.window_ms == 32.0  # 100 ms: 1600 samples at 16 kHz


async def test_vad_runners_batched_match_inline_on_24khz_wire_audio(vad: SileroVAD) -> None:
    """What the session runner does: 24 kHz PCM16 appends of 20 ms, resampled to 16 kHz."""
    fmt = {"type": "audio/pcm", "rate": 24000}
    speech = [make_speech(t, rate=24000).pcm for t in SENTENCES]
    wire = [s.astype("<i2").tobytes() for s in speech]
    inline = [VadRunner(vad, batcher=None) for _ in wire]
    batched = [VadRunner(vad) for _ in wire]
    assert batched[0]._batcher is shared_batcher(vad) and inline[0]._batcher is None

    async def run(runner: VadRunner, data: bytes) -> list[float]:
        out: list[float] = []
        for start in range(0, len(data), 960):
            out += (await runner.process(data[start: start + 960], fmt)).probabilities
        return out

    want = [await run(r, d) for r, d in zip(inline, wire)]
    got = await asyncio.gather(*(run(r, d) for r, d in zip(batched, wire)))
    for w, g in zip(want, got):
        assert len(w) == len(g) > 50
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    direct = alone(vad, resample(speech[0], 24000, RATE))  # close to a whole-buffer resample
    assert abs(len(direct) - len(want[0])) <= 1


async def test_telephone_audio_is_decided_at_8khz_without_resampling(vad: SileroVAD) -> None:
    """G.711 arrives at 8 kHz, a rate Silero runs at natively: no upsampling to 16 kHz (which
    would double the model's work to decide on invented bandwidth)."""
    from parley.audio.formats import PCMU

    speech = make_speech(SENTENCES[0], rate=24000)
    wire = to_g711(speech.pcm, "ulaw")
    runner = VadRunner(vad)
    probs: list[float] = []
    for start in range(0, len(wire), 160):  # 20 ms packets, as a phone bridge sends them
        result = await runner.process(wire[start: start + 160], {"type": "audio/pcmu"})
        probs += result.probabilities
    assert runner.stream.sample_rate == 8000 and runner._resampler is None and result.window_ms == 32.0
    np.testing.assert_allclose(probs, vad.stream(8000).process(PCMU.decode(wire)), rtol=0, atol=1e-6)
    above = np.flatnonzero(np.array(probs) >= 0.5)
    assert abs(above[0] * 32.0 - speech.speech_start_ms) <= 100
    assert abs((above[-1] + 1) * 32.0 - speech.speech_end_ms) <= 100
    # back to wideband audio: a 16 kHz stream again
    await runner.process(bytes(960), {"type": "audio/pcm", "rate": 24000})
    assert runner.stream.sample_rate == 16000 and runner._resampler is not None


async def test_one_flush_decides_8_and_16_khz_streams_in_separate_calls(vad: SileroVAD,
                                                                       clips: list[np.ndarray]) -> None:
    batcher = VadBatcher(vad)
    narrow = resample(clips[0], RATE, 8000)[:4096]
    wide = clips[1][:8192]
    got = await asyncio.gather(batcher.process(vad.stream(8000), narrow), batcher.process(vad.stream(), wide),
                               batcher.process(vad.stream(8000), narrow))
    np.testing.assert_allclose(got[0], vad.stream(8000).process(narrow), atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)
    np.testing.assert_allclose(got[1], alone(vad, wide), atol=1e-6)
    assert batcher.batch_sizes == {2: 16, 1: 16}  # 16 windows each: pairs at 8 kHz, one at 16 kHz
