"""The playground page (GET /playground) in headless Chromium, talking to a real Parley process
over WebRTC with a fake microphone that speaks test speech.

Chromium plays the WAV given by `--use-file-for-fake-audio-capture` from its first sample when the
page calls getUserMedia (the playground does that on Connect), then loops it.  The WAV is
1.5 s of silence (time for the call to come up), "turn off the lights in the kitchen" (flite's slt
voice, which pocketsphinx understands) and 4.5 s of silence, so the scripted reply has finished
before the sentence comes round again (it would barge in).  The page leaves Chromium's default
audio processing on, whose gain control boosts the first sentence about 2x: pocketsphinx often
mishears its first words ("danielle chill lights in the kitchen"); later loops arrive at unity gain
and are heard right, so the test waits (up to three loops) for any user turn with two of the words.

The server runs with an API key (`test-key`), which the test types into #api-key: the page mints an
ephemeral key with it and opens the call with that.

Needs Chromium (`apt-get install chromium chromium-driver`; the tests skip without it) and flite.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import StaticServer, chromium, chromium_path, mic_levels, wait_for, write_wav
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import ScriptedLLMServer, Text
from tests.support.speech import Speech, make_speech

pytest.importorskip("pocketsphinx")

SENTENCE = "turn off the lights in the kitchen"
WORDS = {"turn", "off", "lights", "kitchen"}
MIC_RATE = 48000


@pytest.fixture(scope="module")
def speech() -> Speech:
    return make_speech(SENTENCE, rate=MIC_RATE, lead_ms=1500, tail_ms=4500)


@pytest.fixture
def mic_wav(tmp_path: Path, speech: Speech) -> Path:
    return write_wav(tmp_path / "mic.wav", speech.pcm, MIC_RATE)


@pytest.fixture(scope="module")
def playground_server(scripted_llm: ScriptedLLMServer) -> Iterator[ParleyServer]:
    chromium_path()  # skip before starting a server for nothing
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak"}
    with ParleyServer(env, name="browser-playground") as server:
        yield server


async def test_fake_microphone_plays_the_wav_from_the_start(tmp_path: Path, mic_wav: Path, speech: Speech) -> None:
    """The harness itself: getUserMedia in Chromium hears the WAV's silence, then its speech,
    starting when the capture opens (the playground test's timing depends on that)."""
    with StaticServer(tmp_path) as site:
        async with chromium(tmp_path, mic_wav=mic_wav, name="browser-fake-mic") as browser:
            await browser.page.goto(site.origin + "/")
            levels = await mic_levels(browser.page, (speech.speech_end_ms + 800) / 1000)
    loud = [t for t, rms in levels if rms > 0.05]
    assert loud, f"the fake microphone stayed silent: max RMS {max(rms for _, rms in levels):.4f}"
    assert all(rms < 0.01 for t, rms in levels if t < speech.speech_start_ms - 300), "noise before the speech"
    # the speech starts where it does in the file (give or take the analyser window and start-up)
    assert abs(loud[0] - speech.speech_start_ms) < 400, f"speech heard from {loud[0]:.0f} ms, " \
        f"in the file from {speech.speech_start_ms:.0f} ms"
    assert abs(loud[-1] - speech.speech_end_ms) < 400


def _shares_words(text: str, minimum: int = 2) -> bool:
    return len(WORDS & set(re.findall(r"[a-z]+", text.lower()))) >= minimum


async def test_playground_voice_call(tmp_path: Path, mic_wav: Path, playground_server: ParleyServer,
                                     llm: ScriptedLLMServer) -> None:
    reply = "Done, the kitchen lights are off."
    llm.enqueue(Text(reply))
    url = f"http://127.0.0.1:{playground_server.port}/playground"
    async with chromium(tmp_path, mic_wav=mic_wav, name="browser-playground") as browser:
        page = browser.page
        await page.goto(url)
        notice = await page.locator("#ai-notice").inner_text()
        assert re.search(r"\bAI\b", notice), f"#ai-notice does not say it is an AI: {notice!r}"
        assert await page.locator("#status").inner_text() == "idle"
        assert playground_server.api_key
        await page.fill("#api-key", playground_server.api_key)
        await page.select_option("#turn-detection", "server_vad")

        started = time.monotonic()
        await page.click("#connect")
        status = await wait_for(
            page, "() => { const s = document.querySelector('#status').textContent; "
                  "return (s === 'connected' || s.startsWith('error')) && s; }",
            timeout_s=20, what="#status to become connected", browser=browser)
        assert status == "connected", f"{status}\n{playground_server.log()[-3000:]}"
        connected_s = time.monotonic() - started
        call_id = await page.evaluate("() => window.parley.callId")
        assert (call_id or "").startswith("rtc_"), call_id

        user_turns = await wait_for(
            page, """(words) => { const t = [...document.querySelectorAll('#transcript div.turn.user')]
                         .map((d) => d.textContent);
                       return t.some((s) => words.filter((w) => s.toLowerCase().split(/[^a-z]+/).includes(w)).length >= 2) && t; }""",
            arg=sorted(WORDS), timeout_s=25, what="a user turn with the spoken words", browser=browser)
        heard_s = time.monotonic() - started
        print(f"\nthe playground heard {user_turns!r}")
        assert any(_shares_words(t) for t in user_turns)

        assistant = await wait_for(
            page, """(reply) => { const t = [...document.querySelectorAll('#transcript div.turn.assistant')]
                         .map((d) => d.textContent);
                       return t.some((s) => s.includes(reply)) && t; }""",
            arg=reply, timeout_s=15, what="the assistant's scripted reply in the transcript", browser=browser)
        replied_s = time.monotonic() - started
        assert any(reply in t for t in assistant)
        # the scripted reply answers the first turn, and the LLM was asked with exactly what the page shows for it
        asked = [m["content"] for m in llm.requests[0]["messages"] if m["role"] == "user"][-1]
        assert asked in (user_turns[0], [{"type": "text", "text": user_turns[0]}]), (asked, user_turns)

        # totalAudioEnergy sums level² × seconds: ~0.02 for this reply, under 1e-4 for a noise floor
        audio = await wait_for(page, "() => window.parley.remoteAudio.energy > 1e-3 && window.parley.remoteAudio",
                               timeout_s=8, what="remote audio energy (the spoken reply on the remote track)",
                               browser=browser)

        event_types = await page.evaluate("() => window.parley.events.map((e) => e.type)")
        items = await page.locator("#events li").all_inner_texts()
        assert len(items) > 10, items
        assert "session.created" in event_types and any("session.created" in li for li in items), items[:20]
        for event_type in ("session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.committed",
                           "response.created", "response.done"):
            assert event_type in event_types, f"{event_type} missing from {event_types}"
        assert "error" not in event_types, [e for e in await page.evaluate("() => window.parley.events")
                                            if e["type"] == "error"]
        shot = await browser.screenshot("playground")

        await page.click("#hangup")
        status = await wait_for(page, "() => { const s = document.querySelector('#status').textContent; "
                                      "return s !== 'connected' && s; }",
                                timeout_s=10, what="#status to leave connected after hang-up", browser=browser)
        assert status == "ended", status
        print(f"playground: connected after {connected_s:.1f} s, user turn after {heard_s:.1f} s, reply after "
              f"{replied_s:.1f} s, remote audio energy {audio['energy']:.4f}; {len(items)} events; screenshot {shot}")
