"""Batched VAD inference: one model call for the windows of every session that arrive together.

Silero costs ~110 µs per call for one 32 ms window, but ~55 µs per window when 16-64 windows go in
one call (most of a call is overhead).  Audio from many callers reaches the server in bursts, and
the sessions' runners reach their VAD step in the same turns of the event loop, so the process
has one `VadBatcher` per engine and event loop (`shared_batcher`) that collects their windows:

* `process(stream, pcm)` feeds the session's audio to its stream.  No whole window yet: it returns
  `[]` at once, without yielding.  Otherwise the session waits on a future, and the first waiting
  session schedules a flush with `call_soon`.
* The flush runs one loop iteration later, so every runner that was already ready to run has
  added its window.  While the batch is still growing it waits one more iteration, at most
  `max_hops` times: runners woken by the same burst of packets one iteration later join too.
* One `engine.step` call per sample rate (16 kHz, and 8 kHz for G.711) then decides the next
  window of every waiting stream; a stream with several windows (a 100 ms append holds three)
  takes part in as many consecutive calls, so its windows are decided in order.  Each future gets its session's probabilities, in audio order.

* While the event loop's thread is busy (more than half of its time in the last half second,
  until it falls under 30 %: `LoopLoad` in runtime/load.py), model calls are at least `min_interval_s` (5 ms) apart: a window that
  arrives sooner after the last call waits for the rest of that interval, and every window
  arriving meanwhile joins its call.  A server with CPU to spare decides every window at once.

Callers' packets do not arrive together (each client, each network path keeps its own clock), so
the loop alone found only 1.5-3.4 windows per call with 50 simulated callers, and a window then
cost the server ~200 µs in all (model ~120 µs at that batch, the rest the per-call and per-future
Python around it).  With the 5 ms spacing the same load found ~8 windows per call and the
server's CPU per session fell by ~30 % (/tmp harness of 50 callers appending noise, 2026-11-21:
0.93 -> 0.66 % of a core).  The price is at most 5 ms on a VAD decision, paid only when the CPU
it saves is scarce (a quick latency run with 10 callers, a server 16 % busy, showed the wait
when it applied at any load).

Each session keeps its own model state (the stream), and awaits its result before its runner takes
the next input, so the core still sees every `VadResult` before the next event, as with an inline
call; the probabilities are the same (the model's batch rows are independent).  The cost is the
wait for the flush: one or two iterations of the loop, i.e. the work other sessions had ready.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engines.vad import BatchVADEngine, BatchVADStream, VADEngine
from .load import LoopLoad

__all__ = ["VadBatcher", "shared_batcher"]

MAX_HOPS = 3
#: the least time between two model calls while the loop is busy (seconds); see the module doc
MIN_INTERVAL_S = 0.005


@dataclass(eq=False)
class _Job:
    stream: BatchVADStream
    future: asyncio.Future[list[float]]
    probs: list[float] = field(default_factory=list)


class VadBatcher:
    """Decides the waiting windows of many streams of one engine in shared model calls; one per
    engine and event loop (see the module doc)."""

    def __init__(self, engine: BatchVADEngine, *, max_hops: int = MAX_HOPS,
                 min_interval_s: float = MIN_INTERVAL_S, load: LoopLoad | None = None) -> None:
        self.engine = engine
        self.max_hops = max_hops
        self.min_interval_s = min_interval_s
        self.load = load or LoopLoad()
        self._last_call = float("-inf")  # loop time of the last model call
        self._jobs: list[_Job] = []
        self._streams: set[int] = set()  # id() of the streams in _jobs
        self._hops = 0
        self._seen = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # what it did, for benchmarks and tests: windows per model call -> number of calls
        self.batch_sizes: Counter[int] = Counter()

    async def process(self, stream: BatchVADStream, pcm: np.ndarray) -> list[float]:
        """`stream.process(pcm)`, with the model call shared with the other streams waiting now."""
        if not stream.feed(pcm):
            return []
        if id(stream) in self._streams:
            raise RuntimeError("a VAD stream is already waiting for its windows")
        loop = asyncio.get_running_loop()
        job = _Job(stream, loop.create_future())
        if not self._jobs:
            self._loop, self._hops, self._seen = loop, 0, 1
            wait = self._last_call + self.min_interval_s - loop.time()
            if wait > 0 and self.load.busy():  # the windows arriving meanwhile join this call
                self._hops = self.max_hops
                loop.call_later(wait, self._tick)
            else:
                loop.call_soon(self._tick)
        self._jobs.append(job)
        self._streams.add(id(stream))
        return await job.future

    def _tick(self) -> None:
        if len(self._jobs) > self._seen and self._hops < self.max_hops:
            self._hops += 1
            self._seen = len(self._jobs)
            assert self._loop is not None
            self._loop.call_soon(self._tick)
            return
        self.flush()

    def flush(self) -> None:
        """Decide every waiting window now (normally called by the loop)."""
        jobs, self._jobs = self._jobs, []
        self._streams.clear()
        if self._loop is not None:
            self._last_call = self._loop.time()
        rates: dict[int, list[_Job]] = {}  # one model call decides windows of one rate
        for job in jobs:
            rates.setdefault(job.stream.sample_rate, []).append(job)
        for same_rate in rates.values():
            self._decide(same_rate)

    def _decide(self, jobs: list[_Job]) -> None:
        active = jobs
        try:
            while active:
                probs = self.engine.step([job.stream for job in active])
                self.batch_sizes[len(active)] += 1
                still = []
                for job, p in zip(active, probs):
                    job.probs.append(p)
                    if job.stream.waiting:
                        still.append(job)
                    elif not job.future.done():
                        job.future.set_result(job.probs)
                active = still
        except Exception as exc:  # noqa: BLE001 - each waiting session gets the engine's error
            for job in active:
                if not job.future.done():
                    job.future.set_exception(exc)

    def stats(self) -> dict[str, Any]:
        calls = sum(self.batch_sizes.values())
        windows = sum(size * n for size, n in self.batch_sizes.items())
        return {"calls": calls, "windows": windows,
                "windows_per_call": round(windows / calls, 2) if calls else None,
                "batch_sizes": dict(sorted(self.batch_sizes.items()))}


_shared: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, VadBatcher]] = weakref.WeakKeyDictionary()


def shared_batcher(engine: VADEngine) -> VadBatcher | None:
    """The batcher of `engine` for the running event loop (made on first use), or None when the
    engine cannot decide several streams in one call."""
    if not isinstance(engine, BatchVADEngine):
        return None
    loop = asyncio.get_running_loop()
    per_loop = _shared.get(engine)
    if per_loop is None:
        per_loop = _shared[engine] = weakref.WeakKeyDictionary()
    batcher = per_loop.get(loop)
    if batcher is None:
        batcher = per_loop[loop] = VadBatcher(engine)
    return batcher


def all_batchers() -> list[VadBatcher]:
    """Every live batcher of the process (benchmarks read their stats)."""
    return [b for per_loop in list(_shared.values()) for b in list(per_loop.values())]
