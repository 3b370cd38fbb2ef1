"""Parley behind an ordinary load balancer: the shipped deploy/nginx.conf (a real nginx, its
upstreams rendered for two loopback nodes) in front of two Parley nodes sharing a real Redis.
Round robin spreads the sessions; keys, limits and calls work through it with no stickiness."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from tests.e2e.test_cluster import node_env
from tests.support.parley_server import OUTPUT, ROOT, ParleyServer, free_port
from tests.support.redis_server import RedisServer
from tests.support.scripted_llm import Text
from tests.support.webrtc_client import WebRTCCaller

pytestmark = pytest.mark.timeout(180)

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def render(conf: str, port: int, upstreams: list[int], tmp: Path) -> str:
    """The shipped config with loopback upstreams, a free listen port and temp paths of our own."""
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstreams)
    conf = re.sub(r"(# upstreams:begin\n).*?(\s*# upstreams:end)", lambda m: m.group(1) + servers + m.group(2), conf,
                  flags=re.S)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace("/tmp/", f"{tmp}/")
    return conf


@pytest.fixture(scope="module")
def balanced(scripted_llm, tmp_path_factory) -> Iterator[tuple[str, ParleyServer, ParleyServer]]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx is not installed (./scripts/test installs Debian's nginx-light)")
    tmp = tmp_path_factory.mktemp("nginx")
    with RedisServer() as redis_server:
        a = ParleyServer(node_env(redis_server.url, scripted_llm, PARLEY_MAX_SESSIONS_PER_KEY="3"), name="lb-a")
        b = ParleyServer(node_env(redis_server.url, scripted_llm, PARLEY_MAX_SESSIONS_PER_KEY="3"), name="lb-b")
        with a, b:
            port = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(render(NGINX_CONF.read_text(), port, [a.port, b.port], tmp))
            OUTPUT.mkdir(exist_ok=True)
            log = open(OUTPUT / f"nginx-{port}.log", "wb")
            proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"], stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/nginx-health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert proc.poll() is None and time.monotonic() < deadline, (OUTPUT / f"nginx-{port}.log").read_text()
                    time.sleep(0.1)
                yield f"http://127.0.0.1:{port}", a, b
            finally:
                proc.terminate()
                proc.wait(10)


def test_the_shipped_config_passes_nginx_t(tmp_path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(NGINX_CONF.read_text(), free_port(), [free_port(), free_port()], tmp_path))
    result = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_sessions_keys_and_limits_through_the_balancer(balanced, llm) -> None:
    lb, a, b = balanced
    client = AsyncOpenAI(api_key=a.api_key, base_url=f"{lb}/v1", websocket_base_url=lb.replace("http", "ws") + "/v1")
    secret = await client.realtime.client_secrets.create(session={"type": "realtime", "instructions": "Via the LB."})
    browser = AsyncOpenAI(api_key=secret.value, base_url=f"{lb}/v1", websocket_base_url=lb.replace("http", "ws") + "/v1")
    managers = [browser.realtime.connect(model="gpt-realtime") for _ in range(3)]
    conns = [await m.__aenter__() for m in managers]
    try:
        for conn in conns:
            created = await conn.recv()
            assert created.type == "session.created" and created.session.instructions == "Via the LB."
        live = [json.loads(httpx.get(f"http://127.0.0.1:{n.port}/readyz").text)["live_sessions"] for n in (a, b)]
        assert sorted(live) == [1, 2]  # round robin put sessions on both nodes
        async with browser.realtime.connect(model="gpt-realtime") as fourth:  # the key's limit of 3, across both
            event = await fourth.recv()
            assert event.type == "error" and event.error.code == "session_limit_exceeded"
        llm.enqueue(Text("Through nginx."))
        await conns[0].response.create(response={"output_modalities": ["text"]})
        async for event in conns[0]:
            if event.type == "response.done":
                assert event.response.status == "completed"
                break
    finally:
        for m in managers:
            await m.__aexit__(None, None, None)


async def test_a_webrtc_call_is_steered_and_hung_up_through_the_balancer(balanced, llm) -> None:
    lb, a, _ = balanced
    caller = WebRTCCaller(f"{lb}/v1", a.api_key)
    assert (await caller.connect()).status_code == 201
    client = AsyncOpenAI(api_key=a.api_key, base_url=f"{lb}/v1", websocket_base_url=lb.replace("http", "ws") + "/v1")
    try:
        await caller.wait_for("session.created")
        for n in range(4):  # round robin: half of these reach the node without the call, which forwards
            async with client.realtime.connect(call_id=caller.call_id) as side:
                assert json.loads((await side.recv_bytes()).decode())["type"] == "session.created"
                await side.session.update(session={"type": "realtime", "instructions": f"LB steer {n}."})
                await caller.wait_for("session.updated", where=lambda e, n=n: e["session"]["instructions"] == f"LB steer {n}.")
        await client.realtime.calls.hangup(caller.call_id)
        await asyncio.sleep(0.5)
        gone = httpx.post(f"{lb}/v1/realtime/calls/{caller.call_id}/hangup", headers={"Authorization": f"Bearer {a.api_key}"})
        assert gone.status_code == 404
    finally:
        await caller.close()
