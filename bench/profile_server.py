"""Where the server's time goes under load: py-spy on a Parley server serving N callers.

    .venv/bin/python bench/profile_server.py [--sessions 50] [--seconds 20] [--quick]

Runs the latency benchmark's setup (fixed-latency engines, server_vad, real Silero VAD, callers
speaking with pauses), and while the callers talk records the server process with
`py-spy record --nonblocking` (pip install py-spy; it needs ptrace permission).  Prints the
share of the server's busy samples by function (self and inclusive) and by area, and saves the
flame graph (SVG) and the raw collapsed stacks in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import RESULTS, EngineServer, ParleyProc, cpu_plan, machine, pin_self, save
from _load import Clip, Conversation, counts, run_callers, voice_session
from latency import parley_env, warm_up

# (area, substrings of "function (file)" frames); the first match from the leaf upwards wins
AREAS = [
    ("VAD inference (onnxruntime)", ["vad_silero.py"]),
    ("VAD batching (futures, scheduling)", ["vad_batch.py"]),
    ("resampling (soxr)", ["resample.py", "soxr"]),
    ("client event parsing (pydantic)", ["client_events.py", "strict.py", "pydantic"]),
    ("JSON encode/decode", ["json/"]),
    ("base64", ["base64"]),
    ("session core", ["parley/core/"]),
    ("engine HTTP clients (openai SDK, httpx)", ["openai/", "httpx", "httpcore", "anyio", "h11"]),
    ("WebSocket transport (websockets, starlette, uvicorn)", ["websockets/", "starlette/", "uvicorn/"]),
    ("metrics (prometheus_client)", ["prometheus_client"]),
    ("logging", ["logging/"]),
    ("parley runtime", ["parley/runtime/", "parley/transports/", "parley/server/"]),
    ("asyncio machinery", ["asyncio/"]),
]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def area_of(frames: list[str], areas: list[tuple[str, list[str]]] = AREAS) -> str:
    for frame in reversed(frames):
        for area, needles in areas:
            if any(n in frame for n in needles):
                return area
    return "other"


def summarise(raw: Path, areas: list[tuple[str, list[str]]] = AREAS) -> dict:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        by_area[area_of(frames, areas)] += count

    def top(c: collections.Counter[str], k: int) -> list[dict]:
        return [{"frame": f, "percent": round(100 * v / total, 1)} for f, v in c.most_common(k)]

    return {"samples": total, "by_area_percent": {a: round(100 * v / total, 1) for a, v in by_area.most_common()},
            "top_self": top(self_t, 25), "top_inclusive": top(incl, 40)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--native", action="store_true", help="include native frames (slower)")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.seconds = 5, 5
    spy = py_spy()
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    pin_self(client_cpus)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"profile-n{args.sessions}"
    raw, svg = RESULTS / f"{stem}.txt", RESULTS / f"{stem}.svg"
    clip = Clip.make()
    engines = EngineServer(cpus=client_cpus, name="profile-engines")
    server = ParleyProc(parley_env(engines), cpus=server_cpus, name=f"profile-n{args.sessions}")
    try:
        warm_up(server, clip)
        recorder: dict[str, subprocess.CompletedProcess] = {}

        def record(_t: float) -> None:
            def go() -> None:
                time.sleep(2.5)  # let every caller start talking
                base = [spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)),
                        "--rate", "250", "--nonblocking"] + (["--native"] if args.native else [])
                recorder["raw"] = subprocess.run(base + ["--format", "raw", "--output", str(raw)],
                                                 capture_output=True, text=True)
            threading.Thread(target=go, daemon=True).start()

        result = asyncio.run(run_callers(
            server.ws_url, args.sessions,
            lambda i: Conversation(1000, lead_s=(0.5, 3.0), rng=random.Random(i)), clip,
            budget_s=args.seconds + 4, session=voice_session(), on_steady=record))
        deadline = time.monotonic() + 30
        while "raw" not in recorder and time.monotonic() < deadline:
            time.sleep(0.2)
        proc = recorder.get("raw")
        if proc is None or proc.returncode != 0 or not raw.exists():
            raise SystemExit(f"py-spy failed: {proc.stderr[-2000:] if proc else 'did not finish'}")
        summary = summarise(raw)
    finally:
        server.stop()
        engines.stop()
    svg_ok = _flamegraph(raw, svg)
    save(f"{stem}{'-quick' if args.quick else ''}", {
        "benchmark": "profile", "machine": machine(), "sessions": args.sessions, "seconds": args.seconds,
        "load": counts(result), **summary, "raw_stacks": f"bench/results/{raw.name}",
        "flamegraph": f"bench/results/{svg.name}" if svg_ok else None})


def _flamegraph(raw: Path, svg: Path) -> bool:
    """A minimal SVG icicle chart of the collapsed stacks (py-spy's own SVG needs a second run)."""
    tree: dict = {"n": 0, "kids": {}}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        node = tree
        node["n"] += int(n)
        for f in stack.split(";"):
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += int(n)
    if not tree["n"]:
        return False
    width, row = 1600, 16
    rects: list[str] = []
    depth_max = [0]

    def walk(node: dict, name: str, x: float, depth: int) -> None:
        w = width * node["n"] / tree["n"]
        if w < 1:
            return
        depth_max[0] = max(depth_max[0], depth)
        label = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        hue = 20 + (hash(name) % 40)
        rects.append(f'<g><title>{label} ({100 * node["n"] / tree["n"]:.1f}%)</title>'
                     f'<rect x="{x:.1f}" y="{depth * row}" width="{w:.1f}" height="{row - 1}" '
                     f'fill="hsl({hue},80%,60%)"/>'
                     + (f'<text x="{x + 2:.1f}" y="{depth * row + 12}" font-size="10">{label[: int(w / 6)]}</text>'
                        if w > 30 else "") + "</g>")
        cx = x
        for kid_name, kid in sorted(node["kids"].items(), key=lambda kv: -kv[1]["n"]):
            walk(kid, kid_name, cx, depth + 1)
            cx += width * kid["n"] / tree["n"]

    walk(tree, "all", 0, 0)
    svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{(depth_max[0] + 1) * row}" '
                   f'font-family="monospace">{"".join(rects)}</svg>')
    return True


if __name__ == "__main__":
    main()
