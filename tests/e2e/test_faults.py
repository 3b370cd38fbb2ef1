"""Engine faults against a real Parley process, through the official `openai` SDK (GA).

Every misbehaviour of a backing engine (the LLM down, answering 500/400, sending a malformed or
cut stream, hanging past the timeout; the TTS or STT server answering 500) must end the affected
response with `response.done` status `failed` (or the transcript with
`conversation.item.input_audio_transcription.failed`) carrying an error code and message, with
no `error` event and no close: the very next response on the same session works.

The Parley process under test talks to scripted LLM, TTS and STT servers with
PARLEY_LLM_TIMEOUT_S=1 and PARLEY_LLM_MAX_RETRIES=1, so a fault costs at most a few seconds.
The last test checks the server is still healthy and logged no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.e2e.conftest import Checked, types
from tests.support.parley_server import ParleyServer, free_port
from tests.support.scripted_llm import CutMidStream, Hang, HTTPError, Malformed, ScriptedLLMServer, Text
from tests.support.scripted_stt import HTTPError as STTError
from tests.support.scripted_stt import ScriptedSTTServer
from tests.support.scripted_tts import HTTPError as TTSError
from tests.support.scripted_tts import ScriptedTTSServer, tone_samples

LLM_TIMEOUT_S = 1
LLM_MAX_RETRIES = 1
SPEECH_CLIENT_RETRIES = 2  # the remote TTS/STT clients keep openai's default (no setting for it)
TURN_TIMEOUT_S = 15  # generous: the slowest fault (two 1 s timeouts and a backoff) takes ~2.5 s

FAULT_ENV = {"PARLEY_LLM_TIMEOUT_S": str(LLM_TIMEOUT_S), "PARLEY_LLM_MAX_RETRIES": str(LLM_MAX_RETRIES)}


# --- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tts_server() -> Iterator[ScriptedTTSServer]:
    with ScriptedTTSServer() as server:
        yield server


@pytest.fixture(scope="module")
def stt_server() -> Iterator[ScriptedSTTServer]:
    with ScriptedSTTServer() as server:
        yield server


@pytest.fixture(scope="module")
def faulty(scripted_llm: ScriptedLLMServer, tts_server: ScriptedTTSServer,
           stt_server: ScriptedSTTServer) -> Iterator[ParleyServer]:
    """Parley on the scripted LLM, TTS and STT servers, with a 1 s LLM timeout and one retry."""
    env = {**FAULT_ENV, "PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_TTS_ENGINE": "openai", "PARLEY_TTS_BASE_URL": tts_server.base_url,
           "PARLEY_STT_ENGINE": "openai", "PARLEY_STT_BASE_URL": stt_server.base_url}
    with ParleyServer(env, name="faults") as server:
        yield server


@pytest.fixture(scope="module")
def llm_down_port() -> int:
    return free_port()  # bound and released: nobody listens there (until a test starts an LLM on it)


@pytest.fixture(scope="module")
def llm_down(llm_down_port: int) -> Iterator[ParleyServer]:
    """Parley whose LLM is a port nobody listens on."""
    env = {**FAULT_ENV, "PARLEY_LLM_BASE_URL": f"http://127.0.0.1:{llm_down_port}/v1", "PARLEY_LLM_MODEL": "m",
           "PARLEY_TTS_ENGINE": "none", "PARLEY_STT_ENGINE": "none"}
    with ParleyServer(env, name="faults-llm-down") as server:
        yield server


@pytest.fixture
def tts(tts_server: ScriptedTTSServer) -> ScriptedTTSServer:
    tts_server.clear()
    return tts_server


@pytest.fixture
def stt(stt_server: ScriptedSTTServer) -> ScriptedSTTServer:
    stt_server.clear()
    return stt_server


# --- helpers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def session(server: ParleyServer, **config: Any) -> AsyncIterator[Checked]:
    """A GA SDK connection, past `session.created`, with text output and `config` applied."""
    client = AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, websocket_base_url=server.ws_base_url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        rt = Checked(conn, "ga")
        created = await rt.recv()
        assert created["type"] == "session.created"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], **config})
        await rt.until("session.updated")
        yield rt


async def turn(rt: Checked, text: str | None = None, **response: Any) -> list[dict[str, Any]]:
    """Optionally add a user message, then run one response; the events up to `response.done`."""
    if text is not None:
        await rt.conversation.item.create(item={"type": "message", "role": "user",
                                                "content": [{"type": "input_text", "text": text}]})
        await asyncio.wait_for(rt.until("conversation.item.done"), TURN_TIMEOUT_S)
    await rt.response.create(response=response or None)  # type: ignore[arg-type]
    return await asyncio.wait_for(rt.until("response.done"), TURN_TIMEOUT_S)


def output_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] in (
        "response.output_text.delta", "response.output_audio_transcript.delta"))


def assert_failed(events: list[dict[str, Any]], code: str, *message_parts: str) -> dict[str, Any]:
    """The response ended `failed` with `code` and a message (containing `message_parts`), and
    the session reported no `error` event along the way."""
    done = events[-1]["response"]
    assert done["status"] == "failed", done
    details = done["status_details"]
    assert details["type"] == "failed"
    error = details["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    for part in message_parts:
        assert part in error["message"], error
    assert "error" not in types(events), [e for e in events if e["type"] == "error"]
    assert all(item["status"] != "in_progress" for item in done["output"]), done["output"]
    return error


def assert_completed(events: list[dict[str, Any]], text: str | None = None) -> dict[str, Any]:
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    assert "error" not in types(events)
    if text is not None:
        assert output_text(events) == text
    return done


async def the_session_goes_on(rt: Checked, llm: ScriptedLLMServer) -> None:
    """The next response on the same connection completes normally."""
    assert llm.pending == 0, "the fault consumed fewer LLM requests than scripted"
    llm.enqueue(Text("Back to normal."))
    assert_completed(await turn(rt, "are you there?"), "Back to normal.")
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": "are you there?"}


# --- the LLM -------------------------------------------------------------------------------

# (replies to script, the error code, a part of the message, how many requests Parley makes)
LLM_FAULTS = [
    pytest.param([HTTPError(500), HTTPError(500)], "llm_http_500", "HTTP 500", 1 + LLM_MAX_RETRIES, id="http-500"),
    pytest.param([HTTPError(400, {"error": {"message": "bad things", "type": "invalid_request_error"}})],
                 "llm_http_400", "bad things", 1, id="http-400-not-retried"),
    pytest.param([Malformed()], "llm_bad_stream", "malformed", 1, id="malformed-stream"),
    pytest.param([CutMidStream("This answer will be cut short")], "llm_stream_interrupted", "mid-stream", 1,
                 id="cut-mid-stream"),
    pytest.param([Hang(10), Hang(10)], "llm_timeout", f"{LLM_TIMEOUT_S}s", 1 + LLM_MAX_RETRIES,
                 id="hang-before-answer"),
    pytest.param([Hang(10, after_text="Let me think")], "llm_timeout", f"{LLM_TIMEOUT_S}s", 1, id="hang-mid-stream"),
]


@pytest.mark.parametrize(("replies", "code", "message_part", "attempts"), LLM_FAULTS)
async def test_llm_fault_fails_the_response_not_the_session(faulty: ParleyServer, llm: ScriptedLLMServer,
                                                            replies: list[Any], code: str, message_part: str,
                                                            attempts: int) -> None:
    async with session(faulty) as rt:
        llm.enqueue(*replies)
        started = time.monotonic()
        events = await turn(rt, "hello")
        elapsed = time.monotonic() - started
        assert_failed(events, code, message_part)
        assert len(llm.requests) == attempts
        # the 1 s timeout (not the 60 s default) bounds a hang: two attempts and a backoff
        assert elapsed < 2 * LLM_TIMEOUT_S + 3, elapsed
        await the_session_goes_on(rt, llm)


async def test_llm_500_once_is_retried_and_the_response_succeeds(faulty: ParleyServer, llm: ScriptedLLMServer) -> None:
    async with session(faulty) as rt:
        llm.enqueue(HTTPError(500), Text("Recovered after a retry."))
        events = await turn(rt, "hello")
        assert_completed(events, "Recovered after a retry.")
        assert len(llm.requests) == 2
        assert llm.requests[0]["messages"] == llm.requests[1]["messages"]
        await the_session_goes_on(rt, llm)


async def test_llm_server_down_then_back(llm_down: ParleyServer, llm_down_port: int) -> None:
    async with session(llm_down) as rt:
        for _ in range(2):  # and again: a failure leaves nothing behind
            started = time.monotonic()
            assert_failed(await turn(rt, "anyone there?"), "llm_unavailable", f"127.0.0.1:{llm_down_port}")
            assert time.monotonic() - started < 5
        # the LLM comes up on that port: the same session's next response works
        with ScriptedLLMServer(port=llm_down_port, model="m") as revived:
            revived.enqueue(Text("I am back."))
            assert_completed(await turn(rt, "now?"), "I am back.")
            assert revived.requests[-1]["messages"][-1] == {"role": "user", "content": "now?"}


# --- speech engines ------------------------------------------------------------------------


async def test_tts_500_fails_an_audio_response_and_the_session_goes_on(faulty: ParleyServer, llm: ScriptedLLMServer,
                                                                       tts: ScriptedTTSServer) -> None:
    async with session(faulty) as rt:
        tts.enqueue(*[TTSError(500)] * (1 + SPEECH_CLIENT_RETRIES))
        llm.enqueue(Text("Hello there."))
        events = await turn(rt, "say hello", output_modalities=["audio"])
        assert_failed(events, "tts_http_500", "HTTP 500")
        assert len(tts.requests) == 1 + SPEECH_CLIENT_RETRIES
        assert "response.output_audio.delta" not in types(events)
        # the next spoken response works
        reply = "Hello again."
        llm.enqueue(Text(reply))
        events = await turn(rt, "once more", output_modalities=["audio"])
        assert_completed(events, reply)
        audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
        assert len(audio) // 2 == tone_samples(reply)
        await the_session_goes_on(rt, llm)


async def test_stt_500_fails_the_transcript_and_the_session_goes_on(faulty: ParleyServer, llm: ScriptedLLMServer,
                                                                    stt: ScriptedSTTServer) -> None:
    audio = base64.b64encode(b"\x10\x00" * 12_000).decode()  # 500 ms of PCM16 at 24 kHz
    async with session(faulty, audio={"input": {"turn_detection": None,
                                                "transcription": {"model": "whisper-1"}}}) as rt:
        stt.enqueue(*[STTError(500)] * (1 + SPEECH_CLIENT_RETRIES))
        await rt.input_audio_buffer.append(audio=audio)
        await rt.input_audio_buffer.commit()
        events = await asyncio.wait_for(rt.until("conversation.item.input_audio_transcription.failed"), TURN_TIMEOUT_S)
        committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
        failed = events[-1]
        assert failed["item_id"] == committed["item_id"] and failed["content_index"] == 0
        assert failed["error"]["code"] == "stt_http_500" and "HTTP 500" in failed["error"]["message"]
        assert "error" not in types(events)
        assert len(stt.requests) == 1 + SPEECH_CLIENT_RETRIES
        # a response still runs (the model does not hear the untranscribed audio)
        llm.enqueue(Text("I did not catch that."))
        assert_completed(await turn(rt), "I did not catch that.")
        # and the next commit is transcribed
        await rt.input_audio_buffer.append(audio=audio)
        await rt.input_audio_buffer.commit()
        events = await asyncio.wait_for(rt.until("conversation.item.input_audio_transcription.completed"),
                                        TURN_TIMEOUT_S)
        assert events[-1]["transcript"] == "hello world"
        await the_session_goes_on(rt, llm)


# --- afterwards ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["faulty", "llm_down"])
def test_servers_are_healthy_afterwards(which: str, request: pytest.FixtureRequest) -> None:
    """Runs last in this module: after all the faults above, each server answers /healthz,
    has no session left, and never logged a traceback."""
    server: ParleyServer = request.getfixturevalue(which)
    assert server.proc is not None and server.proc.poll() is None
    health = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    deadline = time.monotonic() + 5
    while (live := httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5).json()["live_sessions"]) != 0:
        assert time.monotonic() < deadline, f"{live} sessions still live"
        time.sleep(0.05)
    log = server.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
