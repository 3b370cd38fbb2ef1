"""Admission control: a process-wide session cap (`PARLEY_MAX_SESSIONS`) and refusing new
sessions while the event loop is overloaded, with real clients over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from tests.support.event_schema import validate_server_event
from tests.support.parley_server import ParleyServer


@pytest.fixture(scope="module")
def capped(scripted_llm) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_MAX_SESSIONS": "2"}
    with ParleyServer(env, name="capped") as server:
        yield server


async def _created(conn: Any) -> dict[str, Any]:
    event = json.loads(await conn.recv_bytes())
    validate_server_event(event)
    return event


async def _refused(conn: Any) -> dict[str, Any]:
    """The one `error` event of a refused session, then a close with 1013 ("try again later")."""
    event = await _created(conn)
    assert event["type"] == "error", event
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await conn.recv_bytes()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    return event["error"]


async def _readyz(server: ParleyServer) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"http://127.0.0.1:{server.port}/readyz", timeout=10)


async def _until_ready(server: ParleyServer, status: int, timeout_s: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while (ready := await _readyz(server)).status_code != status:
        assert time.monotonic() < deadline, f"/readyz stayed {ready.status_code}: {ready.text}"
        await asyncio.sleep(0.1)
    return ready


def _refusals(server: ParleyServer, reason: str) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    line = f'parley_sessions_refused_total{{reason="{reason}"}} '
    return sum(float(m.split()[-1]) for m in metrics.splitlines() if m.startswith(line))


async def test_the_session_cap_refuses_the_newest_until_one_closes(capped) -> None:
    client = AsyncOpenAI(api_key=capped.api_key, base_url=capped.base_url, websocket_base_url=capped.ws_base_url)
    async with AsyncExitStack() as live:
        first = await live.enter_async_context(client.realtime.connect(model="gpt-realtime"))
        assert (await _created(first))["type"] == "session.created"
        second = await live.enter_async_context(client.realtime.connect(model="gpt-realtime"))
        assert (await _created(second))["type"] == "session.created"
        ready = await _readyz(capped)
        assert ready.status_code == 503 and ready.json()["status"] == "max_sessions"

        async with client.realtime.connect(model="gpt-realtime") as third:
            error = await _refused(third)
        assert error["type"] == "server_error" and error["code"] == "server_overloaded"
        assert "limit of 2 concurrent sessions" in error["message"] and "retry" in error["message"]
        assert _refusals(capped, "max_sessions") >= 1

        # the live sessions go on
        await first.session.update(session={"type": "realtime", "instructions": "Still here."})
        while (event := await _created(first))["type"] != "session.updated":
            pass
        await second.close()
        await _until_ready(capped, 200)
        async with client.realtime.connect(model="gpt-realtime") as fourth:
            assert (await _created(fourth))["type"] == "session.created"


async def test_a_webrtc_call_counts_toward_the_cap_and_is_refused_at_it_with_503(capped) -> None:
    pytest.importorskip("aiortc")
    from tests.support.webrtc_client import WebRTCCaller

    client = AsyncOpenAI(api_key=capped.api_key, base_url=capped.base_url, websocket_base_url=capped.ws_base_url)
    async with client.realtime.connect(model="gpt-realtime") as ws:
        assert (await _created(ws))["type"] == "session.created"
        call = WebRTCCaller(capped.base_url, capped.api_key)
        try:
            assert (await call.connect()).status_code == 201  # the second session
            async with client.realtime.connect(model="gpt-realtime") as third:
                assert (await _refused(third))["code"] == "server_overloaded"
            extra = WebRTCCaller(capped.base_url, capped.api_key)
            try:
                refused = await extra.connect()
            finally:
                await extra.close()
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) > 0
            error = refused.json()["error"]
            assert error["type"] == "server_error" and error["code"] == "server_overloaded"
        finally:
            await call.close()
        await _until_ready(capped, 200)  # the call's hang-up freed its place


async def test_an_overloaded_event_loop_refuses_new_sessions_until_it_clears(scripted_llm) -> None:
    """Real load, a low threshold: two clients append audio far faster than real time (one second
    of it per event, as fast as the server takes them), which keeps the loop's thread busy well
    over 30 % of the time even on a shared machine (alone: ~100 %); idle it is under 1 %."""
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_OVERLOAD_CPU": "0.3",
           "PARLEY_OVERLOAD_CPU_CLEAR": "0.1", "PARLEY_OVERLOAD_LAG_MS": "0", "PARLEY_OVERLOAD_WINDOW_S": "1"}
    with ParleyServer(env, name="overload") as server:
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        headers = {"Authorization": f"Bearer {server.api_key}"}
        second_of_audio = json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(bytes(24_000 * 2)).decode()})
        client = AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, websocket_base_url=server.ws_base_url)
        assert (await _readyz(server)).status_code == 200
        stop = asyncio.Event()

        async def flood(ws: Any) -> None:
            while not stop.is_set():
                await ws.send(second_of_audio)
                await asyncio.sleep(0)

        async with AsyncExitStack() as live:
            loaders = [await live.enter_async_context(websockets.connect(url, additional_headers=headers))
                       for _ in range(2)]
            for ws in loaders:
                assert json.loads(await ws.recv())["type"] == "session.created"
            floods = [asyncio.create_task(flood(ws)) for ws in loaders]
            try:
                ready = await _until_ready(server, 503)
                assert ready.json()["status"] == "overloaded" and ready.json()["load"]["cpu_share"] > 0.1
                async with client.realtime.connect(model="gpt-realtime") as refused:
                    error = await _refused(refused)
                assert error["code"] == "server_overloaded" and "overloaded" in error["message"]
            finally:
                stop.set()
                await asyncio.gather(*floods)
            await _until_ready(server, 200)
            async with client.realtime.connect(model="gpt-realtime") as accepted:
                assert (await _created(accepted))["type"] == "session.created"
            # the sessions that made the load were never dropped
            for ws in loaders:
                await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "input_audio_buffer.cleared":
                    pass
        assert _refusals(server, "overloaded") >= 1
        log = server.log()
        assert log.count("event loop overloaded: refusing new sessions") == 1
        assert log.count("event loop no longer overloaded") == 1
