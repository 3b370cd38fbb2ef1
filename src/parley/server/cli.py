"""`parley serve`: run the server."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .settings import Settings

log = logging.getLogger("parley.server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="A self-hosted OpenAI Realtime API server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (PARLEY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PARLEY_PORT, default 8000)")
    serve.add_argument("--config", help="a TOML settings file (PARLEY_CONFIG)")
    serve.add_argument("--ssl-certfile", help="TLS certificate (PARLEY_SSL_CERTFILE), for wss:// clients")
    serve.add_argument("--ssl-keyfile", help="TLS private key (PARLEY_SSL_KEYFILE)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (PARLEY_WORKERS; default: one "
                                                   "per core with PARLEY_REDIS_URL, else 1)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.config:
        os.environ["PARLEY_CONFIG"] = args.config
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "ssl_certfile": args.ssl_certfile,
                                   "ssl_keyfile": args.ssl_keyfile, "workers": args.workers}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        sys.exit(f"parley: bad settings: {exc}")
    settings.check_exposure()

    import uvicorn

    from .app import create_app
    from .logs import configure

    configure(settings.log_level, settings.log_json)
    workers = settings.worker_count
    if workers > 1 and not settings.redis_url:
        sys.exit("parley: --workers above 1 needs PARLEY_REDIS_URL: the workers share keys, limits and calls there")
    if settings.redis_url:
        from .workers import Supervisor, serve_worker

        if settings.llm_base_url is None and workers > 1:
            log.warning("each of the %d workers loads the embedded LLM: set PARLEY_LLM_BASE_URL to share one server",
                        workers)
        if workers == 1:
            serve_worker(settings, 0, in_group=False)
        else:
            Supervisor(settings, workers).run()
        return
    from .graceful import GracefulServer

    app = create_app(settings)
    from .workers import uvicorn_options

    config = uvicorn.Config(app, **uvicorn_options(settings))
    GracefulServer(config, app.state.parley, settings.shutdown_grace_s).run()


if __name__ == "__main__":  # pragma: no cover
    main()
