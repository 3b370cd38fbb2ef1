"""Shared pieces of the benchmarks: starting processes, reading /proc, percentiles, output."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support

API_KEY = "bench-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server cpus, load-generator cpus): with 2+ cores and `pin`, the server gets core 0 and the
    callers and engines the rest, so the load generator never steals the server's core."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin_self(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


class Proc:
    """A child process with its log under bench/results/logs/."""

    def __init__(self, args: list[str], env: dict[str, str], name: str, cpus: set[int] | None = None) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self._log = open(self.log_path, "wb")
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=preexec)  # noqa: PLW1509 - sets only the affinity
        self.pid = self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.log_path.name} exited with {self.proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class EngineServer(Proc):
    """bench/fixed_engines.py in a subprocess."""

    def __init__(self, *, stt_ms: float = 50, llm_ms: float = 100, tts_ms: float = 50, sentence_ms: float = 0,
                 reply: str | None = None, cpus: set[int] | None = None, name: str = "engines") -> None:
        self.port = free_port()
        args = [sys.executable, str(BENCH / "fixed_engines.py"), "--port", str(self.port), "--stt-ms", str(stt_ms),
                "--llm-ms", str(llm_ms), "--tts-ms", str(tts_ms), "--sentence-ms", str(sentence_ms)]
        if reply:
            args += ["--reply", reply]
        super().__init__(args, dict(os.environ), name, cpus)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        wait_http(f"http://127.0.0.1:{self.port}/stats", self, lambda r: r.status_code == 200)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()


class ParleyProc(Proc):
    """bench/_server.py (`parley serve` plus an event-loop lag probe) in a subprocess."""

    def __init__(self, env: dict[str, str], *, cpus: set[int] | None = None, name: str = "parley",
                 timeout_s: float = 60, script: Path | None = None, args: tuple[str, ...] = ()) -> None:
        """`script` (default bench/_server.py) gets `--port` and `args` (bench/_cluster_server.py: workers)."""
        self.port = free_port()
        # one key for every caller: lift the per-key session and token limits, which would
        # otherwise refuse callers (100 sessions) or responses (40k tokens a minute)
        full_env = {**os.environ, "PARLEY_API_KEYS": API_KEY, "PARLEY_LOG_LEVEL": "warning",
                    "PARLEY_MAX_SESSIONS_PER_KEY": "0", "PARLEY_TOKENS_PER_MINUTE": "1000000000", **env}
        super().__init__([sys.executable, str(script or BENCH / "_server.py"), "--port", str(self.port), *args],
                         full_env, name, cpus)
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"
        wait_http(f"{self.http}/readyz", self,
                  lambda r: r.status_code in (200, 503) and "loading" not in json.dumps(r.json().get("engines")),
                  timeout_s)

    def lag(self) -> dict[str, Any]:
        """Event-loop lag since the last call (ms percentiles)."""
        try:
            return httpx.get(f"{self.http}/bench/lag", timeout=60).json()
        except httpx.HTTPError as exc:
            return {"error": repr(exc)}

    def vad(self) -> dict[str, Any]:
        """The VAD batchers' model calls since the last call (bench/_server.py)."""
        try:
            return httpx.get(f"{self.http}/bench/vad", timeout=60).json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"error": repr(exc)}

    def metrics(self) -> dict[str, float]:
        try:
            return parse_metrics(httpx.get(f"{self.http}/metrics", timeout=60).text)
        except httpx.HTTPError:
            return {}

    def usage(self) -> ProcUsage:
        return ProcUsage.read(self.pid)


def wait_http(url: str, proc: Proc, ok: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.check()
        try:
            if ok(httpx.get(url, timeout=1)):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{url} did not come up: {proc.log_path.read_text(errors='replace')[-3000:]}")


class ProcUsage:
    """CPU seconds (user+system, all threads) and RSS of a process, from /proc."""

    def __init__(self, cpu_s: float, rss_bytes: int, at: float) -> None:
        self.cpu_s, self.rss_bytes, self.at = cpu_s, rss_bytes, at

    @classmethod
    def read(cls, pid: int) -> ProcUsage:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        return cls(cpu, rss, time.monotonic())

    @classmethod
    def read_tree(cls, pid: int) -> ProcUsage:
        """The same, summed over `pid` and its descendants (a supervisor and its workers)."""
        root = cls.read(pid)  # raises when `pid` is gone
        cpu, rss = root.cpu_s, root.rss_bytes
        for p in process_tree(pid)[1:]:
            try:
                u = cls.read(p)
            except (OSError, ValueError):
                continue
            cpu, rss = cpu + u.cpu_s, rss + u.rss_bytes
        return cls(cpu, rss, time.monotonic())

    def cpu_percent_since(self, before: ProcUsage) -> float:
        return 100.0 * (self.cpu_s - before.cpu_s) / max(1e-9, self.at - before.at)


_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, Any]:
    """Count, mean and bucket counts of histogram `name` between two scrapes."""
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    buckets = {}
    for key, value in after.items():
        if key.startswith(f"{name}_bucket"):
            le = key.split('le="')[1].rstrip('"}')
            buckets[le] = int(value - before.get(key, 0))
    return {"count": int(count), "mean_ms": round(1000 * total / count, 2) if count else None,
            "p50_le_ms": _bucket_quantile(buckets, count, 0.5), "p95_le_ms": _bucket_quantile(buckets, count, 0.95)}


def _bucket_quantile(buckets: dict[str, int], count: float, q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (Prometheus buckets are coarse)."""
    if not count:
        return None
    for le, n in sorted(((float(k), v) for k, v in buckets.items())):
        if n >= q * count:
            return round(1000 * le, 1) if le != float("inf") else None
    return None


def pct(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | int | None]:
    import numpy as np

    out: dict[str, float | int | None] = {"n": len(values)}
    for q in qs:
        out[f"p{q}"] = round(float(np.percentile(values, q)), 2) if values else None
    if values:
        out["mean"] = round(float(np.mean(values)), 2)
        out["max"] = round(float(np.max(values)), 2)
    return out


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return path


def save_plot(name: str, draw: Any) -> str:
    """Draw into bench/results/<name>.png with `draw(path)`; the path to cite, or the error
    (the numbers matter more than the picture)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{name}.png"
    try:
        draw(str(png))
    except Exception as exc:  # noqa: BLE001
        return repr(exc)
    return f"bench/results/{png.name}"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants now (the server's pocketsphinx workers are ours, not noise)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class Background:
    """How busy the machine was with processes other than ours (other users' work shares these
    cores and skews the numbers): total busy CPU from /proc/stat minus our processes' CPU."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.start = self._read()

    def _read(self) -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait
        ours = 0.0
        for pid in {p for root in self.pids for p in process_tree(root)}:  # with the server's workers
            try:
                ours += ProcUsage.read(pid).cpu_s
            except (OSError, ValueError):
                pass
        return busy, ours, time.monotonic()

    def percent(self) -> float:
        """Other processes' CPU since creation, in % of one core (200 = both cores of two)."""
        busy, ours, at = self._read()
        return round(100 * max(0.0, (busy - self.start[0]) - (ours - self.start[1])) / max(1e-9, at - self.start[2]), 1)


class Sampler:
    """Samples a process's CPU time and RSS every `period_s` in a thread."""

    def __init__(self, pid: int, period_s: float = 0.5, tree: bool = False) -> None:
        """`tree`: the process and its descendants together (ProcUsage.read_tree)."""
        import threading

        self.pid, self.period_s = pid, period_s
        self._read = ProcUsage.read_tree if tree else ProcUsage.read
        self.samples: list[ProcUsage] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._read(self.pid))
            except (OSError, ValueError):
                return
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """CPU % (of one core) between the first and last samples in [start, end] (monotonic
        times), and the peak RSS in it."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            return {"cpu_percent": None, "rss_peak_mib": None}
        return {"cpu_percent": round(inside[-1].cpu_percent_since(inside[0]), 1),
                "rss_peak_mib": round(max(s.rss_bytes for s in inside) / 2**20, 1)}
