"""End to end with the embedded engines that run here: time to first audio, by stage.

    .venv/bin/python bench/end_to_end.py [--quick] [--sessions 1,4] [--pin]

Parley runs pocketsphinx (STT, in its worker process, PARLEY_STT_ENGINE=pocketsphinx), espeak-ng
(TTS, in process) and real Silero VAD; the LLM is the fixed-latency server of bench/fixed_engines.py
(first token, holding the whole first sentence, after 100 ms).  Callers speak flite test speech
at real-time pace (server_vad, silence 500 ms, transcription on, so the transcript event marks
the end of the STT stage at the client).

Per turn, from client timestamps (ms):
* `vad_ms`: last speech chunk sent -> `speech_stopped` (the 500 ms silence window, the VAD's
  own end delay, the resampler and the server);
* `stt_ms`: `speech_stopped` -> `input_audio_transcription.completed` (pocketsphinx);
* `llm_tts_ms`: transcript -> first `response.output_audio.delta` (the LLM's 100 ms, the text
  chunker, espeak-ng for the whole first clause, resampling and sending);
* `total_ms`: last speech chunk sent -> first audio delta.

From the server's /metrics (means over the run): `parley_stt_seconds`,
`parley_llm_first_token_seconds`, `parley_tts_first_audio_seconds` (clause -> first audio chunk
from the engine), `parley_speech_end_to_first_audio_seconds`.
By default nothing is pinned: espeak-ng's thread and the pocketsphinx worker may use both cores.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import numpy as np

from _common import (save_plot, Background, EngineServer, ParleyProc, cpu_plan, histogram_delta, machine, pct,
                     pin_self, pyplot, save)
from _load import CHUNK_MS, Clip, Conversation, counts, run_callers, voice_session
from latency import warm_up

SENTENCE = "turn off the lights in the kitchen"
LLM_MS = 100
STAGES = ("vad_ms", "stt_ms", "llm_tts_ms", "total_ms")


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.lower().split(), (hypothesis or "").lower().split()
    d = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=int)
    d[:, 0], d[0, :] = range(len(ref) + 1), range(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    return float(d[len(ref), len(hyp)] / max(len(ref), 1))


def loop_stall(clip_text: str = SENTENCE) -> dict[str, dict[str, float]]:
    """Do the embedded engines stall the event loop?  Each engine runs in this process as the
    server runs it (espeak-ng in its worker thread, pocketsphinx in its worker process), while a probe task measures how late a 5 ms sleep
    wakes up.  An engine that holds the GIL inside C code stalls every session of the server."""
    from parley.engines.stt_pocketsphinx import PocketSphinxSTT
    from parley.engines.tts_espeak import EspeakTTS
    from tests.support.speech import make_speech

    pcm = make_speech(clip_text, rate=16000).pcm
    stt, tts = PocketSphinxSTT(), EspeakTTS()
    jobs = {"pocketsphinx transcribe (2.6 s of speech)": lambda: stt.transcribe(pcm),
            "espeak-ng synthesize (one reply)": lambda: tts.synthesize(
                "Sure, the kitchen lights are off now. Is there anything else?", voice="alloy")}

    async def measure() -> dict[str, dict[str, float]]:
        out = {}
        for name, job in jobs.items():
            async for _ in job():  # warm up
                pass
            lags: list[float] = []
            stop = asyncio.Event()

            async def probe() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.005)
                    lags.append(1000 * (time.perf_counter() - t - 0.005))

            task = asyncio.create_task(probe())
            await asyncio.sleep(0.02)
            began = time.perf_counter()
            async for _ in job():
                pass
            took = 1000 * (time.perf_counter() - began)
            stop.set()
            await task
            out[name] = {"took_ms": round(took, 1), "loop_lag_max_ms": round(max(lags), 1),
                         "loop_lag_p50_ms": round(float(np.percentile(lags, 50)), 1),
                         "probe_wakeups": len(lags), "wakeups_if_free": int(took / 5.1)}
        await stt.aclose()
        await tts.aclose()
        return out

    return asyncio.run(measure())


def run_one(n: int, turns: int, engines: EngineServer, clip: Clip, server_cpus: set[int] | None) -> dict:
    env = {"PARLEY_LLM_BASE_URL": engines.base_url, "PARLEY_LLM_MODEL": "bench",
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak"}
    server = ParleyProc(env, cpus=server_cpus, name=f"e2e-n{n}", timeout_s=120)
    session = voice_session(500)
    session["audio"]["input"]["transcription"] = {"model": "pocketsphinx"}
    try:
        warm_up(server, clip)
        marks: dict = {}

        def steady(_t: float) -> None:
            server.lag()
            marks["metrics"] = server.metrics()
            marks["background"] = Background([server.pid, engines.pid])

        def ended() -> None:
            marks["lag"], marks["metrics_end"] = server.lag(), server.metrics()
            marks["background_pct"] = marks["background"].percent()

        result = asyncio.run(run_callers(
            server.ws_url, n, lambda i: Conversation(turns, lead_s=(0.5, 0.5 + n * 0.4), rng=random.Random(i)), clip,
            budget_s=20 + 10 * turns, session=session, on_steady=steady, before_close=ended))
        stages: dict[str, list[float]] = {k: [] for k in STAGES}
        errors: list[float] = []
        for c in result.callers:
            for t in c.turns:
                last = int(np.ceil(t.speech_end_ms / CHUNK_MS)) - 1
                done = t.times.get("conversation.item.input_audio_transcription.completed")
                if t.stopped_at is None or done is None or t.first_audio_at is None or last >= len(c.sent_at):
                    continue
                spoke = c.sent_at[last]
                stages["vad_ms"].append(1000 * (t.stopped_at - spoke))
                stages["stt_ms"].append(1000 * (done - t.stopped_at))
                stages["llm_tts_ms"].append(1000 * (t.first_audio_at - done))
                stages["total_ms"].append(1000 * (t.first_audio_at - spoke))
                errors.append(wer(SENTENCE, t.transcript or ""))
        before, after = marks["metrics"], marks["metrics_end"]
        return {
            "sessions": n, **counts(result),
            "client_stages_ms": {k: pct(v) for k, v in stages.items()},
            "server_stage_means_ms": {name: histogram_delta(before, after, f"parley_{name}_seconds")["mean_ms"]
                                      for name in ("stt", "llm_first_token", "tts_first_audio",
                                                   "speech_end_to_first_audio")},
            "word_error_rate_mean": round(float(np.mean(errors)), 3) if errors else None,
            "server_loop_lag_ms": marks["lag"], "client_loop_lag_ms": pct(result.client_lag_ms),
            "other_processes_cpu_percent": marks["background_pct"],
        }
    finally:
        server.stop()


def plot(runs: list[dict], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.8 * len(runs)))
    colors = {"vad_ms": "#8da0cb", "stt_ms": "#fc8d62", "llm_tts_ms": "#66c2a5"}
    names = {"vad_ms": "end of speech → speech_stopped (incl. 500 ms silence)",
             "stt_ms": "STT (pocketsphinx)", "llm_tts_ms": "LLM 100 ms + espeak first clause + send"}
    for i, r in enumerate(runs):
        left = 0.0
        for key in ("vad_ms", "stt_ms", "llm_tts_ms"):
            w = r["client_stages_ms"][key]["p50"] or 0.0
            ax.barh(i, w, left=left, color=colors[key], label=names[key] if i == 0 else None)
            ax.text(left + w / 2, i, f"{w:.0f}", ha="center", va="center", fontsize=8)
            left += w
    ax.set_yticks(range(len(runs)), [f"N={r['sessions']}" for r in runs])
    ax.set_xlabel("ms from the last speech chunk sent to the first audio delta (p50 of each stage)")
    ax.set_title("End to end with embedded engines (pocketsphinx, espeak-ng, Silero; LLM fixed 100 ms)", fontsize=10)
    fig.legend(fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one caller, one turn")
    parser.add_argument("--sessions", default=None)
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--pin", action="store_true", help="pin the server to one core")
    args = parser.parse_args()
    ns = [int(x) for x in args.sessions.split(",")] if args.sessions else ([1] if args.quick else [1, 4])
    server_cpus, client_cpus = cpu_plan(args.pin)
    pin_self(client_cpus)
    began = time.monotonic()
    clip = Clip.make(SENTENCE)
    engines = EngineServer(llm_ms=LLM_MS, cpus=client_cpus, name="e2e-engines")
    try:
        stall = loop_stall()
        runs = [run_one(n, args.turns or (1 if args.quick else 8 if n == 1 else 3), engines, clip, server_cpus)
                for n in ns]
    finally:
        engines.stop()
    name = "end_to_end-quick" if args.quick else "end_to_end"
    plot_ref = save_plot(name, lambda path: plot(runs, path))
    save(name, {"benchmark": "end_to_end", "quick": args.quick, "machine": machine(),
                "setup": {"stt": "pocketsphinx (embedded)", "tts": "espeak-ng (embedded)", "vad": "silero",
                          "llm": f"fixed-latency remote, first token {LLM_MS} ms", "silence_duration_ms": 500,
                          "pinned": server_cpus is not None},
                "runs": runs, "engine_loop_stall": stall, "plot": plot_ref, "elapsed_s": round(time.monotonic() - began, 1)})


if __name__ == "__main__":
    main()
