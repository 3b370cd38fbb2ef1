"""`@openai/agents-realtime` in headless Chromium: its GA WebRTC transport (`OpenAIRealtimeWebRTC`
inside a `RealtimeSession`) against a real Parley process, from a page on another origin.

The package (pinned in tests/node/package-lock.json, installed with `npm ci` when missing) is
bundled for the browser with esbuild (`npm run build:browser` in tests/node) into
tests/browser/build/, and tests/browser/agents.html is served by a small static server on its own
port, so every request the page makes to Parley is cross-origin and Parley is started with only
that origin in PARLEY_CORS_ORIGINS.  The page reports what it sees in `window.probe`.

Needs Chromium (`apt-get install chromium chromium-driver`; the tests skip without it), node and npm.
"""

from __future__ import annotations

import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.support.browser import Browser, StaticServer, chromium, chromium_path, wait_for, write_wav
from tests.support.node import NODE_DIR, node_with
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import ScriptedLLMServer, Text
from tests.support.speech import silence

TESTS = Path(__file__).resolve().parents[1]
PAGE_DIR = TESTS / "browser"
BUNDLE = PAGE_DIR / "build" / "agents.js"


@pytest.fixture(scope="module")
def bundle() -> Path:
    """tests/browser/build/agents.js, freshly bundled from the pinned package."""
    chromium_path()
    _, npm_bin = node_with(("@openai/agents-realtime", "esbuild", "openai"), "to bundle @openai/agents-realtime")
    BUNDLE.unlink(missing_ok=True)
    started = time.monotonic()
    done = subprocess.run([npm_bin, "run", "--silent", "build:browser"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not BUNDLE.exists():
        pytest.fail(f"esbuild could not bundle {PAGE_DIR / 'agents.js'}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"\nbundled @openai/agents-realtime in {time.monotonic() - started:.1f} s: "
          f"{BUNDLE.stat().st_size / 1e6:.1f} MB")
    return BUNDLE


@pytest.fixture(scope="module")
def page_origin() -> Iterator[StaticServer]:
    with StaticServer(PAGE_DIR) as server:
        yield server


@pytest.fixture(scope="module")
def other_origin() -> Iterator[StaticServer]:
    """The same page on an origin Parley does not allow."""
    with StaticServer(PAGE_DIR) as server:
        yield server


@pytest.fixture(scope="module")
def agents_server(scripted_llm: ScriptedLLMServer, page_origin: StaticServer) -> Iterator[ParleyServer]:
    chromium_path()  # skip before starting a server for nothing
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak",
           "PARLEY_CORS_ORIGINS": page_origin.origin}
    with ParleyServer(env, name="browser-agents") as server:
        yield server


@pytest.fixture
def silent_mic(tmp_path: Path) -> Path:
    """The microphone says nothing: the conversation here is typed (`sendMessage`)."""
    return write_wav(tmp_path / "silence.wav", silence(2000, 48000), 48000)


async def mint_ephemeral_key(server: ParleyServer) -> str:
    async with AsyncOpenAI(api_key=server.api_key, base_url=server.base_url) as client:
        secret = await client.realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime"},
            expires_after={"anchor": "created_at", "seconds": 600})
    assert secret.value.startswith("ek_")
    return secret.value


def page_url(origin: StaticServer, **params: str) -> str:
    return f"{origin.origin}/agents.html?{urllib.parse.urlencode(params)}"


async def open_probe(browser: Browser, url: str, page: Any = None) -> Any:
    page = page or browser.page
    await page.goto(url)
    await wait_for(page, "() => window.probe && window.probe.loaded", timeout_s=10,
                   what="the bundle to load (window.probe)", browser=browser)
    return page


async def test_agents_bundle_reaches_rest_api_cross_origin(bundle: Path, agents_server: ParleyServer,
                                                           page_origin: StaticServer, other_origin: StaticServer,
                                                           silent_mic: Path, tmp_path: Path) -> None:
    """A preflighted POST /v1/realtime/client_secrets from the allowed origin gets its answer;
    the same request from another origin is blocked by the browser (so CORS is really in play)."""
    base = f"http://127.0.0.1:{agents_server.port}"
    assert agents_server.api_key
    async with chromium(tmp_path, mic_wav=silent_mic, name="browser-agents-rest") as browser:
        await open_probe(browser, page_url(page_origin, base=base, key=agents_server.api_key, mode="rest"))
        allowed = await wait_for(browser.page, "() => window.probe.rest", timeout_s=10,
                                 what="the REST probe from the allowed origin", browser=browser)
        assert allowed["ok"], f"cross-origin request from {page_origin.origin} failed: {allowed}"
        assert allowed["status"] == 200, allowed
        assert allowed["body"]["value"].startswith("ek_")
        assert allowed["body"]["session"]["type"] == "realtime"

        other = await open_probe(browser, page_url(other_origin, base=base, key=agents_server.api_key, mode="rest"),
                                 page=await browser.new_page())
        blocked = await wait_for(other, "() => window.probe.rest", timeout_s=10,
                                 what="the REST probe from the other origin", browser=browser)
        assert not blocked["ok"], f"{other_origin.origin} is not in PARLEY_CORS_ORIGINS, yet it read {blocked}"
        assert "Failed to fetch" in blocked["error"]


async def test_agents_realtime_webrtc_session(bundle: Path, agents_server: ParleyServer, page_origin: StaticServer,
                                              llm: ScriptedLLMServer, silent_mic: Path, tmp_path: Path) -> None:
    reply = "Pong from Parley over WebRTC."
    llm.enqueue(Text(reply))
    ek = await mint_ephemeral_key(agents_server)
    base = f"http://127.0.0.1:{agents_server.port}"
    started = time.monotonic()
    async with chromium(tmp_path, mic_wav=silent_mic, name="browser-agents") as browser:
        page = await open_probe(browser, page_url(page_origin, base=base, ek=ek, message="ping"))
        state = await wait_for(page, "() => (window.probe.connected || window.probe.errors.length) && window.probe",
                               timeout_s=25, what="session.connect() to resolve", browser=browser)
        assert state["connected"] and not state["errors"], f"connect failed: {state['errors']}\n{agents_server.log()[-3000:]}"
        connected_s = time.monotonic() - started
        assert (state["callId"] or "").startswith("rtc_"), f"call id from the Location header: {state['callId']!r}"
        # connect() resolved on session.updated (not on the SDK's 5 s fallback timer)
        assert "session.created" in state["events"] and "session.updated" in state["events"], state["events"]

        def assistant_says(history: list[dict[str, Any]]) -> list[str]:
            return [" ".join(c.get("transcript") or c.get("text") or "" for c in item.get("content", []))
                    for item in history if item.get("type") == "message" and item.get("role") == "assistant"]

        state = await wait_for(
            page, """(reply) => (window.probe.errors.length || window.probe.history.some(
                         (i) => i.role === 'assistant' && (i.content || []).some((c) => (c.transcript || c.text || '').includes(reply))))
                     && window.probe""",
            arg=reply, timeout_s=20, what="the assistant's reply in session.history", browser=browser)
        assert not state["errors"], state["errors"]
        answered_s = time.monotonic() - started
        history = state["history"]
        users = [item for item in history if item.get("type") == "message" and item.get("role") == "user"]
        assert any(c.get("text") == "ping" for item in users for c in item.get("content", [])), history
        assert any(reply in said for said in assistant_says(history)), history
        for event_type in ("response.created", "response.done"):
            assert event_type in state["events"], f"{event_type} missing from {state['events']}"
        assert "error" not in state["events"]
        assert llm.requests and llm.requests[-1]["messages"][-1]["content"] in ("ping", [{"type": "text", "text": "ping"}])

        # the spoken reply arrived on the remote audio track
        # totalAudioEnergy sums level² × seconds: ~0.02 for this reply, under 1e-4 for a noise floor
        audio = await wait_for(page, "() => window.probe.audio.energy > 1e-3 && window.probe.audio", timeout_s=10,
                               what="audio energy on the inbound RTP stream", browser=browser)
        await page.wait_for_timeout(300)
        shot = await browser.screenshot("browser-agents")
        await page.evaluate("() => window.session.close()")
        print(f"\nagents-realtime over WebRTC: connected after {connected_s:.1f} s, reply after {answered_s:.1f} s, "
              f"{audio['packets']} audio packets (energy {audio['energy']:.4f}); screenshot {shot}")
