"""The beta dialect through `client.beta.realtime.connect` (OpenAI-Beta: realtime=v1)."""

from __future__ import annotations

import json

import websockets

from tests.e2e.conftest import Checked, types
from tests.support.scripted_llm import Text, ToolCall


async def test_beta_text_turn_and_tool_call(client, llm) -> None:
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        rt = Checked(conn, "beta")
        first = await rt.until("conversation.created")
        assert types(first) == ["session.created", "conversation.created"]
        session = first[0]["session"]
        assert session["modalities"] == ["text", "audio"] and session["input_audio_format"] == "pcm16"
        await conn.session.update(session={
            "modalities": ["text"], "instructions": "Be brief.", "temperature": 0.7,
            "input_audio_format": "g711_ulaw", "turn_detection": None,
            "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}],
        })
        updated = (await rt.until("session.updated"))[-1]["session"]
        assert updated["modalities"] == ["text"] and updated["temperature"] == 0.7
        assert updated["input_audio_format"] == "g711_ulaw" and updated["turn_detection"] is None
        llm.enqueue(Text("Hi from beta."))
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "hello"}]})
        created = await rt.until("conversation.item.created")
        assert created[-1]["item"]["content"][0]["type"] == "input_text"
        await conn.response.create()
        events = await rt.until("response.done")
        names = types(events)
        assert "response.text.delta" in names and "response.text.done" in names
        assert "conversation.item.added" not in names and "conversation.item.done" not in names
        done = events[-1]["response"]
        assert done["modalities"] == ["text"] and done["temperature"] == 0.7
        assert done["output"][0]["content"][0] == {"type": "text", "text": "Hi from beta."}
        assert llm.requests[-1]["temperature"] == 0.7
        await rt.recv()  # rate_limits.updated
        llm.enqueue(ToolCall("lookup", {}))
        await conn.response.create(response={"modalities": ["text"], "max_response_output_tokens": 50})
        events = await rt.until("response.done")
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert "name" not in call and call["call_id"].startswith("call_")


async def test_beta_audio_response_event_names(client, llm) -> None:
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        rt = Checked(conn, "beta")
        await rt.until("conversation.created")
        llm.enqueue(Text("Hello there."))
        await conn.response.create(response={"modalities": ["text", "audio"], "output_audio_format": "g711_alaw"})
        events = await rt.until("response.done")
        names = set(types(events))
        assert {"response.audio.delta", "response.audio.done", "response.audio_transcript.delta",
                "response.audio_transcript.done"} <= names
        assert events[-1]["response"]["output_audio_format"] == "g711_alaw"


async def test_beta_subprotocol_selects_beta(parley) -> None:
    url = f"{parley.ws_base_url}/realtime?model=gpt-4o-realtime-preview"
    protocols = ["realtime", f"openai-insecure-api-key.{parley.api_key}", "openai-beta.realtime-v1"]
    async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        event = json.loads(await ws.recv())
        assert event["type"] == "session.created" and "modalities" in event["session"]
