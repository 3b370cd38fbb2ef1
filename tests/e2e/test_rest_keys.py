"""Ephemeral keys (GA and beta), models, health — through the SDK and raw HTTP."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from tests.support.parley_server import ParleyServer


async def test_client_secret_opens_a_session_with_its_config(parley, client) -> None:
    secret = await client.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 60},
        session={"type": "realtime", "instructions": "You are a pirate.", "output_modalities": ["text"],
                 "audio": {"output": {"voice": "ash"}}},
    )
    assert secret.value.startswith("ek_")
    assert int(time.time()) + 50 < secret.expires_at <= int(time.time()) + 61
    assert secret.session.instructions == "You are a pirate."
    # as a Bearer key
    ek_client = AsyncOpenAI(api_key=secret.value, base_url=parley.base_url, websocket_base_url=parley.ws_base_url)
    async with ek_client.realtime.connect(model="gpt-realtime") as conn:
        created = json.loads(await conn.recv_bytes())
        assert created["type"] == "session.created"
        assert created["session"]["instructions"] == "You are a pirate."
        assert created["session"]["output_modalities"] == ["text"]
        assert created["session"]["audio"]["output"]["voice"] == "ash"
    # as a browser subprotocol key, usable more than once until it expires
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"]) as ws:  # type: ignore[list-item]
        assert json.loads(await ws.recv())["session"]["instructions"] == "You are a pirate."


async def test_expired_and_unknown_ephemeral_keys_are_refused(parley, client) -> None:
    secret = await client.realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 10})
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    for key in ("ek_" + "0" * 32, secret.value + "x"):
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            event = json.loads(await ws.recv())
            assert event["error"]["code"] == "invalid_api_key"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 3000


def test_client_secret_validation_and_auth(parley) -> None:
    url = f"{parley.base_url}/realtime/client_secrets"
    auth = {"Authorization": f"Bearer {parley.api_key}"}
    r = httpx.post(url, json={"expires_after": {"anchor": "created_at", "seconds": 5}}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "integer_below_min_value"
    r = httpx.post(url, json={"session": {"type": "realtime", "bogus": 1}}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "session.bogus"
    r = httpx.post(url, json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    # an ephemeral key cannot mint more keys
    value = httpx.post(url, json={}, headers=auth).json()["value"]
    assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {value}"}).status_code == 401
    r = httpx.post(url, json={"session": {"type": "transcription",
                                          "audio": {"input": {"transcription": {"model": "whisper-1"}}}}}, headers=auth)
    assert r.status_code == 200
    assert r.json()["session"]["type"] == "transcription" and r.json()["session"]["object"] == "realtime.transcription_session"


def test_beta_sessions_endpoints(parley) -> None:
    auth = {"Authorization": f"Bearer {parley.api_key}"}
    r = httpx.post(f"{parley.base_url}/realtime/sessions", headers=auth,
                   json={"model": "gpt-4o-realtime-preview", "modalities": ["text"], "voice": "verse",
                         "instructions": "beta!", "client_secret": {"expires_after": {"anchor": "created_at", "seconds": 120}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["client_secret"]["value"].startswith("ek_") and body["voice"] == "verse"
    assert body["modalities"] == ["text"] and body["instructions"] == "beta!"
    r = httpx.post(f"{parley.base_url}/realtime/transcription_sessions", headers=auth,
                   json={"input_audio_transcription": {"model": "whisper-1", "language": "en"}})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "realtime.transcription_session"
    assert r.json()["input_audio_transcription"]["language"] == "en"


def test_models_and_health(parley) -> None:
    r = httpx.get(f"{parley.base_url}/models", headers={"Authorization": f"Bearer {parley.api_key}"})
    assert r.status_code == 200 and "gpt-realtime" in [m["id"] for m in r.json()["data"]]
    assert httpx.get(f"{parley.base_url}/models").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{parley.port}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"http://127.0.0.1:{parley.port}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_refuses_to_listen_beyond_loopback_without_keys() -> None:
    server = ParleyServer({"PARLEY_API_KEYS": ""}, name="exposed", api_key=None, args=["--host", "0.0.0.0"])
    with pytest.raises(RuntimeError, match="Refusing to listen on 0.0.0.0"):
        server.start(timeout_s=10)


def test_keys_never_reach_the_log(parley) -> None:
    httpx.post(f"{parley.base_url}/realtime/client_secrets", json={}, headers={"Authorization": "Bearer sk-secret-probe"})
    assert parley.api_key not in parley.log() and "sk-secret-probe" not in parley.log()


def test_metrics_are_exposed_and_move(parley) -> None:
    url = f"http://127.0.0.1:{parley.port}/metrics"
    before = httpx.get(url).text
    assert "parley_sessions_total" in before and "parley_llm_first_token_seconds" in before

    async def one_turn() -> None:
        client = AsyncOpenAI(api_key=parley.api_key, base_url=parley.base_url, websocket_base_url=parley.ws_base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.response.create(response={"output_modalities": ["text"]})
            async for event in conn:
                if event.type == "response.done":
                    break

    import asyncio

    asyncio.run(one_turn())

    def value(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    after = httpx.get(url).text
    assert value(after, "parley_sessions_total") > value(before, "parley_sessions_total")
    assert value(after, 'parley_responses_total{status="completed"}') > value(before, 'parley_responses_total{status="completed"}')
    assert value(after, "parley_llm_first_token_seconds_count") > value(before, "parley_llm_first_token_seconds_count")


def test_cors_preflight_and_body_limit(parley) -> None:
    url = f"{parley.base_url}/realtime/client_secrets"
    pre = httpx.options(url, headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization,content-type,x-openai-agents-sdk"})
    assert pre.status_code == 200
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert "x-openai-agents-sdk" in pre.headers["access-control-allow-headers"].lower()
    r = httpx.post(url, json={}, headers={"Authorization": f"Bearer {parley.api_key}", "Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] in ("*", "http://app.example")
    assert "location" in r.headers["access-control-expose-headers"].lower()
    big = httpx.post(url, content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                     headers={"Authorization": f"Bearer {parley.api_key}", "Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
