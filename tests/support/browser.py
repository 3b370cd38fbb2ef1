"""Headless Chromium for end-to-end tests: a fake microphone that plays a WAV, console capture,
screenshots, and a tiny static web server for pages on another origin.

    wav = write_wav(tmp_path / "mic.wav", make_speech("hello", rate=48000).pcm, 48000)
    async with chromium(tmp_path, mic_wav=wav, name="playground") as browser:
        page = browser.page
        await page.goto(url)
        ...
        await browser.screenshot("playground")     # test-output/playground.png

Debian's `chromium` (`apt-get install chromium chromium-driver`) is driven through Python
Playwright's `executable_path`; Playwright's own browser download (`playwright install`) is never
used.  Tests skip when the binary is missing (set PARLEY_TEST_CHROMIUM to use another one).

With `--use-file-for-fake-audio-capture`, getUserMedia returns the WAV (16-bit PCM) as a live
microphone, from its first sample when the capture starts, and loops it forever.  Everything the
page logs (console messages, uncaught errors, failed requests) is kept in `browser.log`, written
to test-output/<name>-browser.log, and printed when the block raises (pytest shows it with the
failure), together with a screenshot test-output/<name>-failure.png.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import os
import shutil
import threading
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.parley_server import OUTPUT

CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")


def chromium_path() -> str:
    """The Chromium binary, or skip the test (with the reason) when it is not installed."""
    path = shutil.which(CHROMIUM) if not os.path.isabs(CHROMIUM) else CHROMIUM
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("browser tests need the Python playwright package (pip install -e '.[test]')")
    return path


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    """int16 mono samples as a 16-bit PCM WAV file (what Chromium's fake capture reads)."""
    samples = np.asarray(pcm)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError(f"need int16 mono samples, got {samples.dtype} with shape {samples.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def chromium_args(mic_wav: Path) -> list[str]:
    return [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


def screenshot_path(name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT / f"{name}.png"


@dataclass
class Browser:
    """A page in a fresh Chromium profile, and everything it logged."""

    name: str
    context: Any  # playwright BrowserContext
    page: Any  # playwright Page
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def record(self, line: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:7.2f}s {line}")

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: self.record(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.record(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.record(f"requestfailed: {r.method} {r.url}: {r.failure}"))
        page.on("crash", lambda _: self.record("page crashed"))

    def console(self) -> str:
        return "\n".join(self.log) or "(the page logged nothing)"

    async def screenshot(self, name: str | None = None) -> Path:
        path = screenshot_path(name or self.name)
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def new_page(self) -> Any:
        page = await self.context.new_page()
        self.attach(page)
        return page


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path, *, mic_wav: Path, name: str) -> AsyncIterator[Browser]:
    """Headless Chromium with `mic_wav` as its microphone, in a new profile under `tmp_path`."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    profile = tmp_path / f"chromium-profile-{name}"
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=chromium_args(mic_wav),
            viewport={"width": 1280, "height": 900}, timeout=30_000)
        page = context.pages[0] if context.pages else await context.new_page()
        browser = Browser(name=name, context=context, page=page)
        browser.attach(page)
        try:
            yield browser
        except BaseException:
            with contextlib.suppress(Exception):
                shot = await browser.screenshot(f"{name}-failure")
                browser.record(f"screenshot of the failure: {shot}")
            print(f"\n--- browser log ({name}) ---\n{browser.console()}\n--- end of browser log ---")
            raise
        finally:
            OUTPUT.mkdir(exist_ok=True)
            (OUTPUT / f"{name}-browser.log").write_text(browser.console() + "\n")
            with contextlib.suppress(Exception):
                await context.close()


async def wait_for(page: Any, expression: str, *, timeout_s: float, what: str, arg: Any = None,
                   browser: Browser | None = None) -> Any:
    """Poll a JS expression (a function of `arg`) until it returns something truthy, and return
    that value; on timeout fail with `what` and the expression's last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = await page.evaluate(expression, arg)
        if last:
            return last
        if time.monotonic() > deadline:
            detail = f"\n--- browser log ---\n{browser.console()}" if browser else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        await page.wait_for_timeout(100)


MIC_LEVELS_JS = """async (seconds) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const levels = [];
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    levels.push([performance.now() - t0, Math.sqrt(sum / buf.length)]);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  stream.getTracks().forEach((t) => t.stop());
  await ctx.close();
  return levels;
}"""


async def mic_levels(page: Any, seconds: float) -> list[tuple[float, float]]:
    """Open the microphone in `page` (a secure context, e.g. http://127.0.0.1) and return
    (ms since getUserMedia, RMS of the last ~43 ms) every 20 ms for `seconds`."""
    return [(float(t), float(v)) for t, v in await page.evaluate(MIC_LEVELS_JS, seconds)]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class StaticServer:
    """Serves `directory` over plain HTTP on a free loopback port, from a background thread:
    a page on its own origin (http://127.0.0.1:<port>), so its requests to Parley are cross-origin."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"static-{self.port}", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
