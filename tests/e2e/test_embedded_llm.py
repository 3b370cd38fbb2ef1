"""The embedded llama.cpp engine in a real server process, on a tiny GGUF the test writes."""

from __future__ import annotations

import json
import time

import httpx
import websockets
import pytest

from tests.e2e.conftest import Checked
from tests.support.parley_server import ParleyServer

pytest.importorskip("llama_cpp")
from tests.support.tiny_gguf import write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> ParleyServer:
    model = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    with ParleyServer({"PARLEY_LLM_MODEL": str(model), "PARLEY_LLM_CONTEXT_TOKENS": "512"}, name="embedded") as server:
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{server.port}/readyz").status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        yield server


async def test_text_turn_on_the_embedded_model(embedded) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=embedded.api_key, base_url=embedded.base_url, websocket_base_url=embedded.ws_base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rt = Checked(conn, "ga")
        await rt.until("session.created")
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "hello"}]})
        await conn.response.create(response={"output_modalities": ["text"], "max_output_tokens": 8})
        events = await rt.until("response.done")
        done = events[-1]["response"]
        # random weights: the words are nonsense, but they are the model's, streamed as deltas
        assert done["status"] in ("completed", "incomplete"), done
        assert any(e["type"] == "response.output_text.delta" for e in events)
        assert 0 < done["usage"]["output_token_details"]["text_tokens"] <= 8


async def test_missing_model_file_fails_responses_with_the_setting_named(tmp_path) -> None:
    with ParleyServer({"PARLEY_LLM_MODEL": str(tmp_path / "nope.gguf")}, name="nomodel") as server:
        deadline = time.monotonic() + 10
        while "PARLEY_LLM_MODEL" not in httpx.get(f"http://127.0.0.1:{server.port}/readyz").text:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        assert ready.status_code == 503
        assert "PARLEY_LLM_MODEL" in server.log()
        url = f"{server.ws_base_url}/realtime?model=gpt-realtime"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.api_key}"}) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                pass
            assert event["response"]["status"] == "failed"
            assert "PARLEY_LLM_MODEL" in event["response"]["status_details"]["error"]["message"]
