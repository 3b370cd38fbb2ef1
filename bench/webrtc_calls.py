"""WebRTC calls: what one live call costs the server, and how long a call takes to set up.

N aiortc callers (this process, on the other core when there are two) call a real Parley server
(`bench/_server.py`, on core 0): SDP offer -> 201 answer -> data channel open ->
`session.created`.  Each caller then streams its microphone (Opus, 20 ms frames: speech from
flite in a loop, with pauses) while the server runs Silero VAD on it and plays 20 ms frames back
(silence between answers), which is the steady cost of a call.  Measured over `--seconds` with
all N calls up: server CPU (% of one core) and RSS, per call; setup time percentiles.

    python bench/webrtc_calls.py            # N = 1, 5, 10, 20
    python bench/webrtc_calls.py --quick    # N = 1, 3 (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from _common import API_KEY, ParleyProc, cpu_plan, machine, pct, pin_self, pyplot, save, save_plot

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


async def step(server: ParleyProc, n: int, seconds: float) -> dict[str, Any]:
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
    await asyncio.sleep(seconds)
    after = server.usage()
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
        "turns_detected": turns, "turns_expected_about": int(len(callers) * seconds / (len(speech) / RATE + 1.0)),
        "loop_lag_ms": lag,
        "answer_ms": pct([s["answer_ms"] for s in setups]),
        "session_created_ms": pct([s["session_created_ms"] for s in setups]),
    }


async def run(steps: list[int], seconds: float, pin: bool) -> dict[str, Any]:
    server_cpus, load_cpus = cpu_plan(pin)
    pin_self(load_cpus)
    server = ParleyProc({"PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "none",
                         "PARLEY_LLM_BASE_URL": "http://127.0.0.1:9/v1"}, cpus=server_cpus, name="webrtc-calls")
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
    args = parser.parse_args()
    steps = [1, 3] if args.quick else [int(x) for x in args.steps.split(",")]
    seconds = 4.0 if args.quick else args.seconds
    result = asyncio.run(run(steps, seconds, not args.no_pin))
    result["plot"] = plot(result)
    save("webrtc_calls", result)


if __name__ == "__main__":
    main()
