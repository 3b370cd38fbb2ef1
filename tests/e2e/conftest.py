"""End-to-end fixtures: a scripted chat-completions server and a real Parley process, and an
`openai` SDK connection wrapper that validates every server event it receives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.support.event_schema import validate_server_event
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import ScriptedLLMServer


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer() as server:
        yield server


@pytest.fixture(scope="session")
def parley(scripted_llm: ScriptedLLMServer) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model}
    with ParleyServer(env, name="e2e") as server:
        yield server


@pytest.fixture
def llm(scripted_llm: ScriptedLLMServer) -> ScriptedLLMServer:
    scripted_llm.clear()
    return scripted_llm


@pytest.fixture
def client(parley: ParleyServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=parley.api_key, base_url=parley.base_url, websocket_base_url=parley.ws_base_url)


class Checked:
    """Wraps an SDK realtime connection: every received event is validated strictly against
    the SDK's GA or beta union before it is handed to the test."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.events: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def recv(self) -> dict[str, Any]:
        raw = await self.conn.recv_bytes()
        event = json.loads(raw)
        validate_server_event(event, self.dialect)
        self.events.append(event)
        return event

    async def until(self, *types: str, limit: int = 500) -> list[dict[str, Any]]:
        """Receive events up to and including the first one of `types`."""
        seen = []
        for _ in range(limit):
            event = await self.recv()
            seen.append(event)
            if event["type"] in types:
                return seen
        raise AssertionError(f"none of {types} in {[e['type'] for e in seen]}")

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn._connection.send(data)


@pytest.fixture
async def rt(client: AsyncOpenAI) -> AsyncIterator[Checked]:
    """A GA connection that has seen `session.created` and is set to text output."""
    async with client.realtime.connect(model="gpt-realtime") as conn:
        checked = Checked(conn, "ga")
        created = await checked.recv()
        assert created["type"] == "session.created"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await checked.until("session.updated")
        yield checked


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]
