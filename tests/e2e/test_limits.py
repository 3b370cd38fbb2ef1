"""Session limits: expiry, per-event size, and a model that is not there."""

from __future__ import annotations

import base64
import json
import time

import pytest
import websockets

from tests.support.parley_server import ParleyServer


async def test_session_expires_with_an_error_and_a_close(scripted_llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_SESSION_MAX_MINUTES": "0.04"}
    with ParleyServer(env, name="expiry") as server:
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        started = time.monotonic()
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.api_key}"}) as ws:
            created = json.loads(await ws.recv())
            assert created["session"]["expires_at"] <= int(time.time()) + 4
            event = json.loads(await ws.recv())
            assert event["type"] == "error" and event["error"]["code"] == "session_expired"
            assert "maximum duration" in event["error"]["message"]
            await ws.wait_closed()
            assert ws.close_code == 1000
        assert 1.5 < time.monotonic() - started < 15.0  # 2.4 s, with room for a loaded CI machine


async def test_oversized_event_gets_an_error_and_the_session_goes_on(parley) -> None:
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {parley.api_key}"},
                                  max_size=None) as ws:
        await ws.recv()  # session.created
        audio = base64.b64encode(b"\0" * (12 * 1024 * 1024)).decode()  # 16 MiB of base64 > 15 MiB
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "event_id": "big", "audio": audio[: 15 * 1024 * 1024 - 40]}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        first = json.loads(await ws.recv())
        assert first["type"] == "error" and first["error"]["code"] == "event_too_large"
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"


@pytest.mark.parametrize("frame_mib", [21, 32])
async def test_frames_beyond_the_event_limit_are_answered_not_dropped(parley, frame_mib: int) -> None:
    """Frames above PARLEY_MAX_EVENT_BYTES (15 MiB) but within the WebSocket layer's hard limit
    (PARLEY_MAX_FRAME_BYTES, 40 MiB) are read and answered with event_too_large; the session goes on."""
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {parley.api_key}"},
                                  max_size=None) as ws:
        await ws.recv()  # session.created
        audio = "A" * (frame_mib * 1024 * 1024 - 80)
        frame = json.dumps({"type": "input_audio_buffer.append", "event_id": "huge", "audio": audio})
        assert len(frame) > 15 * 1024 * 1024
        await ws.send(frame)
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        first = json.loads(await ws.recv())
        assert first["type"] == "error" and first["error"]["code"] == "event_too_large"
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"


async def test_a_frame_over_the_hard_limit_closes_with_1009(parley) -> None:
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {parley.api_key}"},
                                  max_size=None) as ws:
        await ws.recv()
        with pytest.raises(websockets.ConnectionClosed):
            await ws.send("x" * (40 * 1024 * 1024 + 1))
            while True:
                await ws.recv()
        assert ws.close_code == 1009


async def test_unreachable_llm_fails_the_response_not_the_session() -> None:
    env = {"PARLEY_LLM_BASE_URL": "http://127.0.0.1:9/v1", "PARLEY_LLM_MODEL": "m", "PARLEY_LLM_MAX_RETRIES": "0"}
    with ParleyServer(env, name="nollm") as server:
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.api_key}"}) as ws:
            await ws.recv()
            for _ in range(2):
                await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    pass
                assert event["response"]["status"] == "failed"
                error = event["response"]["status_details"]["error"]
                assert error["code"] == "llm_unavailable" and "127.0.0.1:9" in error["message"]
