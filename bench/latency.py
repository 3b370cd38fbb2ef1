"""Latency the server adds to the first audio, for N concurrent callers.

    .venv/bin/python bench/latency.py [--quick] [--sessions 1,10,50,100,200] [--no-pin]

Each caller streams test speech (flite) at real-time pace in 20 ms chunks, with pauses, to a
real Parley server (server_vad, silence_duration_ms 500, create_response) whose STT, LLM and TTS
are fixed-latency servers (bench/fixed_engines.py: STT 50 ms, LLM first token 100 ms, TTS first
audio 50 ms; the engines' known time, 200 ms, is subtracted).  Per turn, in ms:

* `added_ms` (the issue's definition): first `response.output_audio.delta` at the client minus
  (the time the chunk holding the last speech sample was sent + the 500 ms silence window) minus
  200.  It includes the VAD model's own end-of-speech delay (Silero's probability stays high for
  a while after the voice stops, and decisions come in 32 ms windows), which is the model's,
  not the server's.
* `server_added_ms`: the same, but from the moment the server had the audio its VAD decided on:
  the `speech_stopped` event's `audio_end_ms` (on the VAD's audio clock) maps to the chunk that
  completed it; from that chunk's send time to the first audio delta, minus 200.  This is the
  time spent in Parley (parsing, VAD, commit, the HTTP calls' overhead, the pipeline, sending)
  and on the loopback network.
* `vad_end_delay_ms`: audio_end_ms - 500 - the true end of speech (audio time).

With 2+ cores the server is pinned to core 0 and the callers and engines to the others
(--no-pin to share).  The server's event-loop lag comes from a probe task in the server
(bench/_server.py); the client's own lag is reported too, as a check that the load generator
kept up.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from _common import save_plot, Background, EngineServer, ParleyProc, cpu_plan, histogram_delta, machine, pct, pin_self, pyplot, save
from _load import Clip, Conversation, VadClock, counts, run_callers, turn_metrics, voice_session

STT_MS, LLM_MS, TTS_MS = 50, 100, 50
ENGINES_MS = STT_MS + LLM_MS + TTS_MS
SILENCE_MS = 500


def turns_for(n: int, quick: bool) -> int:
    if quick:
        return 1
    return 10 if n == 1 else 5 if n <= 10 else 3


def parley_env(engines: EngineServer) -> dict[str, str]:
    return {"PARLEY_LLM_BASE_URL": engines.base_url, "PARLEY_LLM_MODEL": "bench",
            "PARLEY_STT_BASE_URL": engines.base_url, "PARLEY_STT_ENGINE": "openai",
            "PARLEY_TTS_BASE_URL": engines.base_url, "PARLEY_TTS_ENGINE": "openai"}


def engine_floor(engines: EngineServer, rounds: int = 10) -> dict[str, float]:
    """The fixed engines' HTTP round trip beyond their fixed wait, median ms, seen from a plain
    httpx client (keep-alive): what the engine server and loopback HTTP cost any client; and
    through the `openai` SDK (async), which Parley's remote engines use.  Measured from the
    load generator's core, with no other load."""
    import io
    import statistics
    import wave

    import httpx

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(bytes(64000))
    wav = buf.getvalue()
    out: dict[str, list[float]] = {"stt": [], "llm_first_token": [], "tts_first_audio": []}
    chat = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    speech = {"model": "tts-1", "voice": "alloy", "input": "Sure, the kitchen lights are off now.",
              "response_format": "pcm"}
    with httpx.Client(base_url=engines.base_url, timeout=10) as client:
        for i in range(rounds + 1):
            t = time.perf_counter()
            client.post("/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                        data={"model": "whisper-1"}).raise_for_status()
            stt = time.perf_counter() - t
            t = time.perf_counter()
            with client.stream("POST", "/chat/completions", json=chat) as r:
                for line in r.iter_lines():
                    if '"content"' in line:
                        break
            llm = time.perf_counter() - t
            t = time.perf_counter()
            with client.stream("POST", "/audio/speech", json=speech) as r:
                next(r.iter_bytes())
            tts = time.perf_counter() - t
            if i:  # the first round opens the connection
                out["stt"].append(1000 * stt - STT_MS)
                out["llm_first_token"].append(1000 * llm - LLM_MS)
                out["tts_first_audio"].append(1000 * tts - TTS_MS)
    result = {k: round(statistics.median(v), 2) for k, v in out.items()}
    return {"httpx": result, "openai_sdk": asyncio.run(_engine_floor_sdk(engines, wav, chat, speech, rounds))}


async def _engine_floor_sdk(engines: EngineServer, wav: bytes, chat: dict, speech: dict, rounds: int) -> dict:
    """The same three calls through the `openai` SDK's async client, as Parley's engines make them."""
    import statistics

    import openai

    client = openai.AsyncOpenAI(base_url=engines.base_url, api_key="bench")
    out: dict[str, list[float]] = {"stt": [], "llm_first_token": [], "tts_first_audio": []}
    try:
        for i in range(rounds + 1):
            t = time.perf_counter()
            async with client.audio.transcriptions.with_streaming_response.create(
                    model="whisper-1", file=("a.wav", wav, "audio/wav")) as r:
                await r.read()
            stt = time.perf_counter() - t
            t = time.perf_counter()
            stream = await client.chat.completions.create(model="bench", messages=chat["messages"], stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            llm = time.perf_counter() - t
            await stream.close()
            t = time.perf_counter()
            async with client.audio.speech.with_streaming_response.create(**speech) as r:
                async for _ in r.iter_bytes():
                    break
            tts = time.perf_counter() - t
            if i:
                out["stt"].append(1000 * stt - STT_MS)
                out["llm_first_token"].append(1000 * llm - LLM_MS)
                out["tts_first_audio"].append(1000 * tts - TTS_MS)
    finally:
        await client.close()
    return {k: round(statistics.median(v), 2) for k, v in out.items()}


def warm_up(server: ParleyProc, clip: Clip) -> None:
    """One caller, one turn, not measured: the first request of each HTTP client (connections,
    the openai SDK's lazily built models, imports) costs tens of ms once per process."""
    asyncio.run(run_callers(server.ws_url, 1, lambda i: Conversation(1, lead_s=(0.3, 0.3)), clip, budget_s=20,
                            session=voice_session(SILENCE_MS)))


def run_one(n: int, engines: EngineServer, clip: Clip, vad: VadClock, server_cpus: set[int] | None,
            quick: bool, deflate: bool) -> dict:
    server = ParleyProc(parley_env(engines), cpus=server_cpus, name=f"latency-n{n}")
    try:
        stagger = 0.3 if quick else min(3.0, 0.5 + n / 60)
        turns = turns_for(n, quick)
        budget = 20 + turns * 12 + stagger
        marks: dict[str, object] = {}
        warm_up(server, clip)

        def steady(_t: float) -> None:
            server.lag()  # forget the lag of the connection phase
            marks["metrics"], marks["usage"] = server.metrics(), server.usage()
            marks["background"] = Background([server.pid, engines.pid])

        def ended() -> None:
            marks["background_pct"] = marks["background"].percent()  # type: ignore[attr-defined]
            marks["lag"], marks["usage_end"], marks["metrics_end"] = server.lag(), server.usage(), server.metrics()

        def script(i: int) -> Conversation:
            return Conversation(turns, lead_s=(0.5, 0.5 + stagger), rng=random.Random(i))

        result = asyncio.run(run_callers(server.ws_url, n, script, clip, budget_s=budget,
                                         session=voice_session(SILENCE_MS), deflate=deflate, on_steady=steady,
                                         before_close=ended))
        background, lag = marks["background_pct"], marks["lag"]
        usage, after = marks["usage_end"], marks["metrics_end"]
        m = turn_metrics(result, vad, silence_ms=SILENCE_MS, engines_ms=ENGINES_MS)
        before = marks["metrics"]
        return {
            "sessions": n, **counts(result),
            "added_ms": pct(m["added_ms"]), "server_added_ms": pct(m["server_added_ms"]),
            "vad_end_delay_ms": pct(m["vad_end_delay_ms"]), "speech_stopped_lag_ms": pct(m["stop_event_lag_ms"]),
            "speech_started_lag_ms": pct(m["start_event_lag_ms"]),
            "server_loop_lag_ms": lag, "client_loop_lag_ms": pct(result.client_lag_ms),
            "server_cpu_percent": round(usage.cpu_percent_since(marks["usage"]), 1),
            "server_rss_mib": round(usage.rss_bytes / 2**20, 1),
            "other_processes_cpu_percent": background,
            "server_metrics": {name: histogram_delta(before, after, f"parley_{name}_seconds") for name in (
                "speech_end_to_first_audio", "stt", "llm_first_token", "tts_first_audio")},
            "_samples": {"added_ms": m["added_ms"], "server_added_ms": m["server_added_ms"]},
        }
    finally:
        server.stop()


def plot(runs: list[dict], path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ns = [r["sessions"] for r in runs]
    for ax, key, title in ((axes[0], "server_added_ms", "Server-added latency (from the VAD's decision)"),
                           (axes[1], "added_ms", "Added latency (from true end of speech + 500 ms)")):
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax.plot(ns, [r[key][q] if r[key][q] is not None else float("nan") for r in runs], style, label=q)
        ax.axhline(5, color="green", lw=0.8, ls="--", label="target p50 5 ms")
        ax.axhline(20, color="red", lw=0.8, ls="--", label="target p99 20 ms")
        if len(ns) > 1:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("ms beyond silence window + engines (200 ms), log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 10 with one turn each")
    parser.add_argument("--sessions", default=None, help="comma-separated N values")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to its own core")
    parser.add_argument("--deflate", action="store_true", help="callers negotiate permessage-deflate")
    args = parser.parse_args()
    ns = [int(x) for x in args.sessions.split(",")] if args.sessions else ([1, 10] if args.quick else [1, 10, 50, 100, 200])
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    pin_self(client_cpus)
    began = time.monotonic()
    clip = Clip.make()
    vad = VadClock(60_000)
    engines = EngineServer(stt_ms=STT_MS, llm_ms=LLM_MS, tts_ms=TTS_MS, cpus=client_cpus, name="latency-engines")
    runs = []
    try:
        floor = engine_floor(engines, 3 if args.quick else 10)
        for n in ns:
            runs.append(run_one(n, engines, clip, vad, server_cpus, args.quick, args.deflate))
        engine_stats = engines.stats()
    finally:
        engines.stop()
    name = "latency-quick" if args.quick else "latency"
    plot_ref = save_plot(name, lambda path: plot(runs, path))
    by_n = {r["sessions"]: r for r in runs}
    at100 = by_n.get(100)
    result = {
        "benchmark": "latency", "quick": args.quick, "machine": machine(),
        "setup": {"engines_ms": {"stt": STT_MS, "llm_first_token": LLM_MS, "tts_first_audio": TTS_MS},
                  "silence_duration_ms": SILENCE_MS, "chunk_ms": 20, "pinned": server_cpus is not None,
                  "server_cpus": sorted(server_cpus or []), "client_cpus": sorted(client_cpus or []),
                  "deflate": args.deflate},
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "engine_wait_overshoot": engine_stats,
        "engine_http_floor_ms": floor,
        "target_at_100": None if at100 is None else {
            "server_added": {"p50": at100["server_added_ms"]["p50"], "p99": at100["server_added_ms"]["p99"],
                             "met": (at100["server_added_ms"]["p50"] or 1e9) <= 5 and (at100["server_added_ms"]["p99"] or 1e9) <= 20},
            "added": {"p50": at100["added_ms"]["p50"], "p99": at100["added_ms"]["p99"],
                      "met": (at100["added_ms"]["p50"] or 1e9) <= 5 and (at100["added_ms"]["p99"] or 1e9) <= 20}},
        "plot": plot_ref, "elapsed_s": round(time.monotonic() - began, 1),
    }
    save(name, result)


if __name__ == "__main__":
    main()
