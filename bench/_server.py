"""`parley serve`, for benchmarks: the same app and uvicorn options as `parley.server.cli`, plus an
event-loop lag probe.

The probe is a task that sleeps `PROBE_S` in a loop and records how late it wakes up: the time
the loop was busy with something else.  `GET /bench/lag` returns the percentiles of the samples
since the last call (and forgets them), and the garbage collector's pauses by generation.
`GET /bench/vad` returns what the VAD batchers did since
the last call (model calls, windows, windows per call; `{}` for a server without batching).
Nothing else differs from `parley serve`.

    python bench/_server.py --port 8123        # settings from PARLEY_* as usual
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import time
from typing import Any

PROBE_S = 0.005


class LagProbe:
    def __init__(self) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=500_000)
        self.task: asyncio.Task[None] | None = None
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection
        self._gc_began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_began))

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            self.samples.append(max(0.0, time.perf_counter() - began - PROBE_S))

    def report(self) -> dict[str, Any]:
        data = sorted(self.samples)
        self.samples.clear()
        pauses, self.gc_pauses = self.gc_pauses, []
        gc_report = {f"gen{g}": {"count": len(p), "max_ms": round(1000 * max(p), 2), "total_ms": round(1000 * sum(p), 1)}
                     for g in (0, 1, 2) if (p := [d for gen, d in pauses if gen == g])}
        if not data:
            return {"count": 0, "gc": gc_report}

        def q(p: float) -> float:
            return round(1000 * data[min(len(data) - 1, int(p * len(data)))], 3)

        return {"count": len(data), "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99),
                "max_ms": round(1000 * data[-1], 3), "mean_ms": round(1000 * sum(data) / len(data), 3),
                "gc": gc_report}


def vad_stats() -> dict[str, Any]:
    """The VAD batchers' model calls since the last call (and reset them)."""
    try:
        from parley.runtime.vad_batch import all_batchers
    except ImportError:  # a Parley without batched VAD
        return {}
    sizes: collections.Counter[int] = collections.Counter()
    for batcher in all_batchers():
        sizes.update(batcher.batch_sizes)
        batcher.batch_sizes.clear()
    calls = sum(sizes.values())
    windows = sum(size * n for size, n in sizes.items())
    return {"calls": calls, "windows": windows, "windows_per_call": round(windows / calls, 2) if calls else None,
            "max_batch": max(sizes, default=0),
            "batch_size_p50": _weighted_quantile(sizes, 0.5), "batch_size_p95": _weighted_quantile(sizes, 0.95)}


def _weighted_quantile(sizes: collections.Counter[int], q: float) -> int | None:
    """The batch size that the q-quantile window was decided in (weighted by windows)."""
    total = sum(size * n for size, n in sizes.items())
    seen = 0
    for size in sorted(sizes):
        seen += size * sizes[size]
        if seen >= q * total:
            return size
    return None


def with_probe(app: Any, probe: LagProbe) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            probe.start()
        elif scope["type"] == "http" and scope["path"] == "/bench/lag":
            body = json.dumps(probe.report()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        elif scope["type"] == "http" and scope["path"] == "/bench/vad":
            body = json.dumps(vad_stats()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    import uvicorn

    from parley.server.app import create_app
    from parley.server.workers import uvicorn_options
    from parley.server.logs import configure
    from parley.server.settings import Settings

    settings = Settings(host="127.0.0.1", port=args.port)
    configure(settings.log_level, settings.log_json)
    uvicorn.run(with_probe(create_app(settings), LagProbe()), **uvicorn_options(settings))


if __name__ == "__main__":
    main()
