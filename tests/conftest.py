"""Fixtures: a real server on a real socket, over a SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from chatapi import Config, create_app
from chatapi.middlewares import RedactingAccessLogger

_counter = itertools.count(1)


@pytest.fixture
def aiohttp_client(aiohttp_client):
    """pytest-aiohttp's fixture, with the access logger the server uses in production."""

    async def go(app, **kwargs):
        # TestServer passes runner options only through start_server().
        server = TestServer(app)
        await server.start_server(access_log_class=RedactingAccessLogger)
        return await aiohttp_client(server, **kwargs)

    return go


@pytest.fixture(autouse=True)
def no_credentials_in_logs(caplog):
    """Every test doubles as a check that no token reaches a log line (access log on)."""
    caplog.set_level(logging.INFO)
    yield
    leaked = [
        record.getMessage()
        for when in ("setup", "call")
        for record in caplog.get_records(when)
        if "eyJ" in record.getMessage() or "eyJ" in (record.exc_text or "")
    ]
    assert not leaked, f"a token reached the logs: {leaked[:3]}"


@pytest.fixture
def config(tmp_path) -> Config:
    # Low bcrypt cost keeps the suite fast; the default (12) has its own test.
    # Presence frames are off unless a test asks (they would interleave).
    return Config(
        db_path=str(tmp_path / "chat.db"),
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


@contextlib.asynccontextmanager
async def chatapi_process(
    tmp_path: Path, preexec_fn: Callable[[], None] | None = None, **env: str
) -> AsyncIterator[tuple[str, Path]]:
    """`python -m chatapi --port 0` on a file in tmp_path, with production settings but
    bcrypt cost 4 and `env`; yields (its URL, the file its stderr goes to)."""
    stderr_path = tmp_path / "stderr"
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CHATAPI_BCRYPT_ROUNDS": "4", **env}
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatapi", "--port", "0", "--db", str(tmp_path / "chat.db"),
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=environ, preexec_fn=preexec_fn,
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
