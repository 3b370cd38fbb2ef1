"""Operations: graceful shutdown and slow readers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import websockets

from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import Text


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_sigterm_drains_live_sessions_then_closes_them(scripted_llm, llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_SHUTDOWN_GRACE_S": "2"}
    server = ParleyServer(env, name="shutdown").start()
    headers = {"Authorization": f"Bearer {server.api_key}"}
    url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
    try:
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.recv()  # session.created
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # a live session keeps working during the grace period ...
            llm.enqueue(Text("still serving"))
            await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                pass
            assert event["response"]["status"] == "completed"
            # ... while new sessions are turned away with "try again later"
            async with websockets.connect(url, additional_headers=headers) as late:
                refusal = json.loads(await late.recv())
                assert refusal["error"]["code"] == "server_shutting_down"
                await late.wait_closed()
                assert late.close_code == 1013
            # after the grace period the live session is closed with "going away"
            started = time.monotonic()
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1001
            assert time.monotonic() - started < 5
        assert server.proc.wait(10) == 0
    finally:
        server.stop()


async def test_a_client_that_does_not_read_is_bounded_and_closed(scripted_llm, llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_OUTBOX_MAX_BYTES": str(256 * 1024),
           "PARLEY_SLOW_CLIENT_TIMEOUT_S": "2"}
    with ParleyServer(env, name="slowreader") as server:
        assert server.proc is not None
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        long_reply = " ".join(f"Sentence number {i} is here to make a long spoken answer." for i in range(400))
        llm.enqueue(Text(long_reply, chunk_size=200))
        rss_before = _rss_kib(server.proc.pid)
        # a tiny receive window and no reading: the server's writes back up at once
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.api_key}"},
                                      max_queue=1) as ws:
            await ws.send(json.dumps({"type": "response.create"}))  # a long *spoken* reply: lots of audio
            peak = rss_before
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                peak = max(peak, _rss_kib(server.proc.pid))
                if "does not read" in server.log():
                    break
                await asyncio.sleep(0.2)
            assert "does not read" in server.log(), "the slow client was never closed"
        growth_mib = (peak - rss_before) / 1024
        print(f"\nslow reader: server RSS grew by {growth_mib:.1f} MiB before the session was closed")
        assert growth_mib < 64
        # the server is fine for everyone else
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.api_key}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_per_key_limits(scripted_llm, llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_MAX_SESSIONS_PER_KEY": "1",
           "PARLEY_TOKENS_PER_MINUTE": "50", "PARLEY_API_KEYS": "key-a,key-b"}
    with ParleyServer(env, name="limits", api_key="key-a") as server:
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer key-a"}) as ws:
            await ws.recv()
            # a second session on the same key is turned away; another key is not
            async with websockets.connect(url, additional_headers={"Authorization": "Bearer key-a"}) as extra:
                assert json.loads(await extra.recv())["error"]["code"] == "session_limit_exceeded"
                await extra.wait_closed()
                assert extra.close_code == 1013
            async with websockets.connect(url, additional_headers={"Authorization": "Bearer key-b"}) as other:
                assert json.loads(await other.recv())["type"] == "session.created"
            # tokens per minute: the first response uses up the budget, rate_limits.updated says so
            llm.enqueue(Text("word " * 80))
            await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            while (event := json.loads(await ws.recv()))["type"] != "rate_limits.updated":
                pass
            tokens = event["rate_limits"][0]
            assert tokens["limit"] == 50 and tokens["remaining"] == 0 and 0 < tokens["reset_seconds"] <= 60
            await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                pass
            assert event["response"]["status"] == "failed"
            assert event["response"]["status_details"]["error"]["code"] == "rate_limit_exceeded"
