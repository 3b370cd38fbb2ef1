"""WebRTC calls: what one live call costs the server, and how long a call takes to set up.

N aiortc callers (this process, on the other core when there are two) call a real Parley server
(`bench/_server.py`, on core 0): SDP offer -> 201 answer -> data channel open ->
`session.created`.  Each caller then streams its microphone (Opus, 20 ms frames: speech from
flite in a loop, with pauses) while the server runs Silero VAD on it and plays 20 ms frames back
(silence between answers), which is the steady cost of a call.  Measured over `--seconds` with
all N calls up: server CPU (% of one core) and RSS, per call; setup time percentiles.

    python bench/webrtc_calls.py            # N = 1, 5, 10, 20
    python bench/webrtc_calls.py --quick    # N = 1, 3 (CI)
    python bench/webrtc_calls.py --profile 10   # py-spy on the server during 10 calls
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import API_KEY, Background, ParleyProc, cpu_plan, machine, pct, pin_self, pyplot, save, save_plot

from parley.audio.resample import resample
from tests.support.speech import make_speech
from tests.support.webrtc_client import RATE, WebRTCCaller


async def open_call(base_url: str) -> tuple[WebRTCCaller, dict[str, float]]:
    caller = WebRTCCaller(base_url, API_KEY)
    began = time.monotonic()
    response = await caller.connect()
    if response.status_code != 201:
        raise RuntimeError(f"call refused: {response.status_code} {response.text[:200]}")
    answered = time.monotonic()
    _, created_at, _ = await caller.wait_for("session.created", timeout=30)
    # no answers: measure the media path (VAD hears speech, turns end, nothing is generated)
    caller.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "create_response": False}}}}})
    return caller, {"answer_ms": 1000 * (answered - began), "session_created_ms": 1000 * (created_at - began)}


async def talk(caller: WebRTCCaller, speech: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        seconds = caller.mic.say(speech)
        try:
            await asyncio.wait_for(stop.wait(), seconds + 1.0)
        except asyncio.TimeoutError:
            pass


async def step(server: ParleyProc, n: int, seconds: float,
               on_steady: Callable[[], None] | None = None) -> dict[str, Any]:
    base_url = f"{server.http}/v1"
    opened = await asyncio.gather(*(open_call(base_url) for _ in range(n)), return_exceptions=True)
    callers = [o[0] for o in opened if not isinstance(o, BaseException)]
    setups = [o[1] for o in opened if not isinstance(o, BaseException)]
    failures = [repr(o) for o in opened if isinstance(o, BaseException)]
    clip = make_speech("turn off the lights in the kitchen", lead_ms=300, tail_ms=1200)
    speech = resample(clip.pcm, clip.rate, RATE)
    stop = asyncio.Event()
    talkers = [asyncio.create_task(talk(c, speech, stop)) for c in callers]
    await asyncio.sleep(2.0)  # settle
    server.lag()
    before = server.usage()
    background = Background([server.pid])
    if on_steady is not None:
        on_steady()
    await asyncio.sleep(seconds)
    after = server.usage()
    others = background.percent()
    lag = server.lag()
    stop.set()
    await asyncio.gather(*talkers, return_exceptions=True)
    turns = sum(c.types().count("input_audio_buffer.speech_stopped") for c in callers)
    await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
    cpu = after.cpu_percent_since(before)
    return {
        "calls": n, "connected": len(callers), "failures": failures[:3],
        "server_cpu_percent": round(cpu, 1),
        "server_cpu_percent_per_call": round(cpu / max(1, len(callers)), 2),
        "server_rss_mib": round(after.rss_bytes / 2**20, 1),
        "other_processes_cpu_percent": others,
        "turns_detected": turns, "turns_expected_about": int(len(callers) * seconds / (len(speech) / RATE + 1.0)),
        "loop_lag_ms": lag,
        "answer_ms": pct([s["answer_ms"] for s in setups]),
        "session_created_ms": pct([s["session_created_ms"] for s in setups]),
    }


def start_server(pin: bool) -> ParleyProc:
    server_cpus, load_cpus = cpu_plan(pin)
    pin_self(load_cpus)
    return ParleyProc({"PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "none",
                       "PARLEY_LLM_BASE_URL": "http://127.0.0.1:9/v1"}, cpus=server_cpus, name="webrtc-calls")


async def run(steps: list[int], seconds: float, pin: bool) -> dict[str, Any]:
    server_cpus = cpu_plan(pin)[0]  # before start_server pins this process to the other cores
    server = start_server(pin)
    try:
        idle = server.usage()
        results = []
        for n in steps:
            result = await step(server, n, seconds)
            print(f"N={n}: connected={result['connected']} server cpu={result['server_cpu_percent']}% "
                  f"({result['server_cpu_percent_per_call']}%/call) rss={result['server_rss_mib']} MiB "
                  f"answer p50={result['answer_ms'].get('p50')} ms turns={result['turns_detected']}")
            results.append(result)
            await asyncio.sleep(1.0)
    finally:
        server.stop()
    return {"machine": machine(), "seconds": seconds, "pinned": server_cpus is not None,
            "idle_rss_mib": round(idle.rss_bytes / 2**20, 1), "steps": results}


# (area, substrings of "function (file:line)" frames); the first match from the leaf upwards wins
AREAS = [
    ("Opus encode (aiortc OpusEncoder: PyAV resampler + libopus)", ["OpusEncoder.encode ("]),
    ("Opus decode (aiortc OpusDecoder, libopus)", ["OpusDecoder.decode ("]),
    ("SRTP protect/unprotect (pylibsrtp)", ["pylibsrtp"]),
    ("jitter buffer", ["jitterbuffer.py"]),
    ("aiortc RTP/RTCP (packets, sender, receiver, DTLS transport)", ["aiortc/rtp.py", "rtcrtpsender.py",
                                                                    "rtcrtpreceiver.py", "rtcdtlstransport.py"]),
    ("ICE and UDP (aioice)", ["aioice/"]),
    ("SCTP data channel", ["rtcsctptransport.py"]),
    ("microphone frames to mono PCM (RemoteMicrophone)", ["RemoteMicrophone.read"]),
    ("PlayoutTrack frames (and, since it encodes, Opus encode) and Playout",
     ["parley/transports/webrtc.py", "parley/runtime/playout.py"]),
    ("VAD inference (onnxruntime)", ["vad_silero.py"]),
    ("VAD batching", ["vad_batch.py"]),
    ("resampling (soxr): 48->24 kHz mic, 24->16 kHz VAD", ["resample.py", "soxr"]),
    ("session core and runtime", ["parley/core/", "parley/runtime/", "parley/server/"]),
    ("worker threads (executor, queues)", ["concurrent/futures", "threading.py", "queue.py"]),
    ("asyncio machinery", ["asyncio/", "uvloop"]),
]


# leaves where a thread waits: executor and decoder threads idle, or the loop inside uvloop's C code
# (epoll, and its own callback dispatch, which py-spy cannot tell apart without --native)
IDLE_LEAVES = ("Condition.wait (threading.py", "_worker (concurrent/futures/thread.py:81)",
               "Runner.run (asyncio/runners.py", "Queue.get (queue.py")


def busy_stacks(raw: Path) -> tuple[Path, float]:
    """`raw` without the stacks that end in a wait (a temporary copy); the share dropped, in %."""
    kept, dropped, total = [], 0, 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        if stack.rsplit(";", 1)[-1].startswith(IDLE_LEAVES):
            dropped += int(n)
        else:
            kept.append(line)
    busy = Path(tempfile.mkstemp(prefix="webrtc_profile_busy_", suffix=".txt")[1])
    busy.write_text("\n".join(kept) + "\n")
    return busy, round(100 * dropped / max(1, total), 1)


def profile(n: int, seconds: float, pin: bool) -> dict[str, Any]:
    """py-spy on the server (all threads, Python frames) while `n` calls talk."""
    from profile_server import py_spy, summarise

    raw = Path(__file__).parent / "results" / f"webrtc_profile-n{n}.txt"
    spy = py_spy()
    server = start_server(pin)
    recorded: dict[str, subprocess.CompletedProcess[str]] = {}

    def record() -> None:
        def go() -> None:
            recorded["raw"] = subprocess.run(
                [spy, "record", "--pid", str(server.pid), "--duration", str(int(seconds)), "--rate", "250",
                 "--nonblocking", "--format", "raw", "--output", str(raw)], capture_output=True, text=True)
        threading.Thread(target=go, daemon=True).start()

    try:
        result = asyncio.run(step(server, n, seconds + 1, on_steady=record))
        deadline = time.monotonic() + 30
        while "raw" not in recorded and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.stop()
    proc = recorded.get("raw")
    if proc is None or proc.returncode != 0:
        raise SystemExit(f"py-spy failed: {proc.stderr[-2000:] if proc else 'did not finish'}")
    busy, idle = busy_stacks(raw)
    summary = summarise(busy, AREAS)
    busy.unlink()
    summary["idle_or_uvloop_samples_dropped_percent"] = idle
    for area, share in summary["by_area_percent"].items():
        print(f"{share:5.1f} %  {area}")
    return {"benchmark": "webrtc_profile", "machine": machine(), "calls": n, "step": result, **summary,
            "raw_stacks": f"bench/results/{raw.name}"}


def plot(result: dict[str, Any]) -> str:
    steps = result["steps"]

    def draw(path: str) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([s["connected"] for s in steps], [s["server_cpu_percent"] for s in steps], "o-")
        ax.set_xlabel("concurrent WebRTC calls")
        ax.set_ylabel("server CPU (% of one core)")
        ax.set_title("Server CPU of live WebRTC calls (VAD on, no answers)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    return save_plot("webrtc_calls", draw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 3 for 4 s each (CI)")
    parser.add_argument("--steps", default="1,5,10,20")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to core 0")
    parser.add_argument("--profile", type=int, metavar="N", help="py-spy the server during N calls instead")
    args = parser.parse_args()
    if args.profile:
        save(f"webrtc_profile-n{args.profile}", profile(args.profile, args.seconds, not args.no_pin))
        return
    steps = [1, 3] if args.quick else [int(x) for x in args.steps.split(",")]
    seconds = 4.0 if args.quick else args.seconds
    result = asyncio.run(run(steps, seconds, not args.no_pin))
    if not args.quick:
        result["plot"] = plot(result)
    save("webrtc_calls-quick" if args.quick else "webrtc_calls", result)


if __name__ == "__main__":
    main()
