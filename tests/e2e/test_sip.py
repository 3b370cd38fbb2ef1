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
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI, OpenAI

from parley.audio.g711 import ulaw_decode, ulaw_encode
from parley.audio.resample import resample
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
    """A sideband WebSocket on a call: every event validated against the SDK's schema."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict] = []

    async def until(self, kind: str, timeout: float = 15.0, nth: int = 1) -> dict:
        """The `nth` event of type `kind` (reading more as needed)."""
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < nth:
                event = json.loads(await self.ws.recv())
                validate_server_event(event)
                self.events.append(event)
        return self.of(kind)[nth - 1]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

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


def _answer_sdp(messages: str) -> str:
    """The SDP of the 200 OK SIPp received."""
    start = messages.index("SIP/2.0 200 OK")
    block = messages[start:]
    return block[block.index("v=0"):].split("\n\n", 1)[0]
