"""Run a real Parley server process for end-to-end tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ParleyServer:
    """`parley serve` in a subprocess on a free loopback port; logs go to test-output/."""

    def __init__(self, env: dict[str, str], *, name: str = "parley", api_key: str | None = "test-key",
                 args: list[str] | None = None, scheme: str = "http", command: list[str] | None = None) -> None:
        self.port = free_port()
        self.api_key = api_key
        self.scheme = scheme
        self.env = {**os.environ, "PARLEY_LOG_LEVEL": "info", **env}
        if api_key is not None:
            self.env.setdefault("PARLEY_API_KEYS", api_key)
        self.args = args or []
        # the `parley` program to run; default: this interpreter's (the repository's .venv)
        self.command = command or [sys.executable, "-m", "parley.server.cli"]
        OUTPUT.mkdir(exist_ok=True)
        self.log_path = OUTPUT / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    @property
    def ws_base_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 20.0) -> ParleyServer:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--port", str(self.port), *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"parley exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                ready = httpx.get(f"{self.scheme}://127.0.0.1:{self.port}/readyz", timeout=1, verify=False)
                # up, and every engine has finished loading (or failed to): nothing says "loading"
                if ready.status_code in (200, 503) and "loading" not in json.dumps(ready.json()["engines"]):
                    return self
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"parley did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ParleyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
