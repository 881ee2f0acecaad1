"""SQLite: the user of every authenticated request is read on the event loop's thread
(`SQLiteDatabase.read_now`), and through the reader thread when that cannot be done."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from conftest import assert_error, run_sql

from chatapi import db
from chatapi.keys import DB
from chatapi.sqlite import SQLiteDatabase

pytestmark = pytest.mark.sqlite_only


@asynccontextmanager
async def reader_held(database: SQLiteDatabase) -> AsyncIterator[asyncio.Task]:
    """The reader thread busy with one slow read (a long search, say) until the block ends."""
    release = threading.Event()
    await database.reader.create_function("hold", 0, lambda: release.wait(30) and 1)
    slow = asyncio.create_task(database.read("SELECT hold()"))
    await asyncio.sleep(0.05)
    try:
        yield slow
    finally:
        release.set()
        await slow


async def me(client, user) -> int:
    """GET /users/me's status; queued behind the held read, it would take its 30 s."""
    resp = await asyncio.wait_for(client.get("/users/me", headers=user.headers), 10)
    return resp.status


async def test_a_request_is_authenticated_while_the_reader_thread_is_busy(
    backend, client, register
):
    alice = await register(client, "alice")
    async with reader_held(client.app[DB]) as slow:
        resp = await asyncio.wait_for(client.get("/users/me", headers=alice.headers), 10)
        assert resp.status == 200
        assert (await resp.json())["username"] == "alice"
        assert not slow.done()
    assert [tuple(row) for row in slow.result()] == [(1,)]


async def test_a_logout_is_seen_at_once_by_the_read_on_the_loop(backend, client, register):
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    async with reader_held(client.app[DB]):
        assert await me(client, alice) == 200
        assert (await client.post("/auth/logout", headers=alice.headers)).status in (200, 204)
        assert await me(client, alice) == 401
        assert await me(client, bob) == 200


async def test_a_revocation_by_another_process_is_seen_at_once(
    backend, client, register, database
):
    """Another process (`chatapi reset-password`, another server) commits a new token
    version on its own connection: the next request is refused."""
    alice = await register(client, "alice")
    async with reader_held(client.app[DB]):
        assert await me(client, alice) == 200
        await run_sql(
            database, "UPDATE users SET token_version = token_version + 1 WHERE id = ?",
            alice["id"],
        )
        assert await me(client, alice) == 401


class BusyConnection:
    """Stands for the loop's connection while another process holds the database."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        self.calls += 1
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        raise error


async def test_a_busy_database_is_read_through_the_reader_thread(backend, client, register):
    alice = await register(client, "alice")
    database = client.app[DB]
    local, database.local = database.local, BusyConnection()
    try:
        resp = await client.get("/users/me", headers=alice.headers)
        assert resp.status == 200
        assert (await resp.json())["username"] == "alice"
        assert database.local.calls == 1
        assert (await client.post("/auth/logout", headers=alice.headers)).status in (200, 204)
        await assert_error(await client.get("/users/me", headers=alice.headers), 401)
    finally:
        database.local = local


async def test_a_read_from_another_thread_takes_the_reader_thread(backend, client, register):
    alice = await register(client, "alice")
    database = client.app[DB]
    user = await asyncio.to_thread(asyncio.run, database.user_by_id(alice["id"]))
    assert user is not None and user["username"] == "alice"


@pytest.mark.parametrize("name", ["a b?#%.db", "ünï cödé.db"])
async def test_a_database_path_with_uri_characters_is_read_on_the_loop(
    backend, tmp_path, monkeypatch, name
):
    monkeypatch.chdir(tmp_path)
    store = await db.open_database(name)  # relative, as `--db` takes it
    try:
        users, _, _ = await store.insert_seed([("a@example.com", "alice", "hash")], [], [])
        (user,) = users
        assert store.local is not None
        assert (await store.user_by_id(user["id"]))["username"] == "alice"
        assert store.local.execute("PRAGMA database_list").fetchone()[2] == str(tmp_path / name)
    finally:
        await store.close()
    assert store.local is None
