"""`openai-agents`' RealtimeRunner (GA) against a real Parley process.  The agents SDK validates
every server event it receives against the openai package's GA union; a mismatch surfaces as
an `error` session event, which fails these tests."""

from __future__ import annotations

import asyncio
from typing import Any

from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner

from tests.support.scripted_llm import Text, ToolCall

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    calls.append(city)
    return f"It is sunny in {city}."


async def _run_until_answer(parley: Any, agent: RealtimeAgent, message: str, want_text: str) -> list[Any]:
    runner = RealtimeRunner(agent)
    session = await runner.run(model_config={
        "url": f"{parley.ws_base_url}/realtime?model=gpt-realtime",
        "api_key": parley.api_key,
        "initial_model_settings": {"model_name": "gpt-realtime", "modalities": ["text"]},
    })
    events: list[Any] = []
    async with session:
        await session.send_message(message)

        async def collect() -> None:
            async for ev in session:
                events.append(ev)
                assert ev.type != "error", f"agents SDK reported an error: {ev}"
                if ev.type == "history_updated" and any(
                    getattr(item, "role", None) == "assistant" and want_text in _text(item) for item in ev.history
                ):
                    return

        await asyncio.wait_for(collect(), timeout=20)
    return events


def _text(item: Any) -> str:
    out = []
    for part in getattr(item, "content", []) or []:
        out.append(getattr(part, "text", None) or getattr(part, "transcript", None) or "")
    return "".join(out)


async def test_agents_text_turn(parley, llm) -> None:
    llm.enqueue(Text("Pong from Parley."))
    agent = RealtimeAgent(name="probe", instructions="Answer in a few words.")
    events = await _run_until_answer(parley, agent, "ping", "Pong from Parley.")
    assert any(e.type == "agent_end" or e.type == "history_updated" for e in events)
    system = llm.requests[-1]["messages"][0]
    assert system == {"role": "system", "content": "Answer in a few words."}


async def test_agents_tool_call(parley, llm) -> None:
    calls.clear()
    llm.enqueue(ToolCall("get_weather", {"city": "Paris"}), Text("The weather in Paris is sunny."))
    agent = RealtimeAgent(name="weather", instructions="Use tools.", tools=[get_weather])
    events = await _run_until_answer(parley, agent, "Weather in Paris?", "sunny")
    assert calls == ["Paris"]
    assert any(e.type == "tool_end" for e in events)
    tool_msg = llm.requests[-1]["messages"][-1]
    assert tool_msg["role"] == "tool" and "sunny in Paris" in tool_msg["content"]
