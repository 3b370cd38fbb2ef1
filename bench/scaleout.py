"""Scale-out: `parley serve --workers W` with Redis, N callers spread over the workers.

    .venv/bin/python bench/scaleout.py [--quick] [--workers 1,2] [--sessions 100,200] [--turns 3]

For each W and N: a real redis-server, the fixed-latency engine server (bench/fixed_engines.py,
as latency.py) and Parley with `PARLEY_REDIS_URL` and `--workers W` (not pinned: the W workers,
the callers and the engines share this machine's cores; on 2 cores the load generator competes
with the second worker, so the 2-worker numbers are a floor of what two free cores give).
N callers talk as in latency.py. Reported per run:
* turns detected / answered, and the server-added latency p50/p99 (as latency.py defines it);
* the server's CPU over the supervisor and every worker (% of one core) and RSS;
* Redis commands per session-minute: `total_commands_processed` of the redis-server over the
  talking window divided by sessions x minutes (keys, leases, heartbeats and token flushes;
  nothing per audio chunk or delta).
This is a latency and Redis-traffic run at fixed N, not capacity.py's search for the largest N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

import redis

from _common import (API_KEY, EngineServer, Proc, ProcUsage, free_port, machine, pct, process_tree, save,
                     wait_http)
from _load import Clip, Conversation, VadClock, counts, run_callers, turn_metrics, voice_session
from latency import ENGINES_MS, LLM_MS, SILENCE_MS, STT_MS, TTS_MS, parley_env, warm_up
from tests.support.redis_server import RedisServer


class ParleyWorkers(Proc):
    """`parley serve --workers W` with Redis, all workers on one port."""

    def __init__(self, env: dict[str, str], workers: int, redis_url: str, name: str) -> None:
        self.port = free_port()
        full_env = {**os.environ, "PARLEY_API_KEYS": API_KEY, "PARLEY_LOG_LEVEL": "warning",
                    "PARLEY_MAX_SESSIONS_PER_KEY": "0", "PARLEY_TOKENS_PER_MINUTE": "1000000000",
                    "PARLEY_REDIS_URL": redis_url, "PARLEY_CLUSTER_SECRET": "bench",
                    "PARLEY_INTERNAL_PORT": str(free_port()), "PARLEY_ADVERTISE_HOST": "127.0.0.1", **env}
        super().__init__([sys.executable, "-m", "parley.server.cli", "serve", "--port", str(self.port),
                          "--workers", str(workers)], full_env, name)
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"
        wait_http(f"{self.http}/readyz", self, lambda r: r.status_code == 200, 90)

    def usage(self) -> tuple[float, int]:
        """(CPU seconds, RSS bytes) of the supervisor and every worker together."""
        cpu, rss = 0.0, 0
        for pid in process_tree(self.pid):
            try:
                u = ProcUsage.read(pid)
            except (OSError, ValueError):
                continue
            cpu, rss = cpu + u.cpu_s, rss + u.rss_bytes
        return cpu, rss


def run_one(workers: int, n: int, turns: int, engines: EngineServer, clip: Clip, vad: VadClock) -> dict:
    with RedisServer() as store:
        server = ParleyWorkers(parley_env(engines), workers, store.url, f"scaleout-w{workers}-n{n}")
        client = redis.Redis(port=store.port)
        try:
            warm_up(server, clip)  # type: ignore[arg-type]
            marks: dict[str, float] = {}

            def steady(_t: float) -> None:
                marks["cpu"], marks["at"] = server.usage()[0], time.monotonic()
                marks["commands"] = client.info("stats")["total_commands_processed"]

            def ended() -> None:
                (marks["cpu_end"], rss), marks["at_end"] = server.usage(), time.monotonic()
                marks["commands_end"] = client.info("stats")["total_commands_processed"]
                marks["rss"] = round(rss / 2**20, 1)

            stagger = min(3.0, 0.5 + n / 60)
            result = asyncio.run(run_callers(
                server.ws_url, n, lambda i: Conversation(turns, lead_s=(0.5, 0.5 + stagger), rng=random.Random(i)),
                clip, budget_s=20 + turns * 12 + stagger, session=voice_session(SILENCE_MS), on_steady=steady,
                before_close=ended))
            m = turn_metrics(result, vad, silence_ms=SILENCE_MS, engines_ms=ENGINES_MS)
            seconds = marks["at_end"] - marks["at"]
            commands = marks["commands_end"] - marks["commands"]
            return {"workers": workers, "sessions": n, **counts(result),
                    "server_added_ms": pct(m["server_added_ms"]), "added_ms": pct(m["added_ms"]),
                    "speech_stopped_lag_ms": pct(m["stop_event_lag_ms"]),
                    "server_cpu_percent": round(100 * (marks["cpu_end"] - marks["cpu"]) / seconds, 1),
                    "server_rss_mib": marks["rss"], "window_s": round(seconds, 1),
                    "redis_commands": commands,
                    "redis_commands_per_session_minute": round(commands / (n * seconds / 60), 2)}
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="W = 1, 2 with N = 5, one turn each")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--sessions", default=None, help="comma-separated N (default 100,200)")
    parser.add_argument("--turns", type=int, default=None)
    args = parser.parse_args()
    ns = [int(x) for x in (args.sessions or ("5" if args.quick else "100,200")).split(",")]
    turns = args.turns or (1 if args.quick else 3)
    began = time.monotonic()
    clip, vad = Clip.make(), VadClock(60_000)
    engines = EngineServer(stt_ms=STT_MS, llm_ms=LLM_MS, tts_ms=TTS_MS, name="scaleout-engines")
    runs = []
    try:
        for w in [int(x) for x in args.workers.split(",")]:
            for n in ns:
                runs.append(run_one(w, n, turns, engines, clip, vad))
                r = runs[-1]
                print(f"workers={w} sessions={n}: answered {r['turns_answered']}/{r['turns_detected']}, "
                      f"server-added p50 {r['server_added_ms']['p50']} p99 {r['server_added_ms']['p99']} ms, "
                      f"CPU {r['server_cpu_percent']} %, Redis {r['redis_commands_per_session_minute']} commands "
                      "per session-minute", flush=True)
    finally:
        engines.stop()
    save("scaleout-quick" if args.quick else "scaleout", {
        "benchmark": "scaleout", "quick": args.quick, "machine": machine(), "pinned": False,
        "setup": {"engines_ms": {"stt": STT_MS, "llm_first_token": LLM_MS, "tts_first_audio": TTS_MS},
                  "turns_per_caller": turns, "note": "workers, callers and engines share the machine's cores"},
        "runs": runs, "elapsed_s": round(time.monotonic() - began, 1)})


if __name__ == "__main__":
    main()
