"""`parley serve --workers N`: N worker processes, each a whole Parley with its own event loop,
sharing the public port through SO_REUSEPORT (the kernel spreads new connections over them).

Each worker also listens on its own internal port (`internal_port` + its index) for requests
other workers and nodes forward to the call it holds (server/forwarding.py), and is a node of
the cluster in Redis.  The parent only supervises: it starts the workers, restarts one that
dies (with backoff), and on SIGTERM or SIGINT passes one SIGTERM to each, so that each drains
its live sessions (server/graceful.py) before it exits; a second signal stops them at once.
Engines are per worker: an embedded llama.cpp model is loaded by every worker (README).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

from .settings import Settings

log = logging.getLogger("parley.server")


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """How Parley runs uvicorn (`parley serve`, each worker, and the benchmarks' server)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "ws_per_message_deflate": settings.ws_compression,
        "log_level": settings.log_level,
        "access_log": False,
    }


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _drain_when_orphaned(supervisor: int) -> None:
    """Get SIGTERM (and so drain, then exit) if the supervisor dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: an orphaned worker runs until it is stopped
    if os.getppid() != supervisor:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def serve_worker(settings: Settings, index: int, *, in_group: bool = True, supervisor: int = 0) -> None:
    """Run worker `index` in this process: the shared public port and its own internal one."""
    import uvicorn

    from .app import create_app
    from .graceful import GracefulServer
    from .logs import configure

    if in_group:
        os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only, which passes on one SIGTERM
        _drain_when_orphaned(supervisor)
    configure(settings.log_level, settings.log_json)
    sockets = [listen_socket(settings.host, settings.port, reuse_port=True),
               listen_socket(settings.host, settings.internal_port + index, reuse_port=False)]
    app = create_app(settings, worker=index)
    config = uvicorn.Config(app, **uvicorn_options(settings))
    GracefulServer(config, app.state.parley, settings.shutdown_grace_s).run(sockets=sockets)


class Supervisor:
    """Starts `count` workers, restarts those that die, and stops them all on a signal."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = 0

    def _start(self, index: int) -> None:
        proc = self.ctx.Process(target=serve_worker, args=(self.settings, index),
                                kwargs={"supervisor": os.getpid()}, name=f"parley-worker-{index}")
        proc.start()
        self.procs[index] = proc
        log.info("worker started", extra={"worker": index, "pid": proc.pid})

    def _signal(self, sig: int, frame: FrameType | None) -> None:
        self.stopping += 1
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        for index in range(self.count):
            self._start(index)
        started = {i: time.monotonic() for i in self.procs}
        while True:
            alive = 0
            for index, proc in list(self.procs.items()):
                proc.join(0.2)
                if proc.is_alive():
                    alive += 1
                    continue
                if self.stopping:
                    continue
                # died on its own: restart, backing off when it keeps dying at once
                quick = time.monotonic() - started[index] < 10
                self.restarts[index] = self.restarts.get(index, 0) + 1 if quick else 0
                delay = min(30.0, 0.5 * 2 ** self.restarts[index])
                log.error("worker died; restarting it", extra={"worker": index, "exitcode": proc.exitcode,
                                                                "delay_s": delay})
                time.sleep(delay)
                if not self.stopping:
                    self._start(index)
                    started[index] = time.monotonic()
                    alive += 1
            if self.stopping and not alive:
                return
