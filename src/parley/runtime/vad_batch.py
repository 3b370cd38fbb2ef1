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
* One `engine.step` call then decides the next window of every waiting stream; a stream with
  several windows (a 100 ms append holds three) takes part in as many consecutive calls, so its
  windows are decided in order.  Each future gets its session's probabilities, in audio order.

How many windows share a call depends on how many sessions' audio arrives together, and on how
busy the loop is (the busier, the more arrives during an iteration).  With 50 simulated callers
sending in 4 phases of each 20 ms (bench/capacity.py), about 9 windows shared a call and the server
used ~30 % less CPU than with one call per window; with arrivals spread over 20 phases, about 2.5.
Waiting a fixed time for more windows would batch more but add that time to every VAD decision
(and to barge-in), so the batcher does not wait for time, only for the loop.

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

__all__ = ["VadBatcher", "shared_batcher"]

MAX_HOPS = 3


@dataclass(eq=False)
class _Job:
    stream: BatchVADStream
    future: asyncio.Future[list[float]]
    probs: list[float] = field(default_factory=list)


class VadBatcher:
    """Decides the waiting windows of many streams of one engine in shared model calls; one per
    engine and event loop (see the module doc)."""

    def __init__(self, engine: BatchVADEngine, *, max_hops: int = MAX_HOPS) -> None:
        self.engine = engine
        self.max_hops = max_hops
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
