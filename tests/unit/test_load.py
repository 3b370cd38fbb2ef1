"""The event loop's load measures (runtime/load.py): the thread's CPU share and the probe's lag,
over a window, with hysteresis."""

from __future__ import annotations

import asyncio
import time

from parley.runtime.load import Load, LoadGuard, LoopLoad


def test_loop_load_is_the_threads_cpu_share_with_hysteresis() -> None:
    load = LoopLoad(busy_above=0.6, idle_below=0.2, span_s=0.05)

    def spend(share: float) -> None:  # a span in which the thread works `share` of the time
        spin_until = time.monotonic() + 0.1 * share
        while time.monotonic() < spin_until:
            pass
        time.sleep(0.1 * (1 - share))

    spend(0.0)
    assert not load.busy()
    spend(1.0)
    assert load.busy()
    spend(0.4)  # between the thresholds: stays busy
    assert load.busy()
    spend(0.0)
    assert not load.busy()
    spend(0.4)  # and stays idle
    assert not load.busy()


class Feed:
    """Readings for a guard, every 50 ms: the thread busy `share` of each, woken `lag_s` late."""

    def __init__(self, guard: LoadGuard) -> None:
        self.guard, self.wall, self.cpu = guard, 0.0, 0.0

    def run(self, seconds: float, share: float = 0.0, lag_s: float = 0.001) -> bool:
        for _ in range(round(seconds / 0.05)):
            self.wall += 0.05
            self.cpu += 0.05 * share
            self.guard.sample(self.wall, self.cpu, lag_s)
        return self.guard.overloaded


def test_the_cpu_share_over_the_window_trips_the_guard_and_clears_it_with_hysteresis() -> None:
    changes: list[tuple[bool, Load]] = []
    guard = LoadGuard(cpu_above=0.9, cpu_below=0.75, window_s=2.0, on_change=lambda *c: changes.append(c))
    feed = Feed(guard)
    assert not feed.run(1.0, share=1.0)  # no verdict before a whole window
    assert feed.run(1.5, share=1.0)  # then the window is all busy
    assert guard.load.cpu_share > 0.9
    assert feed.run(4.0, share=0.8)  # between the thresholds: stays overloaded
    assert not feed.run(0.5, share=0.0)  # the window's share is still over 0.75
    assert not feed.run(2.0, share=0.0) and guard.load.cpu_share == 0.0
    assert not feed.run(4.0, share=0.8)  # and between them it stays clear
    assert [c[0] for c in changes] == [True, False]  # one change each way, whatever the readings
    assert changes[0][1].cpu_share > 0.9 and changes[1][1].cpu_share < 0.75


def test_a_window_busy_part_of_the_time_is_judged_by_its_share() -> None:
    guard = LoadGuard(cpu_above=0.5, cpu_below=0.3, window_s=2.0)
    feed = Feed(guard)
    feed.run(3.0)
    assert not feed.run(0.9, share=1.0)  # 0.9 s of the last 2 busy: 0.45
    assert 0.4 < guard.load.cpu_share < 0.5
    assert feed.run(0.2, share=1.0)  # 1.1 s of 2: 0.55


def test_lag_trips_by_its_95th_percentile_so_a_lone_stall_does_not() -> None:
    guard = LoadGuard(cpu_above=0, lag_above_s=0.05, lag_below_s=0.02, window_s=2.0)
    feed = Feed(guard)
    assert not feed.run(3.0)
    assert not feed.run(0.05, lag_s=0.5)  # one stall in 40 readings
    assert not feed.run(1.0)
    assert feed.run(2.0, lag_s=0.06)  # late every time (a loop waiting for its core)
    assert guard.load.lag_s == 0.06
    assert feed.run(2.0, lag_s=0.03)  # under 50 ms but over the 20 ms to clear
    assert not feed.run(2.0, lag_s=0.005)


def test_thresholds_of_zero_turn_a_measure_off() -> None:
    guard = LoadGuard(cpu_above=0, lag_above_s=0, window_s=1.0)
    assert not Feed(guard).run(3.0, share=1.0, lag_s=1.0)


async def test_the_probe_measures_a_loop_that_is_really_busy_then_idle() -> None:
    """The probe on a real loop: callbacks that hold the thread (spinning) trip both measures,
    and both clear once the loop is idle again."""
    guard = LoadGuard(cpu_above=0.6, cpu_below=0.3, lag_above_s=0.03, lag_below_s=0.02, window_s=0.5,
                      interval_s=0.02)
    probe = asyncio.create_task(guard.run())
    try:
        await asyncio.sleep(0.6)
        assert not guard.overloaded
        deadline = time.monotonic() + 5
        while not guard.overloaded and time.monotonic() < deadline:
            spin_until = time.monotonic() + 0.05  # 50 ms of work per turn of the loop
            while time.monotonic() < spin_until:
                pass
            await asyncio.sleep(0)
        assert guard.overloaded
        assert guard.load.lag_s > 0.03 or guard.load.cpu_share > 0.6
        deadline = time.monotonic() + 5
        while guard.overloaded and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not guard.overloaded
        assert guard.load.cpu_share < 0.3 and guard.load.lag_s < 0.02
    finally:
        probe.cancel()
