"""The pocketsphinx worker processes of a real server: started with it, replaced when killed, and
stopped and reaped when it shuts down (SIGTERM)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.parley_server import ParleyServer

pytest.importorskip("pocketsphinx")


def workers_of(pid: int) -> set[int]:
    """The server's child processes that are pocketsphinx workers (zombies included)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(c) for c in (task / "children").read_text().split())
    return {c for c in children if b"stt_pocketsphinx_worker" in Path(f"/proc/{c}/cmdline").read_bytes()}


def state(pid: int) -> str:
    """The process state letter from /proc (R, S, Z, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_workers_start_with_the_server_and_are_reaped_at_shutdown(scripted_llm) -> None:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_STT_ENGINE": "pocketsphinx",
           "PARLEY_STT_WORKERS": "2", "PARLEY_TTS_ENGINE": "espeak"}
    with ParleyServer(env, name="stt-workers") as server:
        assert server.proc is not None
        workers = workers_of(server.proc.pid)
        assert len(workers) == 2 and "worker processes: 2" in server.log()
        # One dies while idle: it stays the server's zombie until its next turn (which starts a
        # replacement first) or until shutdown, which must reap it like the live one.
        os.kill(min(workers), signal.SIGKILL)
        server.proc.send_signal(signal.SIGTERM)  # a graceful shutdown, then uvicorn exits by the same signal
        # Not reaped by us yet, the exited server stays a zombie: its workers must be gone by then,
        # reaped by the server itself (an orphan would be left to init, as a zombie if it never reaps).
        wait_for(lambda: state(server.proc.pid) == "Z")
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        assert server.proc.wait() in (0, -signal.SIGTERM) and "Application shutdown complete" in server.log()
