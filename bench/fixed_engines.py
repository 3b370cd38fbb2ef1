"""Fixed-latency STT, LLM and TTS servers (OpenAI-compatible HTTP) for the benchmarks.

One process serves all three, so the engines' own time is known exactly:

* `POST /v1/audio/transcriptions`: reads the upload, waits `--stt-ms`, answers `{"text": ...}`
  as plain JSON (like whisper-1, it ignores `stream=true`).
* `POST /v1/chat/completions` (stream=true): waits `--llm-ms`, then sends the first sentence of
  `--reply` in one delta (so the first clause is complete at the first token), the remaining
  sentences every `--sentence-ms`, then `finish_reason=stop`, usage and `[DONE]`.
* `POST /v1/audio/speech` (response_format=pcm): waits `--tts-ms`, then sends the whole clause's
  audio at once: a 440 Hz tone, PCM16 24 kHz, `--ms-per-char` per input character.
* `GET /stats`: requests served and how late the fixed waits actually ended (ms).

The tests' scripted servers (tests/support/scripted_*.py) are built to script failures and
record requests; their delays apply between deltas, not before the first, and they run in the
caller's process.  These run in their own process, so they do not share the load generator's
event loop or GIL.

    python bench/fixed_engines.py --port 8200 --stt-ms 50 --llm-ms 100 --tts-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "Sure, the kitchen lights are off now. Is there anything else?"
TRANSCRIPT = "turn off the lights in the kitchen"


class Engines:
    def __init__(self, args: argparse.Namespace) -> None:
        self.stt_s = args.stt_ms / 1000
        self.llm_s = args.llm_ms / 1000
        self.tts_s = args.tts_ms / 1000
        self.sentence_s = args.sentence_ms / 1000
        self.ms_per_char = args.ms_per_char
        self.sentences = [s for s in re.split(r"(?<=[.!?])\s+", args.reply.strip()) if s]
        self.counts = {"stt": 0, "llm": 0, "tts": 0}
        self.overshoot: dict[str, list[float]] = {"stt": [], "llm": [], "tts": []}
        self._tones: dict[int, bytes] = {}

    async def wait(self, stage: str, seconds: float) -> None:
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        self.overshoot[stage].append(time.perf_counter() - began - seconds)
        self.counts[stage] += 1

    def tone(self, chars: int) -> bytes:
        if chars not in self._tones:
            n = int(24 * self.ms_per_char * chars)
            t = np.arange(n) / 24000
            self._tones[chars] = np.round(0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
        return self._tones[chars]

    async def stt(self, request: Request) -> Response:
        await request.body()
        await self.wait("stt", self.stt_s)
        return JSONResponse({"text": TRANSCRIPT, "usage": {"type": "tokens", "input_tokens": 20, "output_tokens": 7,
                                                           "total_tokens": 27}})

    async def llm(self, request: Request) -> Response:
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "bench LLM only streams"}}, status_code=400)
        return StreamingResponse(self._sse(), media_type="text/event-stream")

    async def _sse(self) -> AsyncIterator[bytes]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": "bench",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data)}\n\n".encode()

        await self.wait("llm", self.llm_s)
        for i, sentence in enumerate(self.sentences):
            if i:
                await asyncio.sleep(self.sentence_s)
            last = i == len(self.sentences) - 1
            delta = {"content": sentence + ("" if last else " ")}
            if i == 0:
                delta["role"] = "assistant"
            yield chunk(delta)
        yield chunk({}, "stop")
        usage = {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}
        yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': 'bench', 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def tts(self, request: Request) -> Response:
        body = await request.json()
        if body.get("response_format") != "pcm":
            return JSONResponse({"error": {"message": "bench TTS only speaks pcm"}}, status_code=400)
        pcm = self.tone(len(str(body.get("input", ""))))
        await self.wait("tts", self.tts_s)
        return Response(pcm, media_type="audio/pcm")

    async def stats(self, request: Request) -> Response:
        def summary(xs: list[float]) -> dict[str, float]:
            if not xs:
                return {}
            a = np.array(xs) * 1000
            return {"mean_ms": round(float(a.mean()), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
                    "max_ms": round(float(a.max()), 3)}

        return JSONResponse({"requests": self.counts,
                             "wait_overshoot": {k: summary(v) for k, v in self.overshoot.items()}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stt-ms", type=float, default=50)
    parser.add_argument("--llm-ms", type=float, default=100)
    parser.add_argument("--tts-ms", type=float, default=50)
    parser.add_argument("--sentence-ms", type=float, default=0, help="wait between sentences after the first")
    parser.add_argument("--ms-per-char", type=float, default=30)
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    args = parser.parse_args()
    engines = Engines(args)
    app = Starlette(routes=[
        Route("/v1/audio/transcriptions", engines.stt, methods=["POST"]),
        Route("/v1/chat/completions", engines.llm, methods=["POST"]),
        Route("/v1/audio/speech", engines.tts, methods=["POST"]),
        Route("/stats", engines.stats, methods=["GET"]),
    ])
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                loop="auto", http="auto", backlog=4096)


if __name__ == "__main__":
    main()
