"""Micro-benchmarks of the per-chunk hot paths, in one process, no server.

    .venv/bin/python bench/micro.py [--quick]

Each case runs in a loop for a fixed time after a warm-up; the figure is the median over
`repeats` rounds of the mean time per call (µs).  The last section adds up what one 20 ms
chunk of caller audio costs the server on the way in (parse, base64, PCM decode, resample,
VAD) and what that means in sessions per core, for the inbound path alone.

The VAD is timed the way the server runs it: one window alone (`SileroStream.process`), and
batched, as `SileroVAD.step` over B streams (one model call, per-stream bookkeeping included)
and as B sessions' `VadBatcher.process` in an asyncio loop (futures and scheduling included).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _common import save_plot, machine, pyplot, save

RATE = 24000
CHUNK = RATE // 50  # 20 ms


def bench(fn: Callable[[], Any], seconds: float, repeats: int) -> dict[str, float]:
    for _ in range(50):
        fn()
    rounds = []
    for _ in range(repeats):
        n, began = 0, time.perf_counter()
        deadline = began + seconds / repeats
        while True:
            for _ in range(20):
                fn()
            n += 20
            now = time.perf_counter()
            if now >= deadline:
                break
        rounds.append((now - began) / n * 1e6)
    us = statistics.median(rounds)
    return {"us_per_call": round(us, 2), "calls_per_s": round(1e6 / us), "spread_us": round(max(rounds) - min(rounds), 2)}


def speech_pcm(seconds: float = 2.0) -> np.ndarray:
    try:
        from tests.support.speech import make_speech

        return make_speech("turn off the lights in the kitchen", lead_ms=0, tail_ms=0, rate=RATE).pcm
    except Exception:  # noqa: BLE001 - flite missing: a chirp will do for timing
        t = np.arange(int(RATE * seconds)) / RATE
        return (8000 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.int16)


def cases() -> dict[str, Callable[[], Any]]:
    from parley.audio.formats import PCM16, PCMA, PCMU
    from parley.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
    from parley.audio.resample import StreamResampler, resample
    from parley.engines.vad_silero import SileroVAD
    from parley.protocol.client_events import parse_client_event

    pcm = speech_pcm()
    chunk = pcm[RATE // 2: RATE // 2 + CHUNK].copy()  # 20 ms of speech
    raw = chunk.astype("<i2").tobytes()
    b64 = base64.b64encode(raw).decode()
    append = json.dumps({"event_id": "event_123", "type": "input_audio_buffer.append", "audio": b64})
    delta_pcm = pcm[: RATE // 5].astype("<i2").tobytes()  # 200 ms: the pipeline's audio delta
    delta_event = {"event_id": "event_CpTAMJqXYTkTu0eF3m8Wj", "type": "response.output_audio.delta",
                   "response_id": "resp_CpTAMJqXYTkTu0eF3m8Wk", "item_id": "item_CpTAMJqXYTkTu0eF3m8Wl",
                   "output_index": 0, "content_index": 0, "delta": base64.b64encode(delta_pcm).decode()}
    small_event = {"event_id": "event_CpTAMJqXYTkTu0eF3m8Wj", "type": "input_audio_buffer.speech_started",
                   "audio_start_ms": 1234, "item_id": "item_CpTAMJqXYTkTu0eF3m8Wl"}
    from parley.runtime.listening import VAD_RESAMPLE_QUALITY

    resampler = StreamResampler(RATE, 16000, quality=VAD_RESAMPLE_QUALITY)
    hq_resampler = StreamResampler(RATE, 16000)
    down8k = resample(chunk, RATE, 8000)
    ulaw, alaw = ulaw_encode(down8k), alaw_encode(down8k)
    vad_stream = SileroVAD().stream()
    pcm16k = resample(pcm, RATE, 16000)
    window = pcm16k[8000:8512].copy()
    g711_resampler = StreamResampler(RATE, 8000)

    def dumps(ev: dict[str, Any]) -> Callable[[], str]:
        return lambda: json.dumps(ev, separators=(",", ":"), ensure_ascii=False)

    return {
        "parse_client_event (append, 20 ms audio)": lambda: parse_client_event(append, "ga"),
        "json.loads (append, 20 ms audio)": lambda: json.loads(append),
        "json.dumps server event (speech_started)": dumps(small_event),
        "json.dumps server event (audio delta, 200 ms)": dumps(delta_event),
        "base64 encode 20 ms PCM16 (960 B)": lambda: base64.b64encode(raw),
        "base64 decode 20 ms PCM16 (1280 chars)": lambda: base64.b64decode(b64),
        "PCM16 bytes -> int16 (AudioFormat decode)": lambda: PCM16.decode(raw),
        f"resample 20 ms 24k->16k ({VAD_RESAMPLE_QUALITY}, the VAD's StreamResampler.push)": lambda: resampler.push(chunk),
        "resample 20 ms 24k->16k (HQ StreamResampler.push)": lambda: hq_resampler.push(chunk),
        "resample 20 ms 24k->8k (StreamResampler.push)": lambda: g711_resampler.push(chunk),
        "G.711 µ-law encode 20 ms (160 samples)": lambda: ulaw_encode(down8k),
        "G.711 µ-law decode 20 ms": lambda: ulaw_decode(ulaw),
        "G.711 A-law encode 20 ms": lambda: alaw_encode(down8k),
        "G.711 A-law decode 20 ms": lambda: alaw_decode(alaw),
        "PCMU AudioFormat encode 20 ms": lambda: PCMU.encode(down8k),
        "PCMA AudioFormat decode 20 ms": lambda: PCMA.decode(alaw),
        "Silero VAD, one 32 ms window (512 samples)": lambda: vad_stream.process(window),
    }


def resampler_delay_ms() -> dict[str, float]:
    """How late the VAD's streaming 24k->16k resampler releases audio (the VAD sees it that late)."""
    from parley.audio.resample import StreamResampler
    from parley.runtime.listening import VAD_RESAMPLE_QUALITY

    rs = StreamResampler(RATE, 16000, quality=VAD_RESAMPLE_QUALITY)
    zero = np.zeros(CHUNK, np.int16)
    out, lags = 0, []
    for k in range(2000):
        out += rs.push(zero).size
        lags.append((320 * (k + 1) - out) / 16)
    return {"mean": round(float(np.mean(lags[10:])), 1), "min": round(float(np.min(lags[10:])), 1),
            "max": round(float(np.max(lags[10:])), 1)}


def batched_vad(quick: bool) -> dict[str, Any]:
    """Silero per window at batch sizes B: the model alone (one onnxruntime call for B windows),
    `SileroVAD.step` over B streams (what the batcher calls), and B sessions going through a
    `VadBatcher` in an asyncio loop (futures, call_soon, and the step)."""
    import asyncio

    from parley.engines.vad_silero import SileroVAD, _load_session
    from parley.runtime.vad_batch import VadBatcher

    engine = SileroVAD()
    session = _load_session(engine.model_path)
    sr = np.array(16000, dtype=np.int64)
    rng = np.random.default_rng(0)
    seconds, repeats = (0.3, 3) if quick else (1.5, 5)
    out: dict[str, Any] = {}
    for batch in (1, 8, 32, 100):
        x = (rng.standard_normal((batch, 576)) * 0.1).astype(np.float32)
        state = np.zeros((2, batch, 128), np.float32)
        model = bench(lambda: session.run(None, {"input": x, "state": state, "sr": sr}), seconds, repeats)
        streams = [engine.stream() for _ in range(batch)]
        window = (rng.standard_normal(512) * 3000).astype(np.int16)

        def step() -> None:
            for s in streams:
                s.feed(window)
            engine.step(streams)

        stepped = bench(step, seconds, repeats)
        # the batching machinery's own cost: without the 5 ms spacing a busy loop gets (this
        # loop does nothing else, so it would count as busy and wait 5 ms for every call)
        batcher = VadBatcher(engine, min_interval_s=0.0)
        sessions = [engine.stream() for _ in range(batch)]

        async def rounds(k: int) -> float:
            """B session tasks, each deciding k windows in turn (as the runners do)."""
            async def session(s: Any) -> None:
                for _ in range(k):
                    await batcher.process(s, window)

            began = time.perf_counter()
            await asyncio.gather(*(session(s) for s in sessions))
            return time.perf_counter() - began

        k = max(20, int(2000 / batch))
        asyncio.run(rounds(k))  # warm up
        runs = [asyncio.run(rounds(k)) for _ in range(repeats)]
        loop_us = statistics.median(runs) / k * 1e6
        out[f"batch_{batch}"] = {
            "model_us_per_call": model["us_per_call"], "model_us_per_window": round(model["us_per_call"] / batch, 1),
            "step_us_per_window": round(stepped["us_per_call"] / batch, 1),
            "batcher_in_asyncio_us_per_window": round(loop_us / batch, 1),
            "windows_per_call_seen": batcher.stats()["windows_per_call"]}
    return out


def plot(results: dict[str, dict[str, float]], path: str) -> None:
    plt = pyplot()
    names = list(results)
    values = [results[n]["us_per_call"] for n in names]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) + 1.2))
    ax.barh(range(len(names)), values, color="#4c72b0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for i, v in enumerate(values):
        ax.text(v * 1.05, i, f"{v:.1f} µs", va="center", fontsize=7)
    ax.set_xlabel("µs per call (log scale)")
    ax.set_title("Hot paths, per call (one core)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.2 s per case")
    parser.add_argument("--seconds", type=float, default=None, help="time per case")
    args = parser.parse_args()
    seconds = args.seconds or (0.2 if args.quick else 2.0)
    repeats = 3 if args.quick else 7
    began = time.monotonic()
    results = {name: bench(fn, seconds, repeats) for name, fn in cases().items()}
    us = {k: v["us_per_call"] for k, v in results.items()}
    resample_us = next(v for k, v in us.items() if k.startswith("resample 20 ms 24k->16k (") and "VAD" in k)
    inbound = (us["parse_client_event (append, 20 ms audio)"] + us["PCM16 bytes -> int16 (AudioFormat decode)"]
               + resample_us + us["Silero VAD, one 32 ms window (512 samples)"] * 20 / 32)
    per_core = 20_000 / inbound
    batched = batched_vad(args.quick)
    vad_32 = batched["batch_32"]["batcher_in_asyncio_us_per_window"]
    inbound_batched = inbound - us["Silero VAD, one 32 ms window (512 samples)"] * 20 / 32 + vad_32 * 20 / 32
    name = "micro-quick" if args.quick else "micro"
    plot_ref = save_plot(name, lambda path: plot(results, path))
    save(name, {
        "benchmark": "micro", "quick": args.quick, "machine": machine(), "seconds_per_case": seconds,
        "results": results,
        "inbound_per_20ms_chunk": {
            "us": round(inbound, 1),
            "parts": "parse_client_event (incl. base64 check) + PCM decode + resample 24k->16k + 20/32 of a VAD window",
            "cpu_percent_of_core_per_session": round(100 * inbound / 20_000, 2),
            "sessions_per_core_inbound_only": round(per_core),
            "us_with_vad_batched_32": round(inbound_batched, 1),
            "sessions_per_core_inbound_only_batched_32": round(20_000 / inbound_batched)},
        "resampler_24k_to_16k_delay_ms": resampler_delay_ms(),
        "batched_vad": batched,
        "plot": plot_ref, "elapsed_s": round(time.monotonic() - began, 1)})


if __name__ == "__main__":
    main()
