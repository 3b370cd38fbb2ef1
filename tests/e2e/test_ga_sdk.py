"""The official `openai` SDK (GA `client.realtime.connect`) against a real Parley process."""

from __future__ import annotations

import json

import pytest
import websockets
from openai import AsyncOpenAI

from tests.e2e.conftest import Checked, types
from tests.support.scripted_llm import Text, ToolCall

TEXT_TURN = [
    "response.created", "response.output_item.added", "conversation.item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "conversation.item.done", "response.output_item.done", "response.done",
]


def _dedupe_deltas(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if not (out and n == out[-1] and n.endswith(".delta")):
            out.append(n)
    return out


async def test_text_turn(rt: Checked, llm) -> None:
    llm.enqueue(Text("Pong, loud and clear.", chunk_size=5))
    await rt.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ping"}]})
    added = await rt.until("conversation.item.done")
    assert types(added) == ["conversation.item.added", "conversation.item.done"]
    user_item = added[0]["item"]
    assert user_item["id"].startswith("item_") and user_item["role"] == "user"
    await rt.response.create()
    events = await rt.until("response.done")
    assert _dedupe_deltas(types(events)) == TEXT_TURN
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Pong, loud and clear."
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["id"].startswith("resp_")
    assert done["output"][0]["content"][0] == {"type": "output_text", "text": text}
    assert done["usage"]["total_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    assert done["conversation_id"].startswith("conv_")
    limits = await rt.recv()
    assert limits["type"] == "rate_limits.updated" and limits["rate_limits"][0]["name"] == "tokens"
    # the model saw the user's words
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": "ping"}


async def test_function_call_round_trip(rt: Checked, llm) -> None:
    tools = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    await rt.session.update(session={"type": "realtime", "tools": tools, "tool_choice": "auto"})
    await rt.until("session.updated")
    llm.enqueue(ToolCall("get_weather", {"city": "Paris"}), Text("It is sunny in Paris."))
    await rt.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]})
    await rt.response.create()
    events = await rt.until("response.done")
    names = _dedupe_deltas(types(events))
    assert names[names.index("response.output_item.added"):] == [
        "response.output_item.added", "conversation.item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "conversation.item.done", "response.output_item.done", "response.done"]
    done_args = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(done_args["arguments"]) == {"city": "Paris"} and done_args["name"] == "get_weather"
    call_id = done_args["call_id"]
    assert call_id.startswith("call_")
    sent = llm.requests[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"
    await rt.recv()  # rate_limits.updated
    await rt.conversation.item.create(item={"type": "function_call_output", "call_id": call_id, "output": '{"sky": "sunny"}'})
    await rt.until("conversation.item.done")
    await rt.response.create()
    events = await rt.until("response.done")
    assert events[-1]["response"]["status"] == "completed"
    messages = llm.requests[-1]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call_id, "content": '{"sky": "sunny"}'}


async def test_cancel(rt: Checked, llm) -> None:
    llm.enqueue(Text("word " * 200, chunk_size=5, delay_s=0.02))
    await rt.response.create()
    await rt.until("response.output_text.delta")
    await rt.response.cancel(event_id="evt_cancel_1")
    events = await rt.until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert "response.output_text.done" in types(events)
    # nothing of the cancelled response arrives after its response.done
    await rt.recv()  # rate_limits.updated
    await rt.response.cancel(event_id="evt_cancel_2")
    err = await rt.recv()
    assert err["type"] == "error" and err["error"]["code"] == "response_cancel_not_active"
    assert err["error"]["event_id"] == "evt_cancel_2"


async def test_second_response_is_refused_while_one_runs(rt: Checked, llm) -> None:
    llm.enqueue(Text("slow " * 40, chunk_size=5, delay_s=0.02))
    await rt.response.create()
    await rt.until("response.created")
    await rt.response.create(event_id="evt_second")
    events = await rt.until("error")
    assert events[-1]["error"]["code"] == "conversation_already_has_active_response"
    assert events[-1]["error"]["event_id"] == "evt_second"
    await rt.until("response.done")


async def test_out_of_band_response_runs_beside_the_default_one(rt: Checked, llm) -> None:
    await rt.conversation.item.create(item={"id": "item_ctx", "type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "context"}]})
    await rt.until("conversation.item.done")
    llm.enqueue(Text("main " * 30, chunk_size=5, delay_s=0.02), Text("classified: greeting"))
    await rt.response.create()
    await rt.until("response.created")
    await rt.response.create(response={
        "conversation": "none", "metadata": {"topic": "classify"}, "output_modalities": ["text"],
        "input": [{"type": "item_reference", "id": "item_ctx"},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "classify it"}]}],
    })
    events = await rt.until("response.done")
    oob = [e for e in events if e["type"] in ("response.created", "response.done") and e["response"]["metadata"]]
    if len(oob) < 2:  # the default response may finish first
        events += await rt.until("response.done")
        oob = [e for e in events if e["type"] in ("response.created", "response.done") and e["response"]["metadata"]]
    done = [e for e in oob if e["type"] == "response.done"][0]["response"]
    assert done["metadata"] == {"topic": "classify"} and done["conversation_id"] is None
    oob_item_ids = {i["id"] for i in done["output"]}
    assert not any(e["type"] == "conversation.item.added" and e["item"]["id"] in oob_item_ids for e in events)
    oob_request = next(r for r in llm.requests if r["messages"][-1]["content"] == "classify it")
    assert [m["content"] for m in oob_request["messages"][1:]] == ["context", "classify it"]


async def test_item_create_retrieve_delete(rt: Checked) -> None:
    await rt.conversation.item.create(item={"id": "first", "type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "one"}]})
    await rt.until("conversation.item.done")
    await rt.conversation.item.create(previous_item_id="root", item={
        "id": "sys", "type": "message", "role": "system", "content": [{"type": "input_text", "text": "be brief"}]})
    added = await rt.until("conversation.item.done")
    assert added[0]["previous_item_id"] is None and added[0]["item"]["id"] == "sys"
    await rt.conversation.item.retrieve(item_id="first")
    got = await rt.recv()
    assert got["type"] == "conversation.item.retrieved" and got["item"]["content"][0]["text"] == "one"
    await rt.conversation.item.delete(item_id="first")
    assert (await rt.recv()) ["type"] == "conversation.item.deleted"
    await rt.conversation.item.retrieve(item_id="first", event_id="evt_r")
    err = await rt.recv()
    assert err["type"] == "error" and err["error"]["event_id"] == "evt_r"


async def test_max_output_tokens_gives_incomplete(rt: Checked, llm) -> None:
    llm.enqueue(Text("one two three four five six seven eight nine ten"))
    await rt.response.create(response={"max_output_tokens": 3})
    events = await rt.until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert llm.requests[-1]["max_tokens"] == 3


async def test_errors_keep_the_session_usable(rt: Checked, llm) -> None:
    await rt.send_raw(json.dumps({"type": "bogus.event", "event_id": "e1"}))
    err = await rt.recv()
    assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == "type" and err["error"]["event_id"] == "e1"
    await rt.send_raw(json.dumps({"type": "session.update", "event_id": "e2",
                                  "session": {"type": "realtime", "instructions": "changed", "bogus_field": 1}}))
    err = await rt.recv()
    assert err["error"]["code"] == "unknown_parameter" and err["error"]["param"] == "session.bogus_field"
    await rt.send_raw("{not json")
    err = await rt.recv()
    assert err["error"]["code"] == "invalid_json"
    await rt.send_raw(b"\x00\x01binary")
    err = await rt.recv()
    assert err["error"]["code"] == "invalid_event"
    await rt.send_raw(json.dumps({"type": "session.update", "event_id": "e3", "session": {"instructions": "x"}}))
    err = await rt.recv()
    assert err["error"]["code"] == "missing_required_parameter" and err["error"]["param"] == "session.type"
    # the discarded update changed nothing, and the session still works
    await rt.session.update(session={"type": "realtime"})
    updated = (await rt.until("session.updated"))[-1]
    assert updated["session"]["instructions"] != "changed"
    llm.enqueue(Text("still here"))
    await rt.response.create()
    events = await rt.until("response.done")
    assert events[-1]["response"]["status"] == "completed"


async def _refusal(url: str, headers: dict[str, str]) -> tuple[dict, int, str]:
    async with websockets.connect(url, additional_headers=headers) as ws:
        event = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        return event, ws.close_code, ws.close_reason


async def test_bad_key_and_bad_model_close_codes(parley) -> None:
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    event, code, reason = await _refusal(url, {"Authorization": "Bearer wrong"})
    assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key" and code == 3000
    assert reason == "invalid_request_error.invalid_api_key"
    event, code, _ = await _refusal(url, {})
    assert event["error"]["message"] == "Missing bearer or basic authentication in header" and code == 3000
    event, code, reason = await _refusal(f"{parley.ws_base_url}/realtime?model=no-such-model",
                                         {"Authorization": f"Bearer {parley.api_key}"})
    assert event["error"]["code"] == "invalid_model" and code == 4000
    assert reason == "invalid_request_error.invalid_model"


async def test_bad_key_through_the_sdk(parley) -> None:
    client = AsyncOpenAI(api_key="wrong", base_url=parley.base_url, websocket_base_url=parley.ws_base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        event = await conn.recv()
        assert event.type == "error" and event.error.code == "invalid_api_key"


async def test_subprotocol_auth_and_selection(parley) -> None:
    url = f"{parley.ws_base_url}/realtime?model=gpt-realtime"
    protocols = ["realtime", f"openai-insecure-api-key.{parley.api_key}"]
    async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        event = json.loads(await ws.recv())
        assert event["type"] == "session.created"


async def test_model_missing_falls_back_to_default(parley) -> None:
    async with websockets.connect(f"{parley.ws_base_url}/realtime",
                                  additional_headers={"Authorization": f"Bearer {parley.api_key}"}) as ws:
        event = json.loads(await ws.recv())
        assert event["type"] == "session.created" and event["session"]["model"] == "gpt-realtime"
