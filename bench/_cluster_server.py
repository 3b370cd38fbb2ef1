"""`parley serve --workers W` (with `PARLEY_REDIS_URL`), for benchmarks: the same supervisor and
workers as `parley.server.cli`, each worker's app wrapped in bench/_server.py's lag probe.

Every worker answers on the shared public port and on its own internal port
(`PARLEY_INTERNAL_PORT` + its index); ask the internal port to reach one worker:
* `GET /bench/lag`, `GET /bench/vad`: as bench/_server.py, for that worker's event loop;
* `GET /bench/cluster`: `{"worker", "pid", "live_sessions", "websockets", "redis_round_trips"}`:
  `websockets` counts the connections the kernel gave this worker, the last is the node's own
  count of its calls to Redis (`RedisShared.round_trips`; a pipeline is one).
Nothing else differs from `parley serve --workers W`: W = 1 runs the one worker in this process,
as the CLI does with Redis; W > 1 runs the CLI's Supervisor, which restarts a dead worker.

    PARLEY_REDIS_URL=... python bench/_cluster_server.py --port 8123 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from _server import LagProbe, with_probe
from parley.server import app as app_module, workers

SERVE_WORKER = workers.serve_worker  # the CLI's; main() points the Supervisor at probed_worker instead


def _probed(app: Any) -> Any:
    """The app behind the lag probe, plus GET /bench/cluster; keeps `.state` for the worker."""
    inner = with_probe(app, LagProbe())
    state = app.state.parley
    websockets = [0]  # WebSocket connections this worker was handed

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            websockets[0] += 1
        elif scope["type"] == "http" and scope["path"] == "/bench/cluster":
            body = json.dumps({"worker": state.worker, "pid": os.getpid(), "live_sessions": state.live_sessions,
                               "websockets": websockets[0],
                               "redis_round_trips": getattr(state.shared, "round_trips", None)}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await inner(scope, receive, send)

    wrapped.state = app.state  # type: ignore[attr-defined]  # serve_worker reads app.state.parley
    return wrapped


def probed_worker(settings: Any, index: int, *, in_group: bool = True, supervisor: int = 0) -> None:
    """`serve_worker`, with every app it creates wrapped by `_probed` (runs in the worker)."""
    create = app_module.create_app
    app_module.create_app = lambda *a, **kw: _probed(create(*a, **kw))  # serve_worker imports it at call time
    SERVE_WORKER(settings, index, in_group=in_group, supervisor=supervisor)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args()

    from parley.server.logs import configure
    from parley.server.settings import Settings

    settings = Settings(host="127.0.0.1", port=args.port, workers=args.workers)
    if not settings.redis_url:
        raise SystemExit("bench/_cluster_server.py needs PARLEY_REDIS_URL")
    configure(settings.log_level, settings.log_json)
    if args.workers == 1:
        probed_worker(settings, 0, in_group=False)
        return
    workers.serve_worker = probed_worker  # type: ignore[assignment]  # what Supervisor._start targets
    workers.Supervisor(settings, args.workers).run()


if __name__ == "__main__":
    main()
