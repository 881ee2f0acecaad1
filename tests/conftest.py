"""Fixtures: a real server on a real socket, over a SQLite file in tmp_path, and again
over a fresh schema of a PostgreSQL database.

Every test that uses `config` (and so `app` and `client`) runs once per backend,
unless marked `sqlite_only` (it checks something only SQLite has, e.g. a pragma).
PostgreSQL is found at CHATAPI_TEST_POSTGRES_URL (default: the local cluster with
the role and database .ci/run creates); where it cannot be reached, the PostgreSQL
half is skipped with one line saying why, unless CHATAPI_TEST_POSTGRES=required.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import select
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatapi import Config, create_app
from chatapi.middlewares import RedactingAccessLogger

_counter = itertools.count(1)
T = TypeVar("T")

POSTGRES_URL = os.environ.get(
    "CHATAPI_TEST_POSTGRES_URL", "postgresql://chatapi:chatapi@127.0.0.1:5432/chatapi_test"
)
POSTGRES_REQUIRED = os.environ.get("CHATAPI_TEST_POSTGRES") == "required"
_postgres_problem: list[str] = []  # why PostgreSQL cannot be used, once probed


def postgres_problem() -> str | None:
    """None when the test PostgreSQL answers; else why not (probed once per session)."""
    if not _postgres_problem:
        async def probe() -> str:
            try:
                conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                return f"{type(exc).__name__}: {exc}"
            await conn.close()
            return ""

        _postgres_problem.append(in_thread(probe()))
    return _postgres_problem[0] or None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sqlite_only: checks what only the SQLite backend has; runs on SQLite alone"
    )
    config.addinivalue_line(
        "markers", "postgres_only: checks what only the PostgreSQL backend has"
    )


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite", "postgres"]
        if metafunc.definition.get_closest_marker("sqlite_only") is not None:
            backends.remove("postgres")
        if metafunc.definition.get_closest_marker("postgres_only") is not None:
            backends.remove("sqlite")
        metafunc.parametrize("backend", backends, indirect=True)


def pytest_terminal_summary(terminalreporter):
    if _postgres_problem and _postgres_problem[0]:
        terminalreporter.write_line(
            f"PostgreSQL half skipped: {POSTGRES_URL.split('@')[-1]} cannot be reached "
            f"({_postgres_problem[0]}); set CHATAPI_TEST_POSTGRES_URL to run it",
            yellow=True,
        )


BACKENDS = ["sqlite", "postgres"]


def require_backend(backend: str) -> str:
    """`backend`, unless it is PostgreSQL and cannot be reached: then skip (or fail, when
    CHATAPI_TEST_POSTGRES=required)."""
    if backend == "postgres":
        problem = postgres_problem()
        if problem and POSTGRES_REQUIRED:
            pytest.fail(f"CHATAPI_TEST_POSTGRES=required but PostgreSQL cannot be reached: {problem}")
        if problem:
            pytest.skip(f"PostgreSQL cannot be reached: {problem}")
    return backend


@pytest.fixture
def backend(request) -> str:
    """'sqlite' or 'postgres': the backend this run of the test uses."""
    return require_backend(request.param)


def _schema() -> tuple[str, str, str]:
    """(schema, URL of it, statement creating it): a fresh schema of the test database."""
    schema = f"t{os.getpid()}_{next(_counter)}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}search_path={quote(schema)}"
    return schema, url, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"


def in_thread(coro: Awaitable[T]) -> T:
    """Run a coroutine to its end on a loop of its own, in a thread of its own: callable
    from sync fixtures, whatever loop the test itself runs in."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def database_for(backend: str, directory: Path) -> Iterator[str]:
    """A database setting: a SQLite file in `directory`, or a fresh, empty PostgreSQL
    schema, dropped after."""
    if require_backend(backend) == "sqlite":
        yield str(directory / "chat.db")
        return
    schema, url, create = _schema()
    in_thread(run_sql(POSTGRES_URL, create))
    try:
        yield url
    finally:
        in_thread(drop_schema(schema))


async def drop_schema(schema: str) -> None:
    """Drop a test schema, cutting any session that still holds a lock in it: a server
    whose event loop ended with a query in flight (the test's loop closes before sync
    fixtures are torn down) would otherwise block the drop for good."""
    # A new connection: a test may have restarted PostgreSQL meanwhile.
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute("SET lock_timeout = '2s'")
        for _ in range(5):
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                return
            except asyncpg.LockNotAvailableError:
                await conn.execute(
                    """SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                       JOIN pg_class c ON c.oid = l.relation
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()""",
                    schema,
                )
        raise AssertionError(f"test schema {schema} could not be dropped")
    finally:
        await conn.close()


@pytest.fixture
def postgres_url(tmp_path) -> Iterator[str]:
    """The URL of a fresh, empty schema in the test PostgreSQL database (dropped after)."""
    with database_for("postgres", tmp_path) as url:
        yield url


@pytest.fixture
def database(backend, tmp_path) -> Iterator[str]:
    """The database setting of this test: a SQLite file, or a PostgreSQL URL."""
    with database_for(backend, tmp_path) as location:
        yield location


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks(heading: str, language: str) -> list[str]:
    """Every ```language block under a README heading, in order."""
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"^```{language}\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert blocks, f"no {language} block under {heading}"
    return blocks


def readme_block(heading: str, language: str) -> str:
    """The first ```language block under a README heading."""
    return readme_blocks(heading, language)[0]


async def run_sql(location: str, statement: str, *params: Any, many: list | None = None) -> list:
    """Run one statement (`?` placeholders) on either backend; its rows as tuples."""
    if location.startswith("postgresql://"):
        for n in range(statement.count("?")):
            statement = statement.replace("?", f"${n + 1}", 1)
        conn = await asyncpg.connect(location)
        try:
            if many is not None:
                await conn.executemany(statement, many)
                return []
            if ";" in statement.rstrip("; \n"):  # several statements in one string
                await conn.execute(statement)
                return []
            return [tuple(row) for row in await conn.fetch(statement, *params)]
        finally:
            await conn.close()
    with sqlite3.connect(location) as conn:
        if many is not None:
            conn.executemany(statement, many)
            return []
        return conn.execute(statement, params).fetchall()


@pytest.fixture
def aiohttp_client(aiohttp_client):
    """pytest-aiohttp's fixture, with the access logger the server uses in production."""

    async def go(app, **kwargs):
        # TestServer passes runner options only through start_server().
        server = TestServer(app)
        await server.start_server(access_log_class=RedactingAccessLogger)
        return await aiohttp_client(server, **kwargs)

    return go


# A session token (JWT) or an API token.
_TOKEN_SHAPE = re.compile(r"eyJ|chatapi_[0-9a-f]{16}")


@pytest.fixture(autouse=True)
def no_credentials_in_logs(caplog):
    """Every test doubles as a check that no token reaches a log line (access log on)."""
    caplog.set_level(logging.INFO)
    yield
    leaked = [
        record.getMessage()
        for when in ("setup", "call")
        for record in caplog.get_records(when)
        if _TOKEN_SHAPE.search(record.getMessage()) or _TOKEN_SHAPE.search(record.exc_text or "")
    ]
    assert not leaked, f"a token reached the logs: {leaked[:3]}"


@pytest.fixture
def config(database) -> Config:
    # Low bcrypt cost keeps the suite fast; the default (12) has its own test.
    # Presence frames are off unless a test asks (they would interleave).
    return Config(
        db_path=database,
        bcrypt_rounds=4,
        heartbeat=5.0,
        presence_interval=3600.0,
        # Tests send in bursts; the rate limit has its own tests.
        frames_per_second=10_000.0,
        frame_burst=10_000,
    )


@pytest.fixture
def app(config):
    return create_app(config)


@pytest.fixture
async def client(aiohttp_client, app) -> TestClient:
    return await aiohttp_client(app)


class User(dict):
    """A registered user: id, username, token, email, password, and auth headers."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self['token']}"}


Register = Callable[..., Awaitable[User]]


@pytest.fixture
def register() -> Register:
    """register(client, name=None) -> User, through the real /auth/reg route."""

    async def register(client: TestClient, name: str | None = None) -> User:
        name = name or f"user{next(_counter)}"
        body = {"email": f"{name}@example.com", "username": name, "password": "password-" + name}
        resp = await client.post("/auth/reg", json=body)
        assert resp.status == 201, await resp.text()
        data = await resp.json()
        return User(data, email=body["email"], password=body["password"])

    return register


async def create_chat(client: TestClient, user: User, name: str = "general") -> int:
    resp = await client.post("/chats/create", json={"name": name}, headers=user.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def connect(client: TestClient, user: User, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect("/chats/ws", params={"token": user["token"]}, **kwargs)


async def next_frame(
    ws: aiohttp.ClientWebSocketResponse, kind: str | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """The next frame (of type `kind` if given, skipping presence frames otherwise)."""
    while True:
        msg = await ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg}"
        frame = json.loads(msg.data)
        if kind is not None and frame["type"] == kind:
            return frame
        if kind is None and frame["type"] != "presence":
            return frame


async def no_frame(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> None:
    """Assert that no frame other than presence arrives within `wait` seconds."""
    try:
        frame = await next_frame(ws, timeout=wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {frame}")


async def assert_error(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """The response is `status` with the one error shape; returns the body."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert set(body) <= {"error", "details"}
    return body


def _process_command(database: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `python -m chatapi --port 0` on `database`:
    production settings but bcrypt cost 4, and `env`."""
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CHATAPI_BCRYPT_ROUNDS": "4", **env}
    return [sys.executable, "-m", "chatapi", "--port", "0", "--db", database], environ


@contextlib.asynccontextmanager
async def chatapi_process(
    tmp_path: Path,
    preexec_fn: Callable[[], None] | None = None,
    database: str | None = None,
    **env: str,
) -> AsyncIterator[tuple[str, Path]]:
    """`python -m chatapi --port 0` on `database` (default: a file in tmp_path), with
    production settings but bcrypt cost 4 and `env`; yields (its URL, the file its
    stderr goes to)."""
    stderr_path = tmp_path / "stderr"
    command, environ = _process_command(database or str(tmp_path / "chat.db"), env)
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=environ,
            preexec_fn=preexec_fn,
        )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:"), stderr_path.read_text()
        yield url, stderr_path
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


@contextlib.contextmanager
def chatapi_process_sync(tmp_path: Path, database: str, **env: str) -> Iterator[str]:
    """chatapi_process for synchronous tests and fixtures; yields the server's URL."""
    stderr_path = tmp_path / "stderr"
    command, environ = _process_command(database, env)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=environ)
    try:
        assert proc.stdout is not None
        started, _, _ = select.select([proc.stdout], [], [], 30)
        url = proc.stdout.readline().decode().strip() if started else ""
        assert url.startswith("http://127.0.0.1:"), stderr_path.read_text()
        yield url
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
