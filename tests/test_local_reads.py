"""SQLite: the user of every authenticated request is read on the event loop's thread
(`SQLiteDatabase.read_now`), and through the reader thread when that cannot be done."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from conftest import assert_error

from chatapi.keys import DB

pytestmark = pytest.mark.sqlite_only


async def test_a_request_is_authenticated_while_the_reader_thread_is_busy(
    backend, client, register
):
    """A slow read (a long search) holds the reader thread; other users' requests do not
    queue behind it to be authenticated."""
    alice = await register(client, "alice")
    database = client.app[DB]
    release = threading.Event()
    await database.reader.create_function("hold", 0, lambda: release.wait(30) and 1)
    slow = asyncio.create_task(database.read("SELECT hold()"))
    await asyncio.sleep(0.05)
    try:
        # Queued behind the slow read, it would wait the 30 s the read holds.
        resp = await asyncio.wait_for(client.get("/users/me", headers=alice.headers), 10)
        assert resp.status == 200
        assert (await resp.json())["username"] == "alice"
        assert not slow.done()  # the reader thread was busy all along
    finally:
        release.set()
    assert [tuple(row) for row in await slow] == [(1,)]


class BusyConnection:
    """Stands for the loop's connection while another process holds the database."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        self.calls += 1
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        raise error

    def close(self) -> None:
        pass


async def test_a_busy_database_is_read_through_the_reader_thread(backend, client, register):
    alice = await register(client, "alice")
    database = client.app[DB]
    local, database.local = database.local, BusyConnection()
    try:
        resp = await client.get("/users/me", headers=alice.headers)
        assert resp.status == 200
        assert (await resp.json())["username"] == "alice"
        assert database.local.calls == 1
        # Revocation is still seen at once on that path.
        assert (await client.post("/auth/logout", headers=alice.headers)).status in (200, 204)
        await assert_error(await client.get("/users/me", headers=alice.headers), 401)
    finally:
        database.local = local


async def test_a_read_from_another_thread_takes_the_reader_thread(backend, client, register):
    alice = await register(client, "alice")
    database = client.app[DB]
    user = await asyncio.to_thread(asyncio.run, database.user_by_id(alice["id"]))
    assert user is not None and user["username"] == "alice"


async def test_a_logout_is_seen_by_the_next_request_read_on_the_loop(backend, client, register):
    alice = await register(client, "alice")
    assert client.app[DB].local is not None
    assert (await client.get("/users/me", headers=alice.headers)).status == 200
    assert (await client.post("/auth/logout", headers=alice.headers)).status in (200, 204)
    await assert_error(await client.get("/users/me", headers=alice.headers), 401)
