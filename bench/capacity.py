"""Capacity: the largest N at which every session stays real-time, with real Silero VAD in process.

    .venv/bin/python bench/capacity.py [--quick] [--steps 10,25,50,...] [--step-seconds 20]
                                       [--budget-seconds 300] [--no-pin]

Each step starts a fresh server (STT, LLM and TTS are the fixed-latency remote servers of
bench/fixed_engines.py) and N callers that talk for `--step-seconds`: speak a sentence, wait for
the answer and for its audio to play, pause, speak again (about a third of the time speaking).
N steps up until a step breaks or the time budget runs out, then bisects between the last good
and the first broken N to within `--resolution` sessions.

A step is real-time when
* VAD events do not fall behind: `speech_started` / `speech_stopped` reach the caller at most
  `--vad-lag-ms` (50) after the audio chunk that let the VAD decide (p99 over all turns), and
* the server's event-loop lag p99 is under `--loop-lag-ms` (20), and
* every turn the VAD detected was answered (no errors, no dropped sessions).

Per step: the server's CPU (% of one core, from /proc/<pid>/stat over the talking window) and
peak RSS, per session (RSS above the idle server's, divided by N), and CPU per session.
With 2+ cores the server is pinned to one core, so "sessions per core" is the capacity itself.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from _common import (save_plot, Background, EngineServer, ParleyProc, ProcUsage, Sampler, cpu_plan, machine, pct,
                     pin_self, pyplot, save)
from _load import Clip, Conversation, VadClock, counts, run_callers, turn_metrics, voice_session
from latency import ENGINES_MS, SILENCE_MS, parley_env, warm_up

FULL_STEPS = [10, 25, 50, 75, 100, 125, 150, 200, 250, 300, 400]


def run_step(n: int, engines: EngineServer, clip: Clip, vad: VadClock, server_cpus: set[int] | None,
             seconds: float, limits: argparse.Namespace) -> dict:
    server = ParleyProc(parley_env(engines), cpus=server_cpus, name=f"capacity-n{n}")
    sampler = None
    try:
        warm_up(server, clip)
        idle_rss = ProcUsage.read(server.pid).rss_bytes
        sampler = Sampler(server.pid, 0.5)
        marks: dict[str, object] = {}
        ramp = min(3.0, 0.5 + n / 50)  # callers start talking over this many seconds

        def steady(t: float) -> None:
            server.lag()
            server.vad()
            marks["t0"] = time.monotonic() + ramp
            marks["background"] = Background([server.pid, engines.pid])

        def ended() -> None:
            marks["t1"] = time.monotonic()
            marks["lag"] = server.lag()
            marks["vad"] = server.vad()
            marks["background_pct"] = marks["background"].percent()  # type: ignore[attr-defined]

        def script(i: int) -> Conversation:
            return Conversation(10_000, lead_s=(0.2, ramp), rng=random.Random(i))

        result = asyncio.run(run_callers(server.ws_url, n, script, clip, budget_s=seconds + ramp,
                                         session=voice_session(SILENCE_MS), on_steady=steady, before_close=ended))
        sampler.stop()
        window = sampler.window(marks["t0"], marks["t1"])  # type: ignore[arg-type]
        m = turn_metrics(result, vad, silence_ms=SILENCE_MS, engines_ms=ENGINES_MS)
        c = counts(result)
        vad_lag = m["stop_event_lag_ms"] + m["start_event_lag_ms"]
        vad_p99 = pct(vad_lag)["p99"]
        lag = marks["lag"]
        # turns still in flight when the step ended are not failures: count those that had time
        cutoff = result.ended - 3.0
        late = [t for cl in result.callers for t in cl.turns
                if t.stopped_at is not None and t.stopped_at < cutoff and t.first_audio_at is None]
        checks = {
            "vad_events_on_time": vad_p99 is not None and vad_p99 <= limits.vad_lag_ms,
            "loop_lag_ok": lag.get("p99_ms") is not None and lag["p99_ms"] <= limits.loop_lag_ms,
            "all_answered": not late and c["errors"] == 0 and c["connect_failures"] == 0,
        }
        cpu = window["cpu_percent"]
        rss = window["rss_peak_mib"]
        return {
            "sessions": n, "real_time": all(checks.values()), "checks": checks, **c,
            "unanswered_turns": len(late),
            "vad_event_lag_ms": pct(vad_lag), "speech_started_lag_ms": pct(m["start_event_lag_ms"]),
            "speech_stopped_lag_ms": pct(m["stop_event_lag_ms"]), "server_loop_lag_ms": lag,
            "server_added_ms": pct(m["server_added_ms"]), "client_loop_lag_ms": pct(result.client_lag_ms),
            "server_cpu_percent": cpu, "cpu_percent_per_session": round(cpu / n, 3) if cpu is not None else None,
            "server_rss_peak_mib": rss, "server_rss_idle_mib": round(idle_rss / 2**20, 1),
            "rss_per_session_kib": round((rss * 2**20 - idle_rss) / n / 1024, 1) if rss is not None else None,
            "other_processes_cpu_percent": marks.get("background_pct"),
            "vad_batching": marks.get("vad"),
        }
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()


def plot(steps: list[dict], path: str, loop_limit: float, vad_limit: float) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ns = [s["sessions"] for s in steps]

    def series(key: str, q: str) -> list[float]:
        return [(s[key] or {}).get(q) if (s[key] or {}).get(q) is not None else float("nan") for s in steps]

    ax = axes[0]
    ax.plot(ns, series("vad_event_lag_ms", "p50"), "o-", label="VAD event lag p50")
    ax.plot(ns, series("vad_event_lag_ms", "p99"), "^-", label="VAD event lag p99")
    ax.plot(ns, series("server_loop_lag_ms", "p99_ms"), "s--", label="server loop lag p99")
    ax.axhline(vad_limit, color="red", lw=0.8, ls="--", label=f"VAD limit {vad_limit:g} ms")
    ax.axhline(loop_limit, color="orange", lw=0.8, ls="--", label=f"loop-lag limit {loop_limit:g} ms")
    ax.set_yscale("log")
    ax.set_title("Falling behind?", fontsize=10)
    ax.set_ylabel("ms")
    ax = axes[1]
    ax.plot(ns, [s["server_cpu_percent"] or float("nan") for s in steps], "o-", label="server CPU % (one core)")
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_title("Server CPU", fontsize=10)
    ax.set_ylabel("% of one core")
    ax = axes[2]
    ax.plot(ns, [s["rss_per_session_kib"] or float("nan") for s in steps], "o-", label="RSS per session (KiB)")
    ax.set_ylabel("KiB")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(ns, [1000 * (s["cpu_percent_per_session"] or float("nan")) / 100 for s in steps], "s-",
              color="tab:orange", label="CPU per session (ms of CPU per s)")
    twin.set_ylabel("ms of CPU per second")
    twin.set_ylim(bottom=0)
    twin.legend(fontsize=8, loc="lower right")
    ax.set_title("Per session", fontsize=10)
    for ax in axes:
        ax.set_xlabel("concurrent sessions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for s in steps:
        if not s["real_time"]:
            for ax in axes:
                ax.axvspan(s["sessions"] - 0.5, s["sessions"] + 0.5, color="red", alpha=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_fit(points: list[tuple[int, float]]) -> dict | None:
    """Server CPU = idle + per_session * N, fitted over the steps below 90 % CPU; the N at which
    it would reach 100 % of a core is the CPU-bound ceiling (an estimate: it ignores the lag
    that builds up before a core is full)."""
    if len(points) < 2:
        return None
    import numpy as np

    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return {"cpu_percent_idle": round(float(intercept), 2), "cpu_percent_per_session": round(float(slope), 3),
            "sessions_at_100_percent": round(float((100 - intercept) / slope)) if slope > 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 5, short steps")
    parser.add_argument("--steps", default=None, help="comma-separated N values, in order")
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--budget-seconds", type=float, default=None, help="stop stepping after this")
    parser.add_argument("--vad-lag-ms", type=float, default=50)
    parser.add_argument("--loop-lag-ms", type=float, default=20)
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one breaks")
    parser.add_argument("--resolution", type=int, default=None,
                        help="after a break, bisect until the gap is this small (default 5; quick: no bisection)")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    steps = [int(x) for x in args.steps.split(",")] if args.steps else ([1, 5] if args.quick else FULL_STEPS)
    seconds = args.step_seconds or (6 if args.quick else 20)
    budget = args.budget_seconds or (50 if args.quick else 300)
    args.resolution = args.resolution or (10**6 if args.quick else 5)
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    pin_self(client_cpus)
    began = time.monotonic()
    clip = Clip.make()
    vad = VadClock(30_000)
    engines = EngineServer(cpus=client_cpus, name="capacity-engines")
    results: list[dict] = []
    stopped_by = "steps exhausted"
    try:
        for n in steps:
            if time.monotonic() - began > budget:
                stopped_by = "time budget"
                break
            step = run_step(n, engines, clip, vad, server_cpus, seconds, args)
            results.append(step)
            print(f"N={n}: real_time={step['real_time']} {step['checks']} cpu={step['server_cpu_percent']}% "
                  f"vad p99={step['vad_event_lag_ms']['p99']} loop p99={step['server_loop_lag_ms'].get('p99_ms')} "
                  f"vad windows/call={(step['vad_batching'] or {}).get('windows_per_call')}",
                  file=sys.stderr, flush=True)
            if not step["real_time"] and not args.keep_going:
                stopped_by = f"N={n} broke"
                break
        # bisect between the last good N and the first broken one, to within --resolution
        good = [s["sessions"] for s in results if s["real_time"]]
        bad = [s["sessions"] for s in results if not s["real_time"]]
        lo, hi = (max(good) if good else 0), (min(bad) if bad else None)
        while hi is not None and hi - lo > args.resolution and time.monotonic() - began < budget:
            n = (lo + hi) // 2
            step = run_step(n, engines, clip, vad, server_cpus, seconds, args)
            results.append(step)
            print(f"N={n} (refining): real_time={step['real_time']} cpu={step['server_cpu_percent']}%",
                  file=sys.stderr, flush=True)
            lo, hi = (n, hi) if step["real_time"] else (lo, n)
        results.sort(key=lambda s: s["sessions"])
    finally:
        engines.stop()
    ok = [s["sessions"] for s in results if s["real_time"]]
    broken = [s["sessions"] for s in results if not s["real_time"]]
    best = max((n for n in ok if not broken or n < min(broken)), default=0)
    cores = 1 if server_cpus else None
    linear = [(s["sessions"], s["server_cpu_percent"]) for s in results
              if s["server_cpu_percent"] is not None and s["server_cpu_percent"] < 90]
    name = "capacity-quick" if args.quick else "capacity"
    plot_ref = save_plot(name, lambda path: plot(results, path, args.loop_lag_ms, args.vad_lag_ms))
    save(name, {
        "benchmark": "capacity", "quick": args.quick, "machine": machine(),
        "setup": {"step_seconds": seconds, "vad_lag_limit_ms": args.vad_lag_ms, "loop_lag_limit_ms": args.loop_lag_ms,
                  "pinned": server_cpus is not None, "server_cpus": sorted(server_cpus or [])},
        "steps": results, "stopped_by": stopped_by,
        "max_real_time_sessions": best,
        "sessions_per_core": best if cores == 1 else None,
        "target_100_per_core_met": cores == 1 and best >= 100,
        "cpu_fit": cpu_fit(linear),
        "plot": plot_ref, "elapsed_s": round(time.monotonic() - began, 1),
    })


if __name__ == "__main__":
    main()
