"""How busy the event loop is: the measure behind VAD spacing (`LoopLoad`) and behind refusing
new sessions (`LoadGuard`).

Every session of a process runs on one event loop, so its thread is what runs out first.  Two
cheap measures of it:

* **CPU share of the loop's thread**: `time.thread_time()` over wall time.  Past saturation the
  work queues up in inboxes and socket buffers while each loop iteration stays short: at 200
  sessions on one core (BENCHMARKS.md, latency) turns were answered 8 s late with a loop lag p99
  of only 37 ms, but the thread was 100 % busy.  The share sees that at once and costs one
  system call per reading.
* **Lag**: a probe task sleeps `interval_s` (50 ms) and notes how late it wakes.  It sees what the
  thread's CPU time cannot: a loop that waits for a core (other processes on it, a throttled
  container) or is blocked in a system call.  20 wake-ups a second are cheap (an idle server's
  loop thread, probe included, measured 0.3-0.7 % busy).  Its
  statistic is the 95th percentile over the window, so one or two stalls (a collection, a burst of
  ends of turns) do not count, a loop late one time in twenty does.

`LoadGuard` is overloaded when either measure over the last `window_s` is above its threshold,
and stays so until both are below their (lower) clear thresholds: refusing new sessions does not
lower the load of the live ones, which must not switch the guard on and off with every caller.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Hysteresis", "LoadGuard", "LoopLoad"]


class Hysteresis:
    """A flag that turns on above `above` and off only below `below` (clamped to `above`)."""

    def __init__(self, above: float, below: float) -> None:
        self.above, self.below = above, min(below, above)
        self.on = False

    def update(self, value: float) -> bool:
        self.on = value > (self.below if self.on else self.above)
        return self.on


#: the share of the loop thread's time above which the VAD batcher counts it as busy, and below
#: which it no longer does (batching lowers the load, which must not switch batching off again)
BUSY_ABOVE, IDLE_BELOW = 0.5, 0.3


class LoopLoad:
    """Whether the event loop's thread is busy: its CPU time over wall time, measured over spans
    of at least `span_s`, with hysteresis (call `busy` from the loop's thread)."""

    def __init__(self, busy_above: float = BUSY_ABOVE, idle_below: float = IDLE_BELOW,
                 span_s: float = 0.5) -> None:
        self._level = Hysteresis(busy_above, idle_below)
        self.span_s = span_s
        self._since = (time.monotonic(), time.thread_time())

    def busy(self) -> bool:
        wall, cpu = time.monotonic(), time.thread_time()
        if wall - self._since[0] >= self.span_s and wall > self._since[0]:
            self._level.update((cpu - self._since[1]) / (wall - self._since[0]))
            self._since = (wall, cpu)
        return self._level.on


@dataclass(frozen=True)
class Load:
    """The measures over the last window."""

    cpu_share: float  # the loop thread's CPU time over wall time
    lag_s: float  # 95th percentile of the probe's lag


class LoadGuard:
    """Whether the loop is too busy to take another session (see the module doc).  `run()` is the
    probe; `sample()` takes one reading and is what tests drive.  A threshold of 0 turns its
    measure off."""

    def __init__(self, *, cpu_above: float = 0.9, cpu_below: float = 0.75, lag_above_s: float = 0.05,
                 lag_below_s: float = 0.02, window_s: float = 3.0, interval_s: float = 0.05,
                 on_change: Callable[[bool, Load], None] | None = None) -> None:
        self._cpu = Hysteresis(cpu_above or float("inf"), cpu_below)
        self._lag = Hysteresis(lag_above_s or float("inf"), lag_below_s)
        self.window_s, self.interval_s = window_s, interval_s
        self.on_change = on_change
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque()  # wall, cpu, lag
        self.load = Load(0.0, 0.0)
        self.overloaded = False

    def sample(self, wall: float, cpu: float, lag_s: float) -> bool:
        """One reading of the probe (monotonic time, the thread's CPU time, how late it woke);
        returns whether the loop is overloaded.  No verdict before a whole window of readings."""
        samples = self._samples
        samples.append((wall, cpu, lag_s))
        while len(samples) > 1 and wall - samples[1][0] >= self.window_s:
            samples.popleft()  # keep the newest reading at least a window old as the start
        start_wall, start_cpu, _ = samples[0]
        if wall - start_wall < self.window_s:
            return self.overloaded
        lags = sorted(lag for _, _, lag in samples)
        self.load = Load((cpu - start_cpu) / (wall - start_wall), lags[int(0.95 * (len(lags) - 1))])
        overloaded = self._cpu.update(self.load.cpu_share) | self._lag.update(self.load.lag_s)
        if overloaded != self.overloaded:
            self.overloaded = overloaded
            if self.on_change is not None:
                self.on_change(overloaded, self.load)
        return overloaded

    async def run(self) -> None:
        """The probe: a reading every `interval_s` until cancelled (run it on the loop it measures)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = loop.time()
            self.sample(now, time.thread_time(), max(0.0, now - due))
