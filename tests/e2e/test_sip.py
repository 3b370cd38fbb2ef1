"""Phone calls over SIP against a real Parley process, with SIPp as the caller.

SIPp sends the INVITE; a webhook receiver gets `realtime.call.incoming`, whose signature the
openai SDK verifies; the test answers with `/accept` (or `/reject`, `/refer`, `/hangup`) and
follows the call on a sideband WebSocket.  Speech made by flite reaches Parley as G.711 RTP from
SIPp (`rtp_stream`).  SIPp 3.6 does not read the RTP that comes back, so the calls that check
Parley's audio and keypad give the SDP a Python RTP endpoint, which hears the answer and sends
RFC 4733 DTMF.  sipp comes from Debian's sip-tester (scripts/test installs it); without it these
tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import base64
import json
import contextlib
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI, OpenAI

from parley.audio.g711 import ulaw_decode, ulaw_encode
from parley.audio.resample import resample
from parley.transports.sip_message import SipMessage, parse
from tests.support.event_schema import validate_server_event
from tests.support.parley_server import ParleyServer, free_port
from tests.support.scripted_llm import Text
from tests.support.sip_caller import (RtpPeer, SippRun, WebhookReceiver, best_match, energy, free_udp_port,
                                     sdp_audio_address)
from tests.support.speech import make_speech

SECRET = "whsec_" + "c2lwLXRlc3Qtc2VjcmV0LWZvci1wYXJsZXk="  # base64 of a test secret
SENTENCE = "i would like to book a table for two"
SESSION = {"type": "realtime", "instructions": "You answer the phone.", "audio": {"input": {
    "transcription": {"model": "whisper-1"},
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}}


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def sip_server(scripted_llm, webhook) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak",
           "PARLEY_SIP_PORT": str(free_port()), "PARLEY_SIP_WEBHOOK_URL": webhook.url,
           "PARLEY_SIP_WEBHOOK_SECRET": SECRET, "PARLEY_SIP_ANSWER_TIMEOUT_S": "3"}
    with ParleyServer(env, name="sip") as server:
        server.sip_port = int(env["PARLEY_SIP_PORT"])  # type: ignore[attr-defined]
        yield server


@pytest.fixture
async def http(sip_server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sip_server.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {sip_server.api_key}"}) as client:
        yield client


@pytest.fixture
def sdk(sip_server) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=sip_server.api_key, base_url=sip_server.base_url)


@pytest.fixture
def speech_file(tmp_path: Path) -> Path:
    """flite's speech as raw u-law at 8 kHz, what SIPp's rtp_stream plays (payload type 0)."""
    speech = make_speech(SENTENCE, rate=8000, lead_ms=800, tail_ms=1500)
    path = tmp_path / "speech.ulaw"
    path.write_bytes(ulaw_encode(speech.pcm))
    return path


class Sideband:
    """A sideband WebSocket on a call, read as events arrive (each validated against the SDK's
    schema and stamped with the time it arrived)."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self.times: list[float] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                event = json.loads(raw)
                validate_server_event(event)
                self.events.append(event)
                self.times.append(time.monotonic())
                self._arrived.set()
        finally:
            self._arrived.set()

    async def until(self, kind: str, timeout: float = 15.0, nth: int = 1) -> dict:
        """The `nth` event of type `kind` (waiting for it as needed); ConnectionClosed when the
        call ended first."""
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < nth:
                if self._reader.done():
                    self._reader.result()  # a schema failure surfaces here
                    await self.ws.recv()  # raises ConnectionClosed
                self._arrived.clear()
                await self._arrived.wait()
        return self.of(kind)[nth - 1]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def time_of(self, event: dict) -> float:
        return self.times[next(i for i, e in enumerate(self.events) if e is event)]

    async def send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))


async def sideband(server: ParleyServer, call_id: str) -> Sideband:
    ws = await websockets.connect(f"{server.ws_base_url}/realtime?call_id={call_id}",
                                  additional_headers={"Authorization": f"Bearer {server.api_key}"})
    return Sideband(ws)


async def incoming(webhook: WebhookReceiver, seen: int) -> dict:
    """The next webhook, verified as the openai SDK verifies OpenAI's."""
    headers, body = await webhook.next_delivery(seen)
    event = OpenAI(api_key="unused", webhook_secret=SECRET).webhooks.unwrap(body, headers)
    assert event.type == "realtime.call.incoming"
    assert re.fullmatch(r"rtc_[0-9a-f]{32}", event.data.call_id)
    return json.loads(body)


async def test_call_is_signed_accepted_heard_answered_and_ended_by_bye(sip_server, webhook, http, sdk, llm,
                                                                       speech_file, tmp_path) -> None:
    """SIPp plays the speech from its own media port: the server hears it, answers, and BYE ends the call."""
    llm.enqueue(Text("It is sunny all day."))
    media_port = free_udp_port()
    sipp = await SippRun("uac_call", sip_server.sip_port, pause_ms=7000, media_port=media_port, keys={
        "rtp_ip": "127.0.0.1", "rtp_port": str(media_port), "speech": f"{speech_file},1,0"}).start(tmp_path)
    try:
        seen = len(webhook.deliveries)
        event = await incoming(webhook, seen)
        headers = {h["name"]: h["value"] for h in event["data"]["sip_headers"]}
        assert "+15550100" in headers["From"] and "parley@" in headers["To"] and headers["Call-ID"]
        call_id = event["data"]["call_id"]
        await sdk.realtime.calls.accept(call_id, **SESSION)
        side = await sideband(sip_server, call_id)
        created = await side.until("session.created")
        assert created["session"]["instructions"] == "You answer the phone."
        completed = await side.until("conversation.item.input_audio_transcription.completed", timeout=20)
        print(f"\npocketsphinx heard {completed['transcript']!r} over G.711 from SIPp")
        assert completed["transcript"].strip()  # pocketsphinx's 8 kHz words are poor: check the audio itself
        await side.send({"type": "conversation.item.retrieve", "item_id": completed["item_id"]})
        item = (await side.until("conversation.item.retrieved"))["item"]
        heard = np.frombuffer(base64.b64decode(item["content"][0]["audio"]), "<i2")
        similarity = best_match(resample(heard, 24000, 8000), ulaw_decode(speech_file.read_bytes()))
        print(f"the user item's audio matches the speech SIPp sent with correlation {similarity:.3f}")
        assert similarity > 0.95
        done = await side.until("response.done", timeout=20)
        assert done["response"]["status"] == "completed"
        await side.until("output_audio_buffer.started")
        assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": completed["transcript"]}
        assert await sipp.wait(20) == 0, sipp.messages()[-3000:]  # 200 to the INVITE and to its BYE
        with pytest.raises(websockets.ConnectionClosed):  # the BYE ended the call and its sideband
            await side.until("never", timeout=5)
        assert (await http.post(f"/realtime/calls/{call_id}/hangup")).status_code == 404
    finally:
        await sipp.stop()


async def test_answer_audio_comes_back_as_rtp_keys_arrive_as_dtmf_and_hangup_sends_bye(
        sip_server, webhook, http, llm, tmp_path) -> None:
    rtp = await RtpPeer().open()
    sipp = await SippRun("uac_hung_up", sip_server.sip_port,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": str(rtp.port)}).start(tmp_path)
    try:
        call_id = (await incoming(webhook, len(webhook.deliveries)))["data"]["call_id"]
        no_vad = {**SESSION, "audio": {"input": {"turn_detection": None}}}
        assert (await http.post(f"/realtime/calls/{call_id}/accept", json=no_vad)).status_code == 200
        again = await http.post(f"/realtime/calls/{call_id}/accept", json=no_vad)
        assert again.status_code == 409 and again.json()["error"]["code"] == "call_already_accepted"
        side = await sideband(sip_server, call_id)
        await side.until("session.created")
        llm.enqueue(Text("Hello, thanks for calling. How can I help you today?"))
        await side.send({"type": "response.create"})
        await side.until("response.done", timeout=20)
        await side.until("output_audio_buffer.stopped", timeout=20)
        audio = rtp.audio()
        loud = [p for _, _, p in rtp.packets if p.payload_type == 0 and energy(ulaw_decode(p.payload)) > 300]
        print(f"\nheard {len(rtp.packets)} RTP packets, {len(loud) * 20} ms of them loud, rms {energy(audio):.0f}")
        assert {p.payload_type for _, _, p in rtp.packets} == {0} and {len(p.payload) for _, _, p in rtp.packets} == {160}
        assert 1000 < len(loud) * 20 < 8000
        seqs = [p.sequence for _, _, p in rtp.packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
        span = rtp.packets[-1][0] - rtp.packets[0][0]
        assert abs(span - 0.02 * (len(rtp.packets) - 1)) < 0.3  # paced in real time, not in a burst
        server_rtp = sdp_audio_address(_answer_sdp(sipp.messages()))
        await rtp.send_dtmf("5", server_rtp, timestamp=1000)
        await rtp.send_dtmf("#", server_rtp, timestamp=9000)
        await side.until("input_audio_buffer.dtmf_event_received", nth=2)
        await asyncio.sleep(0.3)  # the end packets' repeats must not be reported again
        await side.send({"type": "conversation.item.retrieve", "item_id": "none"})
        await side.until("error")
        keys = side.of("input_audio_buffer.dtmf_event_received")
        assert [k["event"] for k in keys] == ["5", "#"] and all(isinstance(k["received_at"], int) for k in keys)
        assert (await http.post(f"/realtime/calls/{call_id}/hangup")).status_code == 200
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]  # SIPp got our BYE and answered it
    finally:
        rtp.close()
        await sipp.stop()


async def test_barge_in_stops_the_answer_rtp_at_once_and_truncates_at_what_was_played(
        sip_server, webhook, http, llm, tmp_path) -> None:
    """The caller talks over the answer: its RTP goes quiet within a packet or two of the
    cancelled response.done, and the item keeps just the audio that went out as RTP."""
    rtp = await RtpPeer().open()
    sipp = await SippRun("uac_hung_up", sip_server.sip_port,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": str(rtp.port)}).start(tmp_path)
    try:
        call_id = (await incoming(webhook, len(webhook.deliveries)))["data"]["call_id"]
        vad = {**SESSION, "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 400, "create_response": False}}}}
        assert (await http.post(f"/realtime/calls/{call_id}/accept", json=vad)).status_code == 200
        side = await sideband(sip_server, call_id)
        await side.until("session.created")
        rtp.talk(await rtp.first_heard())  # a phone sends all the time; silence until the caller speaks
        long_reply = " ".join(f"This is sentence number {i} of a long answer." for i in range(1, 30))
        llm.enqueue(Text(long_reply, chunk_size=8, delay_s=0.03))
        await side.send({"type": "response.create"})
        started = await side.until("output_audio_buffer.started", timeout=20)
        await asyncio.sleep(1.5)  # the caller hears some of it
        rtp.say(make_speech("stop please", rate=8000, lead_ms=100, tail_ms=800).pcm)
        speech = await side.until("input_audio_buffer.speech_started", timeout=10)
        done = await side.until("response.done", timeout=10)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        cleared = await side.until("output_audio_buffer.cleared")
        truncated = await side.until("conversation.item.truncated")
        item = done["response"]["output"][0]
        assert cleared["response_id"] == done["response"]["id"] and truncated["item_id"] == item["id"]
        await asyncio.sleep(0.6)  # RTP keeps flowing (quiet) after the barge-in
        assert not side.of("output_audio_buffer.stopped")
        t_cancel, t_started = side.time_of(done), side.time_of(started)
        answer = [(t, p) for t, _, p in rtp.packets if t >= t_started - 0.1]
        loud = [t for t, p in answer if energy(ulaw_decode(p.payload)) > 300]
        last_loud, first_loud = max(loud), min(loud)
        after = [t for t, _ in answer if t > t_cancel + 0.1]
        heard_ms = 20 * sum(1 for t, _ in answer if first_loud <= t <= last_loud)
        print(f"\nbarge-in over SIP: speech sent {1000 * (side.time_of(speech) - rtp.said_at[0]):.0f} ms before "
              f"speech_started; last loud answer packet {1000 * (last_loud - t_cancel):+.0f} ms from the "
              f"cancelled response.done; heard {heard_ms} ms, truncated at {truncated['audio_end_ms']} ms")
        assert last_loud - t_cancel < 0.1
        assert len(after) > 20  # the stream goes on, quiet: the call is still up
        assert abs(truncated["audio_end_ms"] - heard_ms) < 150
        await side.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        kept = (await side.until("conversation.item.retrieved"))["item"]["content"][0]
        kept_audio = np.frombuffer(base64.b64decode(kept["audio"]), "<i2")
        kept_ms = len(kept_audio) / 24
        full = item["content"][0]["transcript"]
        print(f"the item keeps {kept_ms:.0f} ms of audio and {len(kept['transcript'])} of {len(full)} "
              f"transcript characters")
        assert abs(kept_ms - truncated["audio_end_ms"]) <= 20
        assert 0 < len(kept["transcript"]) < len(full) and full.startswith(kept["transcript"])
        heard = ulaw_decode(b"".join(p.payload for t, p in answer if first_loud <= t <= last_loud))
        similarity = best_match(heard[800:8800], resample(kept_audio, 24000, 8000))  # a second of it, found in the item
        print(f"the RTP the caller heard matches the kept audio with correlation {similarity:.3f}")
        assert similarity > 0.9
        assert (await http.post(f"/realtime/calls/{call_id}/hangup")).status_code == 200
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]
    finally:
        rtp.close()
        await sipp.stop()


@pytest.mark.parametrize(("action", "status"), [({"status_code": 486}, 486), ({}, 603), (None, 480)])
async def test_reject_and_no_answer_give_the_sip_status(sip_server, webhook, http, sdk, tmp_path, action,
                                                       status) -> None:
    sipp = await SippRun("uac_refused", sip_server.sip_port,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": "4000"}).start(tmp_path)
    try:
        call_id = (await incoming(webhook, len(webhook.deliveries)))["data"]["call_id"]
        if action is not None:
            await sdk.realtime.calls.reject(call_id, **action)
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]
        assert f"SIP/2.0 {status} " in sipp.messages()
        late = await http.post(f"/realtime/calls/{call_id}/accept", json=SESSION)
        assert late.status_code == 404 and late.json()["error"]["code"] == "call_not_found"
    finally:
        await sipp.stop()


async def test_cancel_while_ringing_gets_487(sip_server, webhook, http, tmp_path) -> None:
    sipp = await SippRun("uac_cancel", sip_server.sip_port,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": "4000"}).start(tmp_path)
    try:
        call_id = (await incoming(webhook, len(webhook.deliveries)))["data"]["call_id"]
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]
        assert "SIP/2.0 487 " in sipp.messages()
        assert (await http.post(f"/realtime/calls/{call_id}/accept", json=SESSION)).status_code == 404
    finally:
        await sipp.stop()


async def test_refer_transfers_the_caller_over_tcp(sip_server, webhook, http, sdk, tmp_path) -> None:
    sipp = await SippRun("uac_refer", sip_server.sip_port, transport="t1",
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": "4000"}).start(tmp_path)
    try:
        call_id = (await incoming(webhook, len(webhook.deliveries)))["data"]["call_id"]
        assert (await http.post(f"/realtime/calls/{call_id}/accept", json=SESSION)).status_code == 200
        bad = await http.post(f"/realtime/calls/{call_id}/refer", json={"target_uri": "mailto:x@example.com"})
        assert bad.status_code == 400
        await sdk.realtime.calls.refer(call_id, target_uri="tel:+14155550123")
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]  # 202, NOTIFY 200, then our BYE
        assert "Refer-To: <tel:+14155550123>" in sipp.messages()
    finally:
        await sipp.stop()


async def test_control_routes_need_an_api_key(sip_server) -> None:
    async with httpx.AsyncClient(base_url=sip_server.base_url) as anon:
        for action in ("accept", "reject", "refer"):
            refused = await anon.post(f"/realtime/calls/rtc_{'0' * 32}/{action}", json={},
                                      headers={"Authorization": "Bearer wrong"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def free_udp_range(n: int) -> tuple[int, int]:
    """`n` consecutive free UDP ports on loopback."""
    for _ in range(50):
        first = random.randrange(20000, 30000)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + n):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            return first, first + n - 1
        except OSError:
            continue
    raise RuntimeError("no free UDP port range")


@pytest.fixture(scope="module")
def open_server(scripted_llm) -> Iterator[ParleyServer]:
    """No webhook (calls are accepted at once), SIP from 127.0.0.1 only, RTP on a few ports,
    and callers silent for 1.5 s are hung up."""
    low, high = free_udp_range(4)
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "espeak", "PARLEY_SIP_PORT": str(free_port()),
           "PARLEY_SIP_ALLOWED_NETWORKS": "127.0.0.1/32", "PARLEY_SIP_RTP_PORT_MIN": str(low),
           "PARLEY_SIP_RTP_PORT_MAX": str(high), "PARLEY_SIP_RTP_TIMEOUT_S": "1.5"}
    with ParleyServer(env, name="sip-open") as server:
        server.sip_port = int(env["PARLEY_SIP_PORT"])  # type: ignore[attr-defined]
        server.rtp_ports = (low, high)  # type: ignore[attr-defined]
        yield server


async def accepted_call(server: ParleyServer, before: int, timeout: float = 10.0) -> str:
    """The id of the next call the server accepted on its own (its log's "call accepted")."""
    async with asyncio.timeout(timeout):
        while True:
            lines = [json.loads(line) for line in server.log().splitlines() if '"call accepted"' in line]
            if len(lines) > before:
                return str(lines[before]["call_id"])
            await asyncio.sleep(0.02)


def accepted_so_far(server: ParleyServer) -> int:
    return server.log().count('"call accepted"')


@pytest.mark.parametrize("codec", [0, 8], ids=["pcmu", "pcma"])
async def test_without_a_webhook_calls_are_answered_with_the_default_session_on_an_rtp_port_of_the_range(
        open_server, llm, speech_file, tmp_path, codec) -> None:
    """A caller offering only `codec` (and keys) is heard and answered in it, both ways over RTP."""
    llm.enqueue(Text("Hello there, how can I help?"))
    before = accepted_so_far(open_server)
    sipp = await SippRun("uac_hung_up", open_server.sip_port, keys={
        "rtp_ip": "127.0.0.1", "rtp_port": str(free_udp_port()), "formats": f"{codec} 101"}).start(tmp_path)
    rtp = await RtpPeer(codec).open()
    try:
        call_id = await accepted_call(open_server, before)
        side = await sideband(open_server, call_id)
        created = await side.until("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        async with asyncio.timeout(5):
            while "SIP/2.0 200 OK" not in sipp.messages():
                await asyncio.sleep(0.02)
        answer_sdp = _answer_sdp(sipp.messages())
        assert re.search(rf"^m=audio \d+ RTP/AVP {codec} 101$", answer_sdp, re.M), answer_sdp
        server_rtp = sdp_audio_address(answer_sdp)
        low, high = open_server.rtp_ports
        assert low <= server_rtp[1] <= high, (server_rtp, open_server.rtp_ports)
        # the speech comes from another port than the offer's: Parley latches onto it (symmetric RTP)
        sent = ulaw_decode(speech_file.read_bytes())
        rtp.talk(server_rtp)
        rtp.say(sent)
        await side.until("input_audio_buffer.speech_started", timeout=10)
        committed = await side.until("input_audio_buffer.committed", timeout=15)
        await side.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})
        item = (await side.until("conversation.item.retrieved"))["item"]
        heard = np.frombuffer(base64.b64decode(item["content"][0]["audio"]), "<i2")
        similarity = best_match(resample(heard, 24000, 8000), sent)
        assert similarity > 0.95
        reply = (await side.until("response.done", timeout=20))["response"]["output"][0]
        await side.until("output_audio_buffer.stopped", timeout=20)
        answer = [p for t, _, p in rtp.packets if t >= side.time_of(committed)]
        assert {p.payload_type for p in answer} == {codec} and {len(p.payload) for p in answer} == {160}
        heard = rtp.decode(b"".join(p.payload for p in answer))
        await side.send({"type": "conversation.item.retrieve", "item_id": reply["id"]})
        said = np.frombuffer(base64.b64decode((await side.until("conversation.item.retrieved", nth=2))["item"]
                                              ["content"][0]["audio"]), "<i2")
        loud = np.flatnonzero(np.abs(heard) > 1000)
        match = best_match(heard[loud[0]:loud[-1]], resample(said, 24000, 8000))
        print(f"\nauto-accepted call on RTP port {server_rtp[1]} of {low}-{high}, payload type {codec}: the default "
              f"session heard the caller (correlation {similarity:.3f}); its answer came back in {len(answer)} "
              f"packets, {len(loud) / 8000:.1f} s loud, matching the reply item's audio with {match:.3f}")
        assert len(loud) > 4000 and match > 0.9
        rtp.close()  # the caller goes quiet without a BYE: the RTP timeout hangs up
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]
    finally:
        rtp.close()
        await sipp.stop()


async def test_a_caller_that_goes_silent_without_bye_is_hung_up_and_its_call_freed(open_server, tmp_path) -> None:
    rtp = await RtpPeer().open()
    before = accepted_so_far(open_server)
    sipp = await SippRun("uac_hung_up", open_server.sip_port,
                         keys={"rtp_ip": "127.0.0.1", "rtp_port": str(rtp.port)}).start(tmp_path)
    try:
        call_id = await accepted_call(open_server, before)
        side = await sideband(open_server, call_id)
        await side.until("session.created")
        server_rtp = await rtp.first_heard()
        rtp.talk(server_rtp)
        await asyncio.sleep(2.0)  # longer than the timeout: a caller that talks is not hung up
        assert sipp.proc is not None and sipp.proc.returncode is None
        rtp.stop_talking()
        quiet_at = time.monotonic()
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]  # Parley's BYE, answered
        bye_after = time.monotonic() - quiet_at
        with pytest.raises(websockets.ConnectionClosed):
            await side.until("never", timeout=5)
        print(f"\nthe silent caller was hung up {bye_after:.2f} s after its last RTP (timeout 1.5 s)")
        assert 1.3 < bye_after < 2.5
        assert "no RTP from the caller" in open_server.log()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(server_rtp)  # the call's RTP socket is closed
        async with httpx.AsyncClient(base_url=open_server.base_url,
                                     headers={"Authorization": f"Bearer {open_server.api_key}"}) as http:
            assert (await http.post(f"/realtime/calls/{call_id}/hangup")).status_code == 404
    finally:
        rtp.close()
        await sipp.stop()


async def test_sip_from_outside_the_allowed_networks_is_refused(open_server, tmp_path) -> None:
    """127.0.0.2 is loopback too, but not in PARLEY_SIP_ALLOWED_NETWORKS=127.0.0.1/32."""
    before = accepted_so_far(open_server)
    sipp = await SippRun("uac_refused", open_server.sip_port, local_ip="127.0.0.2",
                         keys={"rtp_ip": "127.0.0.2", "rtp_port": "4000"}).start(tmp_path)
    try:
        assert await sipp.wait(10) == 0, sipp.messages()[-3000:]
        assert "SIP/2.0 403 " in sipp.messages() and "SIP/2.0 100 " not in sipp.messages()
    finally:
        await sipp.stop()
    options = ("OPTIONS sip:parley@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5060;branch=z9hG4bKout\r\n"
               "From: <sip:x@127.0.0.2>;tag=1\r\nTo: <sip:parley@127.0.0.1>\r\nCall-ID: out\r\n"
               "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", open_server.sip_port, local_addr=("127.0.0.2", 0))
    writer.write(options)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SIP/2.0 403 ")  # over TCP as well
    writer.close()
    malformed = b"INVITE sip:parley@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKm\r\n" \
                b"From: <sip:x@h>;tag=1\r\nTo: <sip:p@h>\r\nCall-ID: m\r\nCSeq: x INVITE\r\n" \
                b"Content-Length: \xc2\xb2\r\n\r\n"
    for source, answered in (("127.0.0.2", False), ("127.0.0.1", True)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(1.0)
            sock.sendto(malformed, ("127.0.0.1", open_server.sip_port))
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                reply = b""
        # a malformed message is answered 400 from an allowed address, and dropped from elsewhere
        assert reply.startswith(b"SIP/2.0 400 ") == answered, (source, reply[:80])
    assert accepted_so_far(open_server) == before
    assert "Unhandled exception" not in open_server.log() and "Traceback" not in open_server.log()


def _answer_sdp(messages: str) -> str:
    """The SDP of the 200 OK SIPp received."""
    start = messages.index("SIP/2.0 200 OK")
    block = messages[start:]
    return block[block.index("v=0"):].split("\n\n", 1)[0]


@pytest.fixture(scope="module")
def full_sip(scripted_llm, webhook) -> Iterator[ParleyServer]:
    """Room for one session, with the app answering calls through the webhook."""
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "espeak",
           "PARLEY_SIP_PORT": str(free_port()), "PARLEY_SIP_WEBHOOK_URL": webhook.url,
           "PARLEY_SIP_WEBHOOK_SECRET": SECRET, "PARLEY_MAX_SESSIONS": "1"}
    with ParleyServer(env, name="sip-full") as server:
        server.sip_port = int(env["PARLEY_SIP_PORT"])  # type: ignore[attr-defined]
        yield server


async def test_at_the_session_cap_an_invite_gets_503_and_accepting_a_ringing_call_503_both_with_retry_after(
        full_sip, webhook, tmp_path) -> None:
    """A call rings while there is room; then a WebSocket session takes the one place: a new INVITE
    is refused at once, and the app's /accept of the ringing call gets 503, the call ringing on
    until the place is free again."""
    ringing = await SippRun("uac_hung_up", full_sip.sip_port,
                            keys={"rtp_ip": "127.0.0.1", "rtp_port": "4000"}).start(tmp_path)
    sdk = AsyncOpenAI(api_key=full_sip.api_key, base_url=full_sip.base_url, websocket_base_url=full_sip.ws_base_url)
    try:
        call_id = (await incoming(webhook, len(webhook.deliveries)))["data"]["call_id"]
        async with sdk.realtime.connect(model="gpt-realtime") as ws:
            assert json.loads(await ws.recv_bytes())["type"] == "session.created"
            seen = len(webhook.deliveries)
            refused = await SippRun("uac_refused", full_sip.sip_port,
                                    keys={"rtp_ip": "127.0.0.1", "rtp_port": "4000"}).start(tmp_path)
            try:
                assert await refused.wait(10) == 0, refused.messages()[-3000:]
            finally:
                await refused.stop()
            reply = refused.messages()[refused.messages().index("SIP/2.0 503 "):].split("\n\n", 1)[0]
            assert re.search(r"^Retry-After: [1-9]\d*$", reply, re.M | re.I), reply
            assert "SIP/2.0 180 " not in refused.messages() and len(webhook.deliveries) == seen  # never rang
            async with httpx.AsyncClient(base_url=full_sip.base_url, timeout=10,
                                         headers={"Authorization": f"Bearer {full_sip.api_key}"}) as http:
                full = await http.post(f"/realtime/calls/{call_id}/accept", json=SESSION)
                print(f"\nat the cap: SIP {reply.splitlines()[0]!r}; /accept {full.status_code} "
                      f"Retry-After {full.headers.get('retry-after')} {full.json()}")
                assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
                assert full.json()["error"]["type"] == "server_error"
                assert full.json()["error"]["code"] == "server_overloaded"
                assert "limit of 1 concurrent sessions" in full.json()["error"]["message"]
        async with httpx.AsyncClient(base_url=full_sip.base_url, timeout=10,
                                     headers={"Authorization": f"Bearer {full_sip.api_key}"}) as http:
            async with asyncio.timeout(10):  # the WebSocket session's place is freed as it closes
                accept = f"/realtime/calls/{call_id}/accept"
                while (accepted := await http.post(accept, json=SESSION)).status_code == 503:
                    await asyncio.sleep(0.05)
            assert accepted.status_code == 200, accepted.text
            assert (await http.post(f"/realtime/calls/{call_id}/hangup")).status_code == 200
        assert await ringing.wait(10) == 0, ringing.messages()[-3000:]  # answered, then our BYE
    finally:
        await ringing.stop()


@pytest.fixture(scope="module")
def full_open_sip(scripted_llm) -> Iterator[ParleyServer]:
    """Room for one session, calls accepted without a webhook."""
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_ENGINE": "none", "PARLEY_TTS_ENGINE": "espeak",
           "PARLEY_SIP_PORT": str(free_port()), "PARLEY_MAX_SESSIONS": "1"}
    with ParleyServer(env, name="sip-full-open") as server:
        server.sip_port = int(env["PARLEY_SIP_PORT"])  # type: ignore[attr-defined]
        yield server


def _request(method: str, n: int, local_port: int, sip_port: int, *, to: str = "<sip:parley@127.0.0.1>",
             cseq: int = 1, branch: str = "") -> bytes:
    """Caller n's INVITE (offering PCMU), or its ACK or BYE in the call (`to` with the server's tag)."""
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n" \
        if method == "INVITE" else ""
    return (f"{method} sip:parley@127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch or f'z9hG4bK{method}{n}'};rport\r\n"
            f"From: <sip:caller{n}@127.0.0.1>;tag=b{n}\r\nTo: {to}\r\nCall-ID: burst-{n}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:caller{n}@127.0.0.1:{local_port}>\r\nMax-Forwards: 70\r\n"
            + (f"Content-Type: application/sdp\r\n" if sdp else "") + f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
            ).encode()


async def test_invites_arriving_together_at_a_cap_of_one_answer_one_and_refuse_the_rest_with_retry_after(
        full_open_sip) -> None:
    """Three INVITEs in one burst, auto-accepted: each is admitted before any call is answered, so the
    cap must be judged again once the RTP port is open, or all three would be answered."""
    server = ("127.0.0.1", full_open_sip.sip_port)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        for n in range(3):
            sock.sendto(_request("INVITE", n, port, server[1]), server)
        finals: dict[int, SipMessage] = {}
        async with asyncio.timeout(5):
            while len(finals) < 3:
                reply = parse(await loop.sock_recv(sock, 65536))[0]
                if (reply.status or 0) >= 200:
                    finals.setdefault(int((reply.get("call-id") or "").removeprefix("burst-")), reply)
        for n, reply in finals.items():  # ACK each answer; hang up the call answered
            ok = reply.status == 200
            sock.sendto(_request("ACK", n, port, server[1], to=reply.get("to") or "",
                                 branch="z9hG4bKACK" if ok else "z9hG4bKINVITE" + str(n)), server)
            if ok:
                sock.sendto(_request("BYE", n, port, server[1], to=reply.get("to") or "", cseq=2), server)
        async with asyncio.timeout(5):
            while (reply := parse(await loop.sock_recv(sock, 65536))[0]).get("cseq") != "2 BYE":
                pass
        assert reply.status == 200
    statuses = sorted(reply.status or 0 for reply in finals.values())
    refusals = [reply for reply in finals.values() if reply.status == 503]
    warned = full_open_sip.log().count("could not accept a call")
    print(f"\na burst of 3 INVITEs at a cap of 1: {statuses}; {warned} refused after the RTP port was opened")
    assert statuses == [200, 503, 503]
    assert all(int(reply.get("retry-after") or 0) > 0 for reply in refusals)
