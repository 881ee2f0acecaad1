"""Presence: online while a socket is open, reset on start, batched events, shutdown."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp
import pytest
from conftest import connect, next_frame, run_sql

from chatapi import create_app


async def is_online(client, user) -> bool:
    resp = await client.get("/users/me", headers=user.headers)
    return (await resp.json())["is_online"]


async def eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_online_while_at_least_one_socket_is_open(client, register):
    alice = await register(client, "alice")
    assert not await is_online(client, alice)
    first = await connect(client, alice)
    await eventually(lambda: is_online(client, alice))
    second = await connect(client, alice)
    await first.close()
    await asyncio.sleep(0.1)
    assert await is_online(client, alice)
    await second.close()

    async def offline():
        return not await is_online(client, alice)

    await eventually(offline)


@pytest.mark.sqlite_only
async def test_start_marks_everybody_offline(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config))
    alice = await register(client, "alice")
    await client.close()
    # A crash would leave the flag set; simulate it.
    with sqlite3.connect(config.db_path) as conn:
        conn.execute("UPDATE users SET is_online = 1")
    restarted = await aiohttp_client(create_app(config))
    assert not await is_online(restarted, alice)


async def test_shutdown_closes_sockets_with_1001_and_marks_users_offline(
    client, config, register, backend
):
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    await eventually(lambda: is_online(client, alice))
    await client.server.close()
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == 1001, (msg, ws.close_code)
    if backend == "postgres":
        assert await run_sql(config.db_path, "SELECT count(*) FROM presence") == [(0,)]
    else:
        assert await run_sql(config.db_path, "SELECT max(is_online) FROM users") == [(0,)]


@pytest.mark.postgres_only
async def test_start_forgets_lapsed_leases_only(aiohttp_client, config, register):
    """A process killed with kill -9 leaves a lease that lapses; a live one stays."""
    client = await aiohttp_client(create_app(config))
    alice, bob = await register(client, "alice"), await register(client, "bob")
    await client.close()
    for user, lease in ((alice, "-1 minute"), (bob, "1 minute")):
        (node,) = await run_sql(
            config.db_path,
            f"INSERT INTO nodes (lease_until) VALUES (now() + interval '{lease}') RETURNING id",
        )
        await run_sql(
            config.db_path, "INSERT INTO presence (node_id, user_id) VALUES (?, ?)", node[0], user["id"]
        )
    restarted = await aiohttp_client(create_app(config))
    assert not await is_online(restarted, alice)
    assert await is_online(restarted, bob)


@pytest.fixture
def presence_config(config):
    return config.replace(presence_interval=0.2)


async def test_presence_frames_report_transitions_only(aiohttp_client, presence_config, register):
    client = await aiohttp_client(create_app(presence_config))
    alice, bob = await register(client, "alice"), await register(client, "bob")
    ws_b = await connect(client, bob)
    assert await next_frame(ws_b, "presence") == {
        "type": "presence",
        "users": [{"user_id": bob["id"], "username": "bob", "is_online": True}],
    }
    ws_a1 = await connect(client, alice)
    frame = await next_frame(ws_b, "presence")
    assert frame["users"] == [{"user_id": alice["id"], "username": "alice", "is_online": True}]

    # A second socket of an online user is not an event.
    ws_a2 = await connect(client, alice)
    with pytest.raises(asyncio.TimeoutError):
        await next_frame(ws_b, "presence", timeout=0.6)

    await ws_a1.close()
    await ws_a2.close()
    frame = await next_frame(ws_b, "presence")
    assert frame["users"] == [{"user_id": alice["id"], "username": "alice", "is_online": False}]


async def test_presence_is_batched_under_a_burst_of_connects(
    aiohttp_client, presence_config, register
):
    client = await aiohttp_client(create_app(presence_config))
    watcher = await register(client, "watcher")
    users = [await register(client, f"burst{i}") for i in range(30)]
    ws_w = await connect(client, watcher)
    await next_frame(ws_w, "presence")  # the watcher's own arrival

    started = time.monotonic()
    sockets = await asyncio.gather(*(connect(client, user) for user in users))
    seen: dict[int, bool] = {}
    frames = 0
    while len(seen) < len(users):
        frame = await next_frame(ws_w, "presence")
        frames += 1
        for entry in frame["users"]:
            seen[entry["user_id"]] = entry["is_online"]
    elapsed = time.monotonic() - started
    assert all(seen[user["id"]] for user in users)
    # At most one frame per interval (0.2 s), plus one for a partial interval.
    assert frames <= elapsed / 0.2 + 1
    assert frames < len(users)
    for ws in sockets:
        await ws.close()
