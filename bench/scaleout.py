"""Scale-out: real-time sessions per box with `parley serve --workers W` and Redis (issue #12).

    .venv/bin/python bench/scaleout.py [--quick] [--workers 1,2] [--steps 50,100,...]
                                       [--latency-at 100,200] [--step-seconds 20]
                                       [--budget-seconds 420] [--no-pin]

For each W: the fixed-latency engine server (bench/fixed_engines.py) and, per step, a fresh
redis-server (no persistence) and a fresh Parley with `PARLEY_REDIS_URL` and W workers
(bench/_cluster_server.py: the CLI's supervisor and workers, each worker's loop with the lag
probe of bench/_server.py).  N callers talk as in capacity.py for `--step-seconds` (speak, wait
for the answer and its audio, pause, speak again), spread over the workers by the kernel
(SO_REUSEPORT).  N steps up until a step breaks or W's time budget runs out, then bisects to
`--resolution`, as capacity.py does; then every N of `--latency-at` not run yet is run.

A step is real-time by capacity.py's criteria: VAD event lag p99 <= `--vad-lag-ms` (50), the
event-loop lag p99 of *every* worker <= `--loop-lag-ms` (20), and every turn the VAD detected
answered (no errors, no dropped sessions).  Per step also:
* server CPU (% of one core) and peak RSS, summed over the supervisor and all workers
  (`process_tree`), each worker's CPU and live sessions (how evenly the kernel spread them), the
  load side's CPU (this process, the engines, redis-server) and other processes' CPU;
* server-added latency p50/p99, as latency.py defines it (from the chunk that let the VAD decide
  to the first audio delta, minus the engines' fixed 200 ms);
* Redis traffic per session-minute over the talking window: the nodes' own round trips
  (`RedisShared.round_trips`, a pipeline counts one), the commands redis-server processed
  (`total_commands_processed`, less this script's INFO calls) and `INFO commandstats` by
  command; and the commands outside the window per session (admission and release).

Placement: with more cores than W and no `--no-pin`, the workers are pinned to W cores and the
callers, engines and redis-server to the rest (W = 1 on 2 cores: as capacity.py).  Otherwise
nothing is pinned: on a 2-core box with W = 2 the load generator, the engines and redis-server
compete with the second worker for the same two cores, so the 2-worker number is a floor of what
two cores dedicated to Parley give; `load_cpu_percent` says how much of the box the load took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from typing import Any

import httpx

from _common import (BENCH, Background, EngineServer, ParleyProc, ProcUsage, Sampler, free_port, machine, pct,
                     pyplot, save, save_plot, wait_http)
from _load import Clip, Conversation, VadClock, counts, run_callers, turn_metrics, voice_session
from latency import ENGINES_MS, LLM_MS, SILENCE_MS, STT_MS, TTS_MS, parley_env
from tests.support.redis_server import RedisServer

FULL_STEPS = [50, 100, 150, 200, 250, 300, 400]
LATENCY_AT = [100, 200]


class ClusterProc(ParleyProc):
    """bench/_cluster_server.py: `parley serve --workers W` with Redis, each worker reachable on
    its internal port for its lag probe and node counters."""

    def __init__(self, env: dict[str, str], workers: int, redis_url: str, *, cpus: set[int] | None,
                 name: str) -> None:
        internal = free_port()
        cluster = {"PARLEY_REDIS_URL": redis_url, "PARLEY_CLUSTER_SECRET": "bench",
                   "PARLEY_INTERNAL_PORT": str(internal), "PARLEY_ADVERTISE_HOST": "127.0.0.1"}
        super().__init__({**cluster, **env}, cpus=cpus, name=name, timeout_s=120,
                         script=BENCH / "_cluster_server.py", args=("--workers", str(workers)))
        self.workers = [f"http://127.0.0.1:{internal + i}" for i in range(workers)]
        for url in self.workers:  # /readyz above may have come from one worker: wait for each
            wait_http(f"{url}/bench/cluster", self, lambda r: r.status_code == 200, 120)

    def each(self, path: str) -> list[dict[str, Any]]:
        """GET `path` from every worker (its internal port)."""
        out = []
        for url in self.workers:
            try:
                out.append(httpx.get(f"{url}{path}", timeout=60).json())
            except (httpx.HTTPError, ValueError) as exc:
                out.append({"error": repr(exc)})
        return out

    def worker_usage(self) -> dict[int, ProcUsage]:
        """pid -> usage of each worker (the supervisor's children; W = 1: the server itself)."""
        pids = [n["pid"] for n in self.each("/bench/cluster") if "pid" in n]
        return {pid: ProcUsage.read(pid) for pid in pids}


def warm_every_worker(server: ClusterProc, clip: Clip, tries: int = 5) -> int:
    """latency.warm_up for each worker: the kernel picks the worker of a connection, so 2 W
    callers at a time do a turn until every worker has had one (at most `tries` rounds)."""
    for attempt in range(1, tries + 1):
        asyncio.run(run_callers(server.ws_url, 2 * len(server.workers), lambda i: Conversation(1, lead_s=(0.3, 0.3)),
                                clip, budget_s=20, session=voice_session(SILENCE_MS)))
        if all(node.get("websockets", 0) > 0 for node in server.each("/bench/cluster")):
            return attempt
    return tries


def redis_counts(client: Any) -> dict[str, Any]:
    """Commands processed so far, in all and by command (commandstats counts the commands that
    scripts run too)."""
    total = client.info("stats")["total_commands_processed"]
    by = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
    return {"total": total, "by": by}


def redis_delta(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """(commands, by command) between two readings, without the readings' own INFO calls."""
    by = {k: v - a["by"].get(k, 0) for k, v in b["by"].items() if k != "info" and v - a["by"].get(k, 0)}
    own = b["by"].get("info", 0) - a["by"].get("info", 0)
    return b["total"] - a["total"] - own, by


def load_usage(pids: list[int]) -> float:
    """CPU seconds of the load side: this process, the engines and redis-server."""
    return sum(ProcUsage.read_tree(p).cpu_s for p in pids)


def placement(workers: int, pin: bool, available: set[int]) -> dict[str, Any]:
    """Which cores the workers and the load side get (unpinned: both get every core, explicitly,
    since a child inherits this process's affinity)."""
    cpus = sorted(available)
    if pin and len(cpus) > workers:
        return {"pinned": True, "server_cpus": set(cpus[:workers]), "load_cpus": set(cpus[workers:]),
                "note": f"workers on cores {cpus[:workers]}; callers, engines and redis-server on {cpus[workers:]}"}
    return {"pinned": False, "server_cpus": set(cpus), "load_cpus": set(cpus),
            "note": f"not pinned: the {workers} worker(s), the callers, the engines and redis-server share cores "
                    f"{cpus}; the load generator competes with the workers, so this W's capacity is a floor of "
                    "what the same cores give Parley alone"}


def run_step(workers: int, n: int, engines: EngineServer, clip: Clip, vad: VadClock, server_cpus: set[int] | None,
             seconds: float, limits: argparse.Namespace) -> dict:
    with RedisServer() as store:
        client = store.client()
        server = ClusterProc(parley_env(engines), workers, store.url, cpus=server_cpus,
                             name=f"scaleout-w{workers}-n{n}")
        sampler = None
        load_pids = [os.getpid(), engines.pid, store.proc.pid]  # type: ignore[union-attr]
        try:
            warm_rounds = warm_every_worker(server, clip)
            idle_rss = ProcUsage.read_tree(server.pid).rss_bytes
            sampler = Sampler(server.pid, 0.5, tree=True)
            marks: dict[str, Any] = {"redis_open": redis_counts(client)}
            ramp = min(3.0, 0.5 + n / 50)  # callers start talking over this many seconds

            def steady(_t: float) -> None:
                server.each("/bench/lag"), server.each("/bench/vad")  # forget the connection phase
                marks["t0"] = time.monotonic() + ramp
                marks["background"] = Background([server.pid, engines.pid, store.proc.pid])  # type: ignore[union-attr]
                marks["load"], marks["workers"] = load_usage(load_pids), server.worker_usage()
                marks["redis"], marks["nodes"] = redis_counts(client), server.each("/bench/cluster")
                marks["at"] = time.monotonic()

            def ended() -> None:
                marks["t1"] = time.monotonic()
                marks["redis_end"], marks["nodes_end"] = redis_counts(client), server.each("/bench/cluster")
                marks["load_end"], marks["workers_end"] = load_usage(load_pids), server.worker_usage()
                marks["at_end"] = time.monotonic()
                marks["lag"], marks["vad"] = server.each("/bench/lag"), server.each("/bench/vad")
                marks["background_pct"] = marks["background"].percent()

            result = asyncio.run(run_callers(
                server.ws_url, n, lambda i: Conversation(10_000, lead_s=(0.2, ramp), rng=random.Random(i)), clip,
                budget_s=seconds + ramp, session=voice_session(SILENCE_MS), on_steady=steady, before_close=ended))
            time.sleep(0.5)  # the sessions' releases reach Redis
            marks["redis_closed"] = redis_counts(client)
            sampler.stop()
            window = sampler.window(marks["t0"], marks["t1"])
            m = turn_metrics(result, vad, silence_ms=SILENCE_MS, engines_ms=ENGINES_MS)
            c = counts(result)
            vad_lag = m["stop_event_lag_ms"] + m["start_event_lag_ms"]
            vad_p99 = pct(vad_lag)["p99"]
            loop_p99 = [lag.get("p99_ms") for lag in marks["lag"]]
            cutoff = result.ended - 3.0  # turns still in flight at the end are not failures
            late = [t for cl in result.callers for t in cl.turns
                    if t.stopped_at is not None and t.stopped_at < cutoff and t.first_audio_at is None]
            checks = {
                "vad_events_on_time": vad_p99 is not None and vad_p99 <= limits.vad_lag_ms,
                "loop_lag_ok": all(p is not None and p <= limits.loop_lag_ms for p in loop_p99),
                "all_answered": not late and c["errors"] == 0 and c["connect_failures"] == 0,
            }
            span = marks["at_end"] - marks["at"]
            minutes = n * span / 60
            commands, by_command = redis_delta(marks["redis"], marks["redis_end"])
            outside, _ = redis_delta(marks["redis_open"], marks["redis_closed"])
            trips = sum(e.get("redis_round_trips") or 0 for e in marks["nodes_end"]) - \
                sum(b.get("redis_round_trips") or 0 for b in marks["nodes"])
            cpu, rss = window["cpu_percent"], window["rss_peak_mib"]
            per_worker = [{"worker": node.get("worker"), "live_sessions": node.get("live_sessions"),
                           "cpu_percent": round(marks["workers_end"][pid].cpu_percent_since(marks["workers"][pid]), 1)
                           if (pid := node.get("pid")) in marks["workers"] and pid in marks["workers_end"] else None,
                           "rss_mib": round(marks["workers_end"][pid].rss_bytes / 2**20, 1)
                           if pid in marks["workers_end"] else None,
                           "loop_lag_ms": lag, "vad_batching": v}
                          for node, lag, v in zip(marks["nodes_end"], marks["lag"], marks["vad"])]
            return {
                "workers": workers, "sessions": n, "real_time": all(checks.values()), "checks": checks, **c,
                "unanswered_turns": len(late), "warm_up_rounds": warm_rounds,
                "vad_event_lag_ms": pct(vad_lag), "speech_stopped_lag_ms": pct(m["stop_event_lag_ms"]),
                "server_loop_lag_p99_ms_max": max((p for p in loop_p99 if p is not None), default=None),
                "server_added_ms": pct(m["server_added_ms"]), "added_ms": pct(m["added_ms"]),
                "client_loop_lag_ms": pct(result.client_lag_ms),
                "server_cpu_percent": cpu, "cpu_percent_per_session": round(cpu / n, 3) if cpu is not None else None,
                "server_rss_peak_mib": rss, "server_rss_idle_mib": round(idle_rss / 2**20, 1),
                "rss_per_session_kib": round((rss * 2**20 - idle_rss) / n / 1024, 1) if rss is not None else None,
                "per_worker": per_worker,
                "load_cpu_percent": round(100 * (marks["load_end"] - marks["load"]) / span, 1),
                "other_processes_cpu_percent": marks.get("background_pct"),
                "redis": {"window_s": round(span, 1), "node_round_trips": trips,
                          "node_round_trips_per_session_minute": round(trips / minutes, 2),
                          "node_round_trips_per_node_minute": round(trips / (workers * span / 60), 1),
                          "commands": commands, "commands_per_session_minute": round(commands / minutes, 2),
                          "by_command": by_command,
                          # admission and release, and the beats while callers connect and hang up
                          "commands_outside_window_per_session": round((outside - commands) / n, 2)},
            }
        finally:
            if sampler is not None:
                sampler.stop()
            server.stop()


def search(workers: int, steps: list[int], latency_at: list[int], run: Any, budget: float,
           resolution: int, keep_going: bool) -> tuple[list[dict], str]:
    """capacity.py's search for one W: step up until a step breaks or `budget` passes, bisect
    between the last good and first broken N; then the `latency_at` N not run yet."""
    began, results, stopped_by = time.monotonic(), [], "steps exhausted"
    for n in steps:
        if time.monotonic() - began > budget:
            stopped_by = "time budget"
            break
        results.append(run(n))
        if not results[-1]["real_time"] and not keep_going:
            stopped_by = f"N={n} broke"
            break
    good = [s["sessions"] for s in results if s["real_time"]]
    bad = [s["sessions"] for s in results if not s["real_time"]]
    lo, hi = (max(good) if good else 0), (min(bad) if bad else None)
    while hi is not None and hi - lo > resolution and time.monotonic() - began < budget:
        results.append(run((lo + hi) // 2))
        n = results[-1]["sessions"]
        lo, hi = (n, hi) if results[-1]["real_time"] else (lo, n)
    for n in latency_at:
        if n not in {s["sessions"] for s in results}:
            results.append(run(n))
    return sorted(results, key=lambda s: s["sessions"]), stopped_by


def capacity_of(steps: list[dict]) -> int:
    ok = [s["sessions"] for s in steps if s["real_time"]]
    broken = [s["sessions"] for s in steps if not s["real_time"]]
    return max((n for n in ok if not broken or n < min(broken)), default=0)


def plot(by_w: dict[int, dict], path: str, limits: argparse.Namespace) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    for w, entry in by_w.items():
        steps = entry["steps"]
        ns = [s["sessions"] for s in steps]

        def val(get: Any) -> list[float]:
            out = []
            for s in steps:
                v = get(s)
                out.append(float("nan") if v is None else v)
            return out

        axes[0].plot(ns, val(lambda s: s["vad_event_lag_ms"]["p99"]), "^-", label=f"W={w} VAD event lag p99")
        axes[0].plot(ns, val(lambda s: s["server_loop_lag_p99_ms_max"]), "s--", label=f"W={w} loop lag p99 (worst)")
        axes[1].plot(ns, val(lambda s: s["server_cpu_percent"]), "o-", label=f"W={w} server (all workers)")
        axes[1].plot(ns, val(lambda s: s["load_cpu_percent"]), "x:", label=f"W={w} load side")
        axes[2].plot(ns, val(lambda s: s["server_added_ms"]["p50"]), "o-", label=f"W={w} p50")
        axes[2].plot(ns, val(lambda s: s["server_added_ms"]["p99"]), "^:", label=f"W={w} p99")
        axes[3].plot(ns, val(lambda s: s["redis"]["node_round_trips_per_session_minute"]), "o-",
                     label=f"W={w} node round trips")
        axes[3].plot(ns, val(lambda s: s["redis"]["commands_per_session_minute"]), "s--", label=f"W={w} commands")
        for s in steps:
            if not s["real_time"]:
                axes[0].axvspan(s["sessions"] - 1, s["sessions"] + 1, color="red", alpha=0.15)
    axes[0].axhline(limits.vad_lag_ms, color="red", lw=0.8, ls="--", label=f"VAD limit {limits.vad_lag_ms:g} ms")
    axes[0].axhline(limits.loop_lag_ms, color="orange", lw=0.8, ls="--", label=f"loop limit {limits.loop_lag_ms:g} ms")
    axes[0].set_yscale("log")
    axes[2].axhline(5, color="green", lw=0.8, ls="--", label="target p50 5 ms")
    axes[2].axhline(20, color="red", lw=0.8, ls="--", label="target p99 20 ms")
    axes[2].set_yscale("log")
    for ax, title, unit in zip(axes, ("Falling behind?", "CPU", "Server-added latency", "Redis per session-minute"),
                               ("ms", "% of one core", "ms", "per session-minute")):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_xlabel("concurrent sessions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="W = 1, 2 with one short step of N = 5 each")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", default=None, help="comma-separated N values, in order")
    parser.add_argument("--latency-at", default=None, help="N always run for the latency goal (default 100,200)")
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--budget-seconds", type=float, default=None, help="per W: stop stepping after this")
    parser.add_argument("--vad-lag-ms", type=float, default=50)
    parser.add_argument("--loop-lag-ms", type=float, default=20)
    parser.add_argument("--keep-going", action="store_true", help="run every step even after one breaks")
    parser.add_argument("--resolution", type=int, default=None, help="bisect to this gap (default 10; quick: none)")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    steps = [int(x) for x in args.steps.split(",")] if args.steps else ([5] if args.quick else FULL_STEPS)
    latency_at = [int(x) for x in args.latency_at.split(",")] if args.latency_at is not None else (
        [] if args.quick else LATENCY_AT)
    seconds = args.step_seconds or (6 if args.quick else 20)
    budget = args.budget_seconds or (30 if args.quick else 420)
    resolution = args.resolution or (10**6 if args.quick else 10)
    began = time.monotonic()
    clip, vad = Clip.make(), VadClock(30_000)
    everything = os.sched_getaffinity(0)
    by_w: dict[int, dict] = {}
    try:
        for w in [int(x) for x in args.workers.split(",")]:
            place = placement(w, not args.no_pin, everything)
            os.sched_setaffinity(0, place["load_cpus"])  # the engines and redis-server inherit it
            engines = EngineServer(stt_ms=STT_MS, llm_ms=LLM_MS, tts_ms=TTS_MS, name=f"scaleout-engines-w{w}")
            try:
                def run(n: int, w: int = w, place: dict = place, engines: EngineServer = engines) -> dict:
                    step = run_step(w, n, engines, clip, vad, place["server_cpus"], seconds, args)
                    print(f"W={w} N={n}: real_time={step['real_time']} {step['checks']} "
                          f"cpu={step['server_cpu_percent']}% load={step['load_cpu_percent']}% "
                          f"vad p99={step['vad_event_lag_ms']['p99']} loop p99={step['server_loop_lag_p99_ms_max']} "
                          f"added p50/p99={step['server_added_ms']['p50']}/{step['server_added_ms']['p99']} ms "
                          f"redis trips/session-min={step['redis']['node_round_trips_per_session_minute']} "
                          f"sessions/worker={[p['live_sessions'] for p in step['per_worker']]}",
                          file=sys.stderr, flush=True)
                    return step

                results, stopped_by = search(w, steps, latency_at, run, budget, resolution, args.keep_going)
            finally:
                engines.stop()
            by_w[w] = {"placement": {k: sorted(v) if isinstance(v, set) else v for k, v in place.items()},
                       "steps": results, "stopped_by": stopped_by, "max_real_time_sessions": capacity_of(results)}
    finally:
        os.sched_setaffinity(0, everything)
    name = "scaleout-quick" if args.quick else "scaleout"
    plot_ref = save_plot(name, lambda path: plot(by_w, path, args))
    cap = {w: e["max_real_time_sessions"] for w, e in by_w.items()}

    def latency_at_n(w: int, n: int) -> dict | None:
        s = next((s for s in by_w[w]["steps"] if s["sessions"] == n), None)
        if s is None:
            return None
        p50, p99 = s["server_added_ms"]["p50"], s["server_added_ms"]["p99"]
        return {"p50": p50, "p99": p99, "real_time": s["real_time"],
                "met": n != 100 or ((p50 if p50 is not None else 1e9) <= 5 and (p99 if p99 is not None else 1e9) <= 20)}

    two = sorted(w for w in cap if w > 1)
    save(name, {
        "benchmark": "scaleout", "quick": args.quick, "machine": machine(),
        "setup": {"engines_ms": {"stt": STT_MS, "llm_first_token": LLM_MS, "tts_first_audio": TTS_MS},
                  "step_seconds": seconds, "budget_seconds_per_w": budget, "vad_lag_limit_ms": args.vad_lag_ms,
                  "loop_lag_limit_ms": args.loop_lag_ms, "redis": "redis-server, no persistence, loopback",
                  "note": "on a 2-core box W = 2 is not pinned: the callers, the engines and redis-server compete "
                          "with the second worker (load_cpu_percent per step), so the 2-worker capacity is a floor"},
        "by_workers": by_w,
        "max_real_time_sessions": cap,
        "scaling": {f"w{w}_over_w1": round(cap[w] / cap[1], 2) if cap.get(1) else None for w in two},
        "goals": {"scaling_1_8x": {w: bool(cap.get(1)) and cap[w] >= 1.8 * cap[1] for w in two},
                  "200_per_box": {w: cap[w] >= 200 for w in cap},
                  "server_added_at": {w: {n: latency_at_n(w, n) for n in latency_at} for w in by_w}},
        "plot": plot_ref, "elapsed_s": round(time.monotonic() - began, 1),
    })


if __name__ == "__main__":
    main()
