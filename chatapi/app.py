"""create_app(config): wires settings, database, routes and middlewares together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from . import chats, db, messages, openapi, realtime, search, teams, tokens, users
from .auth import public
from .bus import bus_for
from .config import Config
from .hub import Hub
from .keys import BUS, CONFIG, DB, HUB, METRICS, SECRET, THROTTLE, TYPISTS, WRITER
from .metrics import Metrics
from .middlewares import (
    auth_middleware,
    cors_middleware,
    error_middleware,
    metrics_middleware,
)
from .revocation import watch_revocations
from .throttle import LoginThrottle, SharedLoginThrottle
from .typists import Typists
from .writer import MessageWriter

log = logging.getLogger(__name__)

GOING_AWAY = 1001
RESTART_PAUSE = 0.1  # seconds before a failed background task starts again


async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop for the life of the application: one that fails is logged
    and started again (after a pause growing to 5 s while it keeps failing), so a fault
    nobody foresaw costs the loop a restart, never the server the loop."""
    loop = asyncio.get_running_loop()
    pause = RESTART_PAUSE
    while True:
        started = loop.time()
        try:
            await run()
            return
        except Exception:
            if loop.time() - started > 60:
                pause = RESTART_PAUSE
            log.exception("background task %s failed; starting it again in %.1fs", name, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)


@public
async def health(request: web.Request) -> web.Response:
    try:
        await db.ping(request.app[DB])
    except Exception:
        log.exception("health check: database does not answer")
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok"})


@public
async def metrics_page(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


STATIC_DIR = Path(__file__).parent / "static"
_STATIC_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# Same origin only: the page talks to this server (HTTP and websocket) and nothing else.
_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@public
async def index_page(request: web.Request) -> web.StreamResponse:
    """The web client: one page over the public API."""
    headers = {**_STATIC_HEADERS, "Content-Security-Policy": _PAGE_POLICY}
    return web.FileResponse(STATIC_DIR / "index.html", headers=headers)


@public
async def static_file(request: web.Request) -> web.StreamResponse:
    """A file of the web client (one path segment, no dot files: no way out of the folder)."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=_STATIC_HEADERS)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the database, start the background tasks; on the way out, stop and close."""
    config = app[CONFIG]
    database = await db.open_database(config.db_path)
    # Nobody can be online here before a socket opens: a crash must not leave ghosts.
    await db.set_everybody_offline(database)
    secret = config.secret or await db.get_or_create_secret(database, secrets.token_hex(32))
    app[SECRET] = secret.encode()
    app[DB] = database
    if database.shared:
        app[THROTTLE] = SharedLoginThrottle(
            database,
            config.login_failures_per_account,
            config.login_failures_per_address,
            config.login_window,
        )
    metrics = app.get(METRICS)
    hub = app[HUB] = Hub(config.presence_interval, metrics)
    bus = app[BUS] = bus_for(database, hub, metrics)
    writer = app[WRITER] = MessageWriter(database, bus, metrics=metrics)
    if metrics is not None:
        metrics.watch(hub, database.pool_in_use)
    await users.in_executor(users.dummy_hash, config.bcrypt_rounds)
    tasks = [
        asyncio.create_task(supervised("writer", writer.run)),
        asyncio.create_task(supervised("presence", hub.run_presence)),
        asyncio.create_task(supervised("revocations", lambda: watch_revocations(database, hub))),
        asyncio.create_task(supervised("bus", bus.run)),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 (a query cut by the cancel must not stop the cleanup)
            log.warning("a background task ended with %s at shutdown", type(exc).__name__)
    await realtime.presence_written()
    with contextlib.suppress(Exception):  # the database may be away: leases expire anyway
        await db.set_everybody_offline(database)
    await database.close()


async def close_sockets(app: web.Application) -> None:
    if HUB in app:
        await app[HUB].close_all(GOING_AWAY, "server shutting down")


def create_app(config: Config | None = None) -> web.Application:
    """The ChatAPI application for `config` (defaults when None)."""
    config = config or Config()
    middlewares = [cors_middleware, error_middleware, auth_middleware]
    if config.metrics:
        # Outermost, so that it times and labels the answer the client gets.
        middlewares.insert(0, metrics_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body)
    app[CONFIG] = config
    app[THROTTLE] = LoginThrottle(
        config.login_failures_per_account, config.login_failures_per_address, config.login_window
    )
    app[TYPISTS] = Typists()
    if config.metrics:
        app[METRICS] = Metrics()
    app.cleanup_ctx.append(database_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_post("/auth/reg", users.register)
    app.router.add_post("/auth/login", users.login)
    app.router.add_post("/auth/logout", users.logout)
    app.router.add_get("/users/me", users.me)
    app.router.add_get("/users/", users.list_users)
    app.router.add_get("/users", users.list_users)
    app.router.add_post("/chats/create", teams.create_chat)
    app.router.add_get("/chats/", teams.list_chats)
    app.router.add_get("/chats", teams.list_chats)
    # No automatic HEAD: the streamed body would be written anyway.
    app.router.add_get("/chats/messages", chats.chat_messages, allow_head=False)
    app.router.add_get("/chats/ws", realtime.chat_socket)
    app.router.add_get("/search", search.search_messages)
    teams.add_routes(app)
    tokens.add_routes(app)
    messages.add_routes(app)
    app.router.add_get("/health", health)
    if config.metrics:
        app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_get("/", index_page)
    app.router.add_get("/static/{name:[A-Za-z0-9_][A-Za-z0-9_.-]*}", static_file)
    return app
