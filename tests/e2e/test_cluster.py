"""Scale-out with real processes, real sockets and a real Redis: two Parley nodes (each its own
`parley serve`) share ephemeral keys, per-key session limits and the call directory; call
requests that reach the wrong node are forwarded to the call's node; a node killed with SIGKILL
gives its calls and places back within the lease TTL; Redis going away refuses new sessions
clearly while live ones go on.  `parley serve --workers 2` runs two such nodes on one port."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from parley.server.auth import key_id
from tests.support.parley_server import ParleyServer, free_port
from tests.support.redis_server import RedisServer
from tests.support.scripted_llm import Text
from tests.support.webrtc_client import WebRTCCaller

pytestmark = pytest.mark.timeout(180)

SECRET = "cluster-test-secret"
TTL_S = 3.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def node_env(redis_url: str, scripted_llm, **extra: str) -> dict[str, str]:
    return {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
            "PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "espeak", "PARLEY_REDIS_URL": redis_url,
            "PARLEY_CLUSTER_SECRET": SECRET, "PARLEY_ADVERTISE_HOST": "127.0.0.1",
            "PARLEY_INTERNAL_PORT": str(free_port()), "PARLEY_CLUSTER_TTL_S": str(TTL_S),
            "PARLEY_CLUSTER_HEARTBEAT_S": "1", "PARLEY_MAX_SESSIONS_PER_KEY": "2", "PARLEY_WORKERS": "1", **extra}


@pytest.fixture(scope="module")
def nodes(redis_server, scripted_llm) -> Iterator[tuple[ParleyServer, ParleyServer]]:
    a = ParleyServer(node_env(redis_server.url, scripted_llm), name="node-a")
    b = ParleyServer(node_env(redis_server.url, scripted_llm), name="node-b")
    with a, b:
        yield a, b


def sdk(node: ParleyServer, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key or node.api_key, base_url=node.base_url, websocket_base_url=node.ws_base_url)


async def open_session(node: ParleyServer, key: str | None = None) -> websockets.ClientConnection:
    ws = await websockets.connect(f"{node.ws_base_url}/realtime?model=gpt-realtime",
                                  additional_headers={"Authorization": f"Bearer {key or node.api_key}"})
    return ws


async def first_event(ws: websockets.ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def text_turn(ws: websockets.ClientConnection, llm, reply: str) -> dict:
    llm.enqueue(Text(reply))
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "response.done":
        pass
    return event


async def test_a_key_minted_on_one_node_opens_a_session_on_the_other(nodes, llm) -> None:
    a, b = nodes
    secret = await sdk(a).realtime.client_secrets.create(
        session={"type": "realtime", "instructions": "You are node-agnostic."}, expires_after={"anchor": "created_at", "seconds": 600})
    assert secret.value.startswith("ek_")
    async with sdk(b, secret.value).realtime.connect(model="gpt-realtime") as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        assert created.session.instructions == "You are node-agnostic."  # the config bound on node A


async def test_a_revoked_key_is_refused_on_every_node(nodes) -> None:
    a, b = nodes
    secret = await sdk(a).realtime.client_secrets.create(session={"type": "realtime"})
    ws = await open_session(b, secret.value)
    assert (await first_event(ws))["type"] == "session.created"
    revoked = httpx.post(f"{b.base_url}/realtime/client_secrets/revoke", json={"value": secret.value},
                         headers={"Authorization": f"Bearer {b.api_key}"})
    assert revoked.status_code == 200, revoked.text
    for node in (a, b):
        refused = await open_session(node, secret.value)
        event = await first_event(refused)
        assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key"
        await refused.wait_closed()
        assert refused.close_code == 3000
    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))  # the live session runs on
    assert (await first_event(ws))["type"] == "input_audio_buffer.cleared"
    await ws.close()


async def test_an_expired_key_is_refused_on_every_node(nodes, redis_server) -> None:
    a, b = nodes
    secret = await sdk(a).realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 10})
    stored = "parley:ek:" + hashlib.sha256(secret.value.encode()).hexdigest()
    assert 0 < redis_server.client().pttl(stored) <= 10_000  # Redis drops it when the key expires
    await asyncio.sleep(10.5)
    for node in (a, b):
        refused = await open_session(node, secret.value)
        assert (await first_event(refused))["error"]["code"] == "invalid_api_key"
        await refused.close()


async def test_the_per_key_session_limit_holds_across_nodes(nodes) -> None:
    a, b = nodes
    first, second = await open_session(a), await open_session(b)
    assert (await first_event(first))["type"] == "session.created"
    assert (await first_event(second))["type"] == "session.created"
    for node in (a, b):
        third = await open_session(node)
        event = await first_event(third)
        assert event["type"] == "error" and event["error"]["code"] == "session_limit_exceeded"
        await third.wait_closed()
        assert third.close_code == 1013
    await first.close()
    await asyncio.sleep(0.3)
    again = await open_session(b)  # the place given back on node A is free on node B
    assert (await first_event(again))["type"] == "session.created"
    await again.close()
    await second.close()


async def test_a_call_on_one_node_is_steered_and_hung_up_through_the_other(nodes, llm, redis_server) -> None:
    a, b = nodes
    caller = WebRTCCaller(a.base_url, a.api_key)
    response = await caller.connect()
    assert response.status_code == 201, response.text
    try:
        await caller.wait_for("session.created")
        record = json.loads(redis_server.client().get(f"parley:call:{caller.call_id}"))
        assert record["internal_url"].startswith("http://127.0.0.1:")
        async with sdk(b).realtime.connect(call_id=caller.call_id) as side:  # node B does not hold the call
            first = json.loads((await side.recv_bytes()).decode())
            assert first["type"] == "session.created"
            await side.session.update(session={"type": "realtime", "instructions": "Steered from node B."})
            await caller.wait_for("session.updated", where=lambda e: e["session"]["instructions"] == "Steered from node B.")
            llm.enqueue(Text("Hello from the call."))
            await side.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "Hi"}]})
            await side.response.create(response={"output_modalities": ["text"]})
            _, _, done = await caller.wait_for("response.output_text.done")
            assert done["text"] == "Hello from the call."
            await sdk(b).realtime.calls.hangup(caller.call_id)  # forwarded to node A
        deadline = time.monotonic() + 10
        while redis_server.client().exists(f"parley:call:{caller.call_id}") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not redis_server.client().exists(f"parley:call:{caller.call_id}")
        missing = httpx.post(f"{b.base_url}/realtime/calls/{caller.call_id}/hangup",
                             headers={"Authorization": f"Bearer {b.api_key}"})
        assert missing.status_code == 404
    finally:
        await caller.close()


async def test_the_internal_port_takes_only_forwarded_requests(nodes) -> None:
    a, _ = nodes
    internal = int(a.env["PARLEY_INTERNAL_PORT"])
    r = httpx.post(f"http://127.0.0.1:{internal}/v1/realtime/client_secrets",
                   headers={"Authorization": f"Bearer {a.api_key}"}, json={})
    assert r.status_code == 403
    assert httpx.get(f"http://127.0.0.1:{internal}/healthz").status_code == 200


async def test_a_killed_node_gives_its_calls_and_places_back(redis_server, scripted_llm, nodes) -> None:
    _, b = nodes
    doomed = ParleyServer(node_env(redis_server.url, scripted_llm), name="node-doomed").start()
    caller = WebRTCCaller(doomed.base_url, doomed.api_key)
    try:
        assert (await caller.connect()).status_code == 201
        held = await open_session(doomed)  # the key's second place: the call holds the first
        assert (await first_event(held))["type"] == "session.created"
        refused = await open_session(b)
        assert (await first_event(refused))["error"]["code"] == "session_limit_exceeded"
        assert redis_server.client().exists(f"parley:call:{caller.call_id}")
        assert doomed.proc is not None
        os.kill(doomed.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while redis_server.client().exists(f"parley:call:{caller.call_id}"):
            assert time.monotonic() - killed_at < TTL_S + 2
            await asyncio.sleep(0.1)
        gone_after = time.monotonic() - killed_at
        print(f"\ncall record gone {gone_after:.2f} s after SIGKILL (TTL {TTL_S} s)")
        # its two places lapse too (each within the TTL of its last renewal): node B takes two sessions again
        while True:
            opened = [await open_session(b), await open_session(b)]
            created = [(await first_event(ws))["type"] == "session.created" for ws in opened]
            for ws in opened:
                await ws.close()
            if all(created):
                break
            assert time.monotonic() - killed_at < TTL_S + 2
            await asyncio.sleep(0.2)
        print(f"both places free {time.monotonic() - killed_at:.2f} s after SIGKILL")
    finally:
        await caller.close()
        doomed.stop()


async def test_redis_down_refuses_new_sessions_clearly_and_live_ones_go_on(redis_server, scripted_llm, llm) -> None:
    own = RedisServer().start()
    node = ParleyServer(node_env(own.url, scripted_llm), name="node-redis-down").start()
    try:
        live = await open_session(node)
        assert (await first_event(live))["type"] == "session.created"
        own.stop()
        assert (await text_turn(live, llm, "Still here."))["response"]["status"] == "completed"
        refused = await open_session(node)
        event = await first_event(refused)
        assert event["type"] == "error" and event["error"]["code"] == "shared_state_unavailable"
        await refused.wait_closed()
        assert refused.close_code == 1013
        minted = httpx.post(f"{node.base_url}/realtime/client_secrets", json={},
                            headers={"Authorization": f"Bearer {node.api_key}"})
        assert minted.status_code == 503 and minted.json()["error"]["code"] == "shared_state_unavailable"
        assert minted.headers["retry-after"]
        ready = httpx.get(f"http://127.0.0.1:{node.port}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "shared_state"
        # Redis back (empty: it keeps nothing on disk): the heartbeat re-writes the live lease, new sessions come in
        restarted = RedisServer()
        restarted.port = own.port
        restarted.start()
        try:
            deadline = time.monotonic() + 10
            while httpx.get(f"http://127.0.0.1:{node.port}/readyz").status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            leases = restarted.client().zcard(f"parley:leases:{key_id(node.api_key or '')}")
            assert leases == 1  # the live session's place, re-written by the heartbeat
            again = await open_session(node)
            assert (await first_event(again))["type"] == "session.created"
            await again.close()
            assert (await text_turn(live, llm, "And still here."))["response"]["status"] == "completed"
        finally:
            restarted.stop()
        await live.close()
    finally:
        node.stop()
        own.stop()


async def test_workers_share_one_port_and_forward_calls_between_them(redis_server, scripted_llm, llm) -> None:
    env = node_env(redis_server.url, scripted_llm, PARLEY_MAX_SESSIONS_PER_KEY="20")
    env["PARLEY_INTERNAL_PORT"] = str(free_port())  # worker 1 takes the port after it
    box = ParleyServer(env, name="workers", args=["--workers", "2"]).start(timeout_s=40)  # flag wins over PARLEY_WORKERS
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 20
        while len(workers) < 2 and time.monotonic() < deadline:  # new connections land on both workers
            with httpx.Client() as http:
                workers.add(http.get(f"http://127.0.0.1:{box.port}/readyz").json()["worker"])
        assert workers == {0, 1}
        caller = WebRTCCaller(box.base_url, box.api_key)
        assert (await caller.connect()).status_code == 201
        try:
            await caller.wait_for("session.created")
            for n in range(6):  # each sideband lands on either worker; the one without the call forwards
                async with sdk(box).realtime.connect(call_id=caller.call_id) as side:
                    assert json.loads((await side.recv_bytes()).decode())["type"] == "session.created"
                    await side.session.update(session={"type": "realtime", "instructions": f"Steer {n}."})
                    await caller.wait_for("session.updated", where=lambda e, n=n: e["session"]["instructions"] == f"Steer {n}.")
            await sdk(box).realtime.calls.hangup(caller.call_id)
        finally:
            await caller.close()
        assert box.proc is not None
        box.proc.send_signal(signal.SIGTERM)  # the supervisor drains both workers and exits
        assert box.proc.wait(20) == 0
    finally:
        box.stop()


async def test_tokens_per_minute_are_counted_across_nodes(redis_server, scripted_llm, llm) -> None:
    env = node_env(redis_server.url, scripted_llm, PARLEY_TOKENS_PER_MINUTE="100000")
    a, b = ParleyServer(dict(env), name="tpm-a"), ParleyServer({**env, "PARLEY_INTERNAL_PORT": str(free_port())}, name="tpm-b")
    with a, b:
        ws_a, ws_b = await open_session(a), await open_session(b)
        await first_event(ws_a)
        await first_event(ws_b)
        done = await text_turn(ws_a, llm, "A reply of a few tokens from node A.")
        used = done["response"]["usage"]["total_tokens"]
        assert used > 0
        await asyncio.sleep(2.5)  # both nodes flush once a second

        async def remaining(ws) -> int:
            await text_turn(ws, llm, "x")
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "rate_limits.updated":
                pass
            return event["rate_limits"][0]["remaining"]

        left_b = await remaining(ws_b)  # node B's count includes node A's response
        assert left_b <= 100000 - used
        await ws_a.close()
        await ws_b.close()


async def test_a_ringing_sip_call_is_rejected_through_the_other_node(redis_server, scripted_llm, tmp_path) -> None:
    from tests.support.sip_caller import SippRun, WebhookReceiver

    with WebhookReceiver() as webhook:
        sip_port = free_port()
        env = node_env(redis_server.url, scripted_llm, PARLEY_SIP_PORT=str(sip_port), PARLEY_SIP_WEBHOOK_URL=webhook.url,
                       PARLEY_SIP_ANSWER_TIMEOUT_S="10")
        with ParleyServer(env, name="sip-node"), ParleyServer(node_env(redis_server.url, scripted_llm),
                                                           name="no-sip-node") as other:
            if True:
                sipp = await SippRun("uac_refused", sip_port, keys={"rtp_ip": "127.0.0.1", "rtp_port": "4000"}).start(tmp_path)
                try:
                    _, body = await webhook.next_delivery(0)
                    call_id = json.loads(body)["data"]["call_id"]
                    await sdk(other).realtime.calls.reject(call_id, status_code=486)  # forwarded to the SIP node
                    assert await sipp.wait(10) == 0, sipp.messages()[-3000:]
                    assert "SIP/2.0 486 " in sipp.messages()
                finally:
                    await sipp.stop()
