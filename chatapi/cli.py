"""The `chatapi` command: serve the API (more commands join here)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
from collections.abc import Sequence

from aiohttp import web

from . import __version__
from .app import create_app
from .config import Config, ConfigError, from_env
from .middlewares import RedactingAccessLogger

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatapi",
        description="Serve the ChatAPI chat server. Settings also come from CHATAPI_* "
        "environment variables; flags win.",
    )
    p.add_argument("--host", help="address to listen on (CHATAPI_HOST, default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, help="port to listen on, 0 for any free one (CHATAPI_PORT, default 8080)"
    )
    p.add_argument(
        "--db", dest="db_path", help="SQLite database file (CHATAPI_DB, default ./chatapi.db)"
    )
    p.add_argument("--version", action="version", version=f"chatapi {__version__}")
    return p


async def serve(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    app = create_app(config)
    runner = web.AppRunner(
        app,
        access_log_class=RedactingAccessLogger,
        access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
        shutdown_timeout=3.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        # The first line on stdout is the bound URL (useful with --port 0).
        print(f"http://{host if ':' not in host else f'[{host}]'}:{port}", flush=True)
        log.info("serving on %s:%d, database %s", host, port, config.db_path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = from_env(host=args.host, port=args.port, db_path=args.db_path)
        asyncio.run(serve(config))
    except ConfigError as exc:
        sys.exit(f"chatapi: bad setting: {exc}")
    except (OSError, sqlite3.Error) as exc:
        sys.exit(f"chatapi: cannot start: {exc}")


if __name__ == "__main__":
    main()
