"""Barge-in: from the onset of the caller's speech to the cancelled `response.done`, and to the
last audio delta of the cancelled response.

    .venv/bin/python bench/barge_in.py [--quick] [--sessions 1,10,50] [--no-pin]

Callers (server_vad with interrupt_response, real Silero VAD) ask something; the answer is long
and streams sentence by sentence (the fixed-latency LLM sends one sentence every 400 ms, the TTS
answers each in 50 ms).  0.2-1.0 s after the answer's first audio delta the caller starts
speaking again, over it.  Per barge-in, in ms:

* `to_done_ms`: from the moment the chunk holding the first speech sample (flite speech, -50 dBFS
  threshold) was sent to the cancelled `response.done` at the caller;
* `to_last_audio_ms`: from the same moment to the last `response.output_audio.delta` of the
  cancelled response (negative when its last audio had arrived before the caller spoke: the
  server sends each clause's audio as soon as it is synthesised, faster than real time, so a
  WebSocket client must drop what it has buffered, as with the hosted API);
* `vad_onset_delay_ms`: how much audio the VAD needed (audio time): its decision point
  (`audio_start_ms` + prefix padding + the 64 ms of speech it requires) minus the true onset;
* `beyond_vad_ms`: `to_done_ms - vad_onset_delay_ms`, the issue's measure (target: at most
  30 ms).  It holds the 20 ms packetisation of the caller's audio, the delay of the server's
  streaming resampler (24 -> 16 kHz for the VAD; soxr's QQ quality, ~0.1 ms late)
  and the server's processing;
* `audio_wait_ms`: from the onset chunk to the chunk that completed the VAD's decision (real
  time the decision had to wait for audio: VAD delay + packetisation + resampler delay);
* `server_ms`: from the chunk that completed the VAD's decision to the cancelled
  `response.done`: the server's processing and the loopback network only;
* `audio_after_speech_started`: audio deltas of the cancelled response that arrived after
  `speech_started` (should be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time


from _common import save_plot, Background, EngineServer, ParleyProc, cpu_plan, machine, pct, pin_self, pyplot, save
from _load import CHUNK_MS, BargeIn, Clip, RunResult, VadClock, counts, run_callers, voice_session
from latency import parley_env, warm_up

PADDING_MS = 300
LONG_REPLY = " ".join(f"This is sentence number {i} of a rather long answer." for i in range(1, 13))


def barges_for(n: int, quick: bool) -> int:
    if quick:
        return 1
    return 10 if n == 1 else 5 if n <= 10 else 3


def measure(result: RunResult, vad: VadClock) -> tuple[dict[str, list[float]], dict[str, int]]:
    m: dict[str, list[float]] = {k: [] for k in ("to_done_ms", "to_last_audio_ms", "vad_onset_delay_ms", "server_ms",
                                                 "beyond_vad_ms", "audio_wait_ms")}
    tally = {"barge_ins": 0, "cancelled": 0, "finished_before_onset": 0, "no_speech_started": 0,
             "audio_after_speech_started": 0}
    for c in result.callers:
        sent = c.sent_at
        for t in c.turns:
            if not t.barge_in:
                continue
            tally["barge_ins"] += 1
            if t.audio_start_ms is None or t.started_at is None:
                tally["no_speech_started"] += 1
                continue
            if t.interrupted_status != "cancelled" or t.interrupted_done_at is None:
                tally["finished_before_onset"] += 1
                continue
            tally["cancelled"] += 1
            tally["audio_after_speech_started"] += t.interrupted_audio_after_start
            onset_chunk = int(t.speech_start_ms // CHUNK_MS)
            decided = t.audio_start_ms + PADDING_MS + 64
            k = vad.decision_chunk(decided)
            if max(onset_chunk, k) >= len(sent):
                continue
            m["to_done_ms"].append(1000 * (t.interrupted_done_at - sent[onset_chunk]))
            if t.interrupted_last_audio_at is not None:
                m["to_last_audio_ms"].append(1000 * (t.interrupted_last_audio_at - sent[onset_chunk]))
            m["vad_onset_delay_ms"].append(decided - t.speech_start_ms)
            m["server_ms"].append(1000 * (t.interrupted_done_at - sent[k]))
            m["beyond_vad_ms"].append(m["to_done_ms"][-1] - m["vad_onset_delay_ms"][-1])
            m["audio_wait_ms"].append(1000 * (sent[k] - sent[onset_chunk]))
    return m, tally


def run_one(n: int, engines: EngineServer, clip: Clip, vad: VadClock, server_cpus: set[int] | None,
            quick: bool) -> dict:
    server = ParleyProc(parley_env(engines), cpus=server_cpus, name=f"barge-n{n}")
    try:
        warm_up(server, clip)
        barges = barges_for(n, quick)
        lead = (0.3, 0.5) if quick else (0.5, min(3.0, 0.5 + n / 25))
        marks: dict = {}

        def steady(_t: float) -> None:
            server.lag()
            marks["background"] = Background([server.pid, engines.pid])

        def ended() -> None:
            marks["lag"], marks["background_pct"] = server.lag(), marks["background"].percent()

        result = asyncio.run(run_callers(
            server.ws_url, n, lambda i: BargeIn(barges, lead_s=lead, rng=random.Random(i)), clip,
            budget_s=15 + barges * 10, session=voice_session(500, PADDING_MS), on_steady=steady, before_close=ended))
        m, tally = measure(result, vad)
        c = counts(result)
        return {"sessions": n, **{k: c[k] for k in ("callers", "connect_failures", "turns", "errors", "error_samples",
                                                      "timed_out", "wall_s")},
                **tally,
                "to_done_ms": pct(m["to_done_ms"], (50, 95)), "to_last_audio_ms": pct(m["to_last_audio_ms"], (50, 95)),
                "vad_onset_delay_ms": pct(m["vad_onset_delay_ms"], (50, 95)),
                "server_ms": pct(m["server_ms"], (50, 95)), "beyond_vad_ms": pct(m["beyond_vad_ms"], (50, 95)),
                "audio_wait_ms": pct(m["audio_wait_ms"], (50, 95)),
                "server_loop_lag_ms": marks.get("lag"), "client_loop_lag_ms": pct(result.client_lag_ms),
                "other_processes_cpu_percent": marks.get("background_pct"),
                "_samples": m}
    finally:
        server.stop()


def plot(runs: list[dict], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels, data = [], []
    for r in runs:
        for key, name in (("vad_onset_delay_ms", "VAD onset\ndelay"), ("beyond_vad_ms", "beyond VAD"),
                          ("server_ms", "server only"), ("to_done_ms", "onset →\nresponse.done")):
            if r["_samples"][key]:
                labels.append(f"N={r['sessions']}\n{name}")
                data.append(r["_samples"][key])
    if data:
        ax.boxplot(data, whis=(5, 95), showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.axhline(30, color="red", lw=0.8, ls="--", label="30 ms (server target)")
    ax.set_ylabel("ms")
    ax.set_title("Barge-in: speech onset to the cancelled response.done (whiskers p5-p95)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 2, one barge-in each")
    parser.add_argument("--sessions", default=None)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    ns = [int(x) for x in args.sessions.split(",")] if args.sessions else ([2] if args.quick else [1, 10, 50])
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    pin_self(client_cpus)
    began = time.monotonic()
    clip = Clip.make()
    vad = VadClock(30_000)
    engines = EngineServer(stt_ms=50, llm_ms=100, tts_ms=50, sentence_ms=400, reply=LONG_REPLY, cpus=client_cpus,
                           name="barge-engines")
    try:
        runs = [run_one(n, engines, clip, vad, server_cpus, args.quick) for n in ns]
    finally:
        engines.stop()
    name = "barge_in-quick" if args.quick else "barge_in"
    plot_ref = save_plot(name, lambda path: plot(runs, path))
    verdict = {}
    for r in runs:
        b, s = r["beyond_vad_ms"], r["server_ms"]
        verdict[str(r["sessions"])] = {"beyond_vad_p50": b["p50"], "beyond_vad_p95": b["p95"],
                                       "server_p50": s["p50"], "server_p95": s["p95"],
                                       "met": b["p95"] is not None and b["p95"] <= 30 and b["p50"] <= 30}
    save(name, {"benchmark": "barge_in", "quick": args.quick, "machine": machine(),
                "setup": {"llm_sentence_interval_ms": 400, "stt_ms": 50, "llm_first_token_ms": 100, "tts_ms": 50,
                          "prefix_padding_ms": PADDING_MS, "pinned": server_cpus is not None},
                "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
                "target_vad_plus_30ms": verdict, "plot": plot_ref,
                "elapsed_s": round(time.monotonic() - began, 1)})


if __name__ == "__main__":
    main()
