"""WebRTC calls from a Python aiortc caller: SDP offer/answer over REST, events on the
`oai-events` data channel, speech in on the microphone track, response audio out on ours,
`output_audio_buffer.*`, barge-in that stops playout and truncates at the played position,
hang-up and a sideband WebSocket that steers the call."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from openai import AsyncOpenAI

from parley.audio.resample import resample
from tests.support.event_schema import validate_server_event
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import Text, ToolCall
from tests.support.speech import make_speech
from tests.support.webrtc_client import RATE, WebRTCCaller

pytest.importorskip("aiortc")

SENTENCE = "turn off the lights in the kitchen"
NO_VAD = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}


@pytest.fixture(scope="module")
def rtc_server(scripted_llm) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak"}
    with ParleyServer(env, name="webrtc") as server:
        yield server


@pytest.fixture
async def caller(rtc_server) -> AsyncIterator[WebRTCCaller]:
    c = WebRTCCaller(rtc_server.base_url, rtc_server.api_key)
    response = await c.connect()
    assert response.status_code == 201, response.text
    yield c
    await c.close()


def speech48k(text: str, **kw) -> tuple:
    speech = make_speech(text, **kw)
    return resample(speech.pcm, speech.rate, RATE), speech


async def test_call_answers_with_sdp_location_and_session_created(rtc_server, caller) -> None:
    assert caller.call_id and caller.call_id.startswith("rtc_")
    _, _, created = await caller.wait_for("session.created")
    validate_server_event(created)
    assert created["session"]["type"] == "realtime"
    caller.send({"type": "session.update", "event_id": "ev1", "session": {"type": "realtime", "instructions": "Be brief."}})
    _, _, updated = await caller.wait_for("session.updated")
    assert updated["session"]["instructions"] == "Be brief."
    caller.send({"type": "session.update", "event_id": "bad", "session": {"type": "realtime", "bogus": 1}})
    _, _, err = await caller.wait_for("error")
    assert err["error"]["code"] == "unknown_parameter" and err["error"]["event_id"] == "bad"


async def test_spoken_reply_plays_on_the_track_with_output_audio_buffer_events(caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send(NO_VAD)
    await caller.wait_for("session.updated")
    reply = "Sure. The kitchen lights are off now."
    llm.enqueue(Text(reply, chunk_size=6))
    caller.send({"type": "response.create"})
    i_done, t_done, done = await caller.wait_for("response.done", timeout=20)
    assert done["response"]["status"] == "completed"
    _, t_stop, stopped = await caller.wait_for("output_audio_buffer.stopped", timeout=20)
    types = caller.types()
    for _, event in caller.events:
        validate_server_event(event)
    i_start = types.index("output_audio_buffer.started")
    assert types.index("response.content_part.added") < i_start < i_done
    assert types.index("output_audio_buffer.stopped") > i_done
    assert stopped["response_id"] == done["response"]["id"]
    # audio travels on the media track, not as JSON
    assert "response.output_audio.delta" not in types
    assert "response.output_audio.done" in types
    transcript = next(e for _, e in caller.events if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == reply
    audible = caller.heard.audible()
    assert audible, "no audio arrived on the remote track"
    heard_s = audible[-1] - audible[0]
    print(f"\nheard {heard_s:.2f} s of reply audio; stopped came {t_stop - audible[-1]:+.3f} s after the last audible frame")
    assert 1.0 < heard_s < 8.0
    # played in real time: the last audible frame arrives long after the response was generated
    assert audible[-1] - t_done > 0.5
    assert abs(t_stop - audible[-1]) < 0.5


async def test_microphone_speech_is_heard_transcribed_and_answered(caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}}})
    await caller.wait_for("session.updated")
    llm.enqueue(Text("Done, the lights are off."))
    pcm, speech = speech48k(SENTENCE, lead_ms=300, tail_ms=1000)
    caller.mic.say(pcm)
    _, _, started = await caller.wait_for("input_audio_buffer.speech_started", timeout=10)
    _, _, stopped = await caller.wait_for("input_audio_buffer.speech_stopped", timeout=10)
    print(f"\nVAD over WebRTC: speech {started['audio_start_ms']}..{stopped['audio_end_ms']} ms "
          f"(true speech {speech.speech_start_ms:.0f}..{speech.speech_end_ms:.0f} ms after the first mic audio)")
    _, _, completed = await caller.wait_for("conversation.item.input_audio_transcription.completed", timeout=20)
    heard = completed["transcript"].lower().split()
    print(f"pocketsphinx heard {completed['transcript']!r} over Opus")
    assert len(set(heard) & set(SENTENCE.split())) >= 4
    await caller.wait_for("response.done", timeout=20)
    await caller.wait_for("output_audio_buffer.stopped", timeout=20)
    assert caller.heard.audible()
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": completed["transcript"]}


async def test_idle_track_sends_a_frame_per_400_ms_and_audio_after_silence_plays_at_its_stamps(caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send(NO_VAD)
    await caller.wait_for("session.updated")
    await asyncio.sleep(2.0)  # aiortc's jitter buffer hands a frame on 4 packets later: the first 100 ms are out
    first = len(caller.heard.stamps)
    await asyncio.sleep(2.0)
    idle = caller.heard.stamps[first:]
    # nothing plays: a keep-alive frame every 400 ms (as Opus DTX), not 50 frames a second, on the
    # 20 ms grid of the sender's clock
    assert 3 <= len(idle) <= 7, len(idle)
    assert {(b - a) % 2**32 for (_, a), (_, b) in zip(idle, idle[1:])} == {19200}
    llm.enqueue(Text("Sure. The kitchen lights are off now.", chunk_size=6))
    caller.send({"type": "response.create"})
    await caller.wait_for("output_audio_buffer.started", timeout=20)
    _, t_stopped, _ = await caller.wait_for("output_audio_buffer.stopped", timeout=20)
    await asyncio.sleep(0.5)
    audible = caller.heard.audible()
    reply = [(t, pts) for t, pts in caller.heard.stamps if audible[0] <= t <= audible[-1]]
    # every 20 ms of the reply, contiguous, still on the same grid after the silence
    assert {(b - a) % 2**32 for (_, a), (_, b) in zip(reply, reply[1:])} == {960}
    assert (reply[0][1] - idle[-1][1]) % 2**32 % 960 == 0
    # and played at its pace: arrival time - RTP time stays constant up to jitter
    offsets = [t - ((pts - reply[0][1]) % 2**32) / RATE for t, pts in reply]
    print(f"\n{len(idle)} frames in 2 s idle; reply: {len(reply)} frames over {audible[-1] - audible[0]:.2f} s, "
          f"arrival - RTP time varies by {1000 * (max(offsets) - min(offsets)):.0f} ms")
    assert max(offsets) - min(offsets) < 0.08
    assert 1.0 < audible[-1] - audible[0] < 8.0
    # after the reply: the 100 ms hang-over of silence, then keep-alives only
    assert len([s for s in caller.heard.stamps if s[0] > t_stopped + 0.3]) <= 3


async def test_barge_in_stops_playout_at_once_and_truncates_at_the_played_position(caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400, "create_response": False}}}}})
    await caller.wait_for("session.updated")
    long_reply = " ".join(f"This is sentence number {i} of a long answer." for i in range(1, 30))
    llm.enqueue(Text(long_reply, chunk_size=8, delay_s=0.03))
    caller.send({"type": "response.create"})
    await caller.wait_for("output_audio_buffer.started", timeout=20)
    await asyncio.sleep(1.5)  # let the caller hear some of it
    pcm, _ = speech48k("stop please", lead_ms=100, tail_ms=800)
    caller.mic.say(pcm)
    i_speech, t_speech, _ = await caller.wait_for("input_audio_buffer.speech_started", timeout=10)
    i_done, t_cancel, done = await caller.wait_for("response.done", timeout=10)
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    _, _, cleared = await caller.wait_for("output_audio_buffer.cleared", after=i_speech)
    _, _, truncated = await caller.wait_for("conversation.item.truncated", after=i_speech)
    await asyncio.sleep(1.0)
    item = done["response"]["output"][0]
    assert cleared["response_id"] == done["response"]["id"] and truncated["item_id"] == item["id"]
    assert "output_audio_buffer.stopped" not in caller.types()[i_speech:]
    # playout stops: the last audible frame of the reply comes soon after the cancel.  Audio reaches
    # the caller later than events do (its jitter buffer holds a few frames), so measure that lag
    # from when playout started and take it off.
    audible = [t for t in caller.heard.audible() if t < t_speech + 2.0]
    last_reply_audio, first_reply_audio = max(audible), min(audible)
    _, t_started, _ = await caller.wait_for("output_audio_buffer.started")
    audio_lag = max(0.0, first_reply_audio - t_started)
    stop_ms = 1000 * (last_reply_audio - audio_lag - t_cancel)
    print(f"\nbarge-in over WebRTC: last reply audio {1000 * (last_reply_audio - t_cancel):+.0f} ms after the cancel "
          f"as received, {stop_ms:+.0f} ms without the {1000 * audio_lag:.0f} ms audio path lag; "
          f"heard {1000 * (last_reply_audio - first_reply_audio):.0f} ms, truncated at {truncated['audio_end_ms']} ms")
    assert stop_ms < 100
    assert last_reply_audio - t_cancel < 0.25
    # the item is truncated where the caller stopped hearing it (within network and jitter-buffer slack)
    heard_ms = 1000 * (last_reply_audio - first_reply_audio)
    assert abs(truncated["audio_end_ms"] - heard_ms) < 250
    caller.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
    _, _, got = await caller.wait_for("conversation.item.retrieved")
    kept = got["item"]["content"][0]["transcript"]
    full = item["content"][0]["transcript"]
    assert 0 < len(kept) < len(full) and full.startswith(kept)
    assert "sentence number 1 " in kept


async def test_client_clear_stops_playout_and_truncates(caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send(NO_VAD)
    await caller.wait_for("session.updated")
    llm.enqueue(Text(" ".join(f"Here is sentence {i}." for i in range(1, 20)), chunk_size=10))
    caller.send({"type": "response.create"})
    await caller.wait_for("output_audio_buffer.started", timeout=20)
    _, _, done = await caller.wait_for("response.done", timeout=20)  # generated long before it is played
    await asyncio.sleep(1.0)
    caller.send({"type": "output_audio_buffer.clear", "event_id": "clr"})
    i, t_clear, cleared = await caller.wait_for("output_audio_buffer.cleared")
    _, _, truncated = await caller.wait_for("conversation.item.truncated", after=i)
    await asyncio.sleep(0.6)
    assert cleared["response_id"] == done["response"]["id"]
    assert 700 < truncated["audio_end_ms"] < 1600
    assert max(caller.heard.audible()) - t_clear < 0.25  # as received, jitter buffer included
    assert "output_audio_buffer.stopped" not in caller.types()


async def test_multipart_offer_with_session_and_sdk_hangup(rtc_server) -> None:
    client = AsyncOpenAI(api_key=rtc_server.api_key, base_url=rtc_server.base_url)
    c = WebRTCCaller(rtc_server.base_url, rtc_server.api_key,
                     multipart_session={"type": "realtime", "model": "gpt-realtime", "instructions": "Speak like a pirate."})
    try:
        response = await c.connect()
        assert response.status_code == 201 and response.headers["content-type"].startswith("application/sdp")
        _, _, created = await c.wait_for("session.created")
        assert created["session"]["instructions"] == "Speak like a pirate."
        await client.realtime.calls.hangup(c.call_id)
        await asyncio.wait_for(_closed(c), 10)
        with pytest.raises(Exception) as info:
            await client.realtime.calls.hangup(c.call_id)
        assert getattr(info.value, "status_code", None) == 404
    finally:
        await c.close()


async def _closed(c: WebRTCCaller) -> None:
    while c.channel.readyState != "closed" and c.pc.connectionState not in ("closed", "failed"):
        await asyncio.sleep(0.05)


async def test_sdk_calls_create_and_beta_offer(rtc_server) -> None:
    client = AsyncOpenAI(api_key=rtc_server.api_key, base_url=rtc_server.base_url)
    c = WebRTCCaller(rtc_server.base_url, rtc_server.api_key)
    try:
        await c.pc.setLocalDescription(await c.pc.createOffer())
        raw = await client.realtime.calls.with_raw_response.create(
            sdp=c.pc.localDescription.sdp, session={"type": "realtime", "instructions": "Hello from the SDK."})
        assert raw.status_code == 201
        assert raw.headers["location"].startswith("/v1/realtime/calls/rtc_")
        assert "a=candidate" in raw.text and "opus/48000/2" in raw.text
    finally:
        await c.close()
    beta = WebRTCCaller(rtc_server.base_url, rtc_server.api_key, path="/realtime")
    try:
        response = await beta.connect("?model=gpt-realtime")
        assert response.status_code == 201
        _, _, created = await beta.wait_for("session.created")
        validate_server_event(created, "beta")
        assert "modalities" in created["session"]  # the beta session shape
        await beta.wait_for("conversation.created")
    finally:
        await beta.close()


async def test_bad_requests_are_refused(rtc_server) -> None:
    url = rtc_server.base_url + "/realtime/calls"
    async with httpx.AsyncClient() as http:
        no_key = await http.post(url, content="v=0\r\n", headers={"Content-Type": "application/sdp"})
        assert no_key.status_code == 401
        auth = {"Authorization": f"Bearer {rtc_server.api_key}", "Content-Type": "application/sdp"}
        garbage = await http.post(url, content="hello", headers=auth)
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_offer"
        broken = await http.post(url, content="v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", headers=auth)
        assert broken.status_code == 400
        model = await http.post(url + "?model=nope", content="v=0\r\n", headers=auth)
        assert model.status_code == 400 and model.json()["error"]["code"] == "invalid_model"
        missing = await http.post(url + "/rtc_nope/hangup", headers=auth)
        assert missing.status_code == 404
        preflight = await http.options(url, headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "authorization,content-type,x-openai-agents-sdk"})
        assert preflight.status_code == 200
        assert "x-openai-agents-sdk" in preflight.headers["access-control-allow-headers"].lower()


async def test_sideband_watches_and_steers_the_call(rtc_server, caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send(NO_VAD)
    await caller.wait_for("session.updated")
    client = AsyncOpenAI(api_key=rtc_server.api_key, base_url=rtc_server.base_url,
                         websocket_base_url=rtc_server.ws_base_url)
    async with client.realtime.connect(call_id=caller.call_id) as side:
        first = json.loads((await side.recv_bytes()).decode())
        assert first["type"] == "session.created" and first["session"]["id"]
        await side.session.update(session={"type": "realtime", "instructions": "Steered from the server."})
        _, _, updated = await caller.wait_for("session.updated", where=lambda e: e["session"]["instructions"].startswith("Steered"))
        llm.enqueue(ToolCall("lookup_order", {"order": "42"}))
        llm.enqueue(Text("Your order ships today."))
        caller.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"], "tools": [
            {"type": "function", "name": "lookup_order", "description": "Find an order",
             "parameters": {"type": "object", "properties": {"order": {"type": "string"}}}}]}})
        caller.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                  "content": [{"type": "input_text", "text": "Where is order 42?"}]}})
        caller.send({"type": "response.create"})
        call_event = await _side_until(side, "response.function_call_arguments.done")
        await side.conversation.item.create(item={"type": "function_call_output", "call_id": call_event["call_id"],
                                                  "output": json.dumps({"status": "shipping today"})})
        await side.response.create()
        _, _, text = await caller.wait_for("response.output_text.done", timeout=20)
        assert text["text"] == "Your order ships today."
        tool_results = [m for m in llm.requests[-1]["messages"] if m["role"] == "tool"]
        assert json.loads(tool_results[-1]["content"]) == {"status": "shipping today"}
    async with httpx.AsyncClient() as http:
        ws_refused = await http.get(rtc_server.base_url + "/realtime/calls/nope")
        assert ws_refused.status_code in (404, 405)


async def _side_until(side, kind: str, limit: float = 20.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        event = json.loads((await asyncio.wait_for(side.recv_bytes(), limit)).decode())
        if event["type"] == kind:
            return event
    raise TimeoutError(kind)


async def test_a_call_that_never_connects_is_dropped(scripted_llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "none",
           "PARLEY_CALL_CONNECT_TIMEOUT_S": "1"}
    with ParleyServer(env, name="webrtc-timeout") as server:
        c = WebRTCCaller(server.base_url, server.api_key)
        await c.pc.setLocalDescription(await c.pc.createOffer())
        sdp = c.pc.localDescription.sdp
        await c.close()  # the caller goes away before any media flows
        auth = {"Authorization": f"Bearer {server.api_key}"}
        async with httpx.AsyncClient() as http:
            answer = await http.post(server.base_url + "/realtime/calls", content=sdp,
                                     headers={**auth, "Content-Type": "application/sdp"})
            assert answer.status_code == 201
            answered = time.monotonic()
            while '"msg": "call ended"' not in server.log_path.read_text():
                assert time.monotonic() - answered < 10, "the call was never dropped"
                await asyncio.sleep(0.1)
            assert time.monotonic() - answered > 0.8  # after PARLEY_CALL_CONNECT_TIMEOUT_S, not before
            assert "call never connected" in server.log_path.read_text()
            hangup = server.base_url + answer.headers["location"].removeprefix("/v1") + "/hangup"
            assert (await http.post(hangup, headers=auth)).status_code == 404  # gone


async def test_an_event_too_large_for_the_data_channel_becomes_an_error(caller, llm) -> None:
    await caller.wait_for("session.created")
    caller.send(NO_VAD)
    await caller.wait_for("session.updated")
    llm.enqueue(Text(" ".join(f"This is sentence number {i} of a long answer." for i in range(1, 8)), chunk_size=20))
    caller.send({"type": "response.create"})
    _, _, done = await caller.wait_for("response.done", timeout=20)
    item_id = done["response"]["output"][0]["id"]
    caller.send({"type": "conversation.item.retrieve", "item_id": item_id})  # seconds of audio: > 256 KiB as JSON
    _, _, err = await caller.wait_for("error", timeout=10)
    assert err["error"]["code"] == "event_too_large" and "conversation.item.retrieved" in err["error"]["message"]
    caller.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Still here."}})
    _, _, updated = await caller.wait_for("session.updated", where=lambda e: e["session"]["instructions"] == "Still here.")
    assert caller.channel.readyState == "open"
