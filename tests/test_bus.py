"""The bus between processes, seen from two applications on one database."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import connect, create_chat, next_frame, no_frame, run_sql

from chatapi import create_app


async def test_a_created_chat_is_announced_to_every_socket_once(aiohttp_client, config, register):
    """On SQLite within one application; on PostgreSQL across two (as across processes)."""
    first = await aiohttp_client(create_app(config))
    second = await aiohttp_client(create_app(config)) if config.db_path.startswith("postgres") else first
    alice, bob = await register(first, "alice"), await register(second, "bob")
    here, there = await connect(first, alice), await connect(second, bob)
    resp = await first.post("/chats/create", json={"name": "events"}, headers=alice.headers)
    assert resp.status == 201
    created = await resp.json()
    for ws in (here, there):
        assert await next_frame(ws) == {"type": "chat_created", "chat": created}
    # Exactly once: the next frame on each socket is the answer to its join, not a repeat.
    for ws in (here, there):
        await ws.send_json({"type": "join", "chat_id": created["id"]})
        assert (await next_frame(ws))["type"] == "joined"
    await here.send_json({"chat_id": created["id"], "text": "after"})
    for ws in (here, there):
        assert (await next_frame(ws))["text"] == "after"


@pytest.mark.postgres_only
async def test_a_message_posted_on_one_application_reaches_sockets_of_another(
    aiohttp_client, config, register
):
    first, second = await aiohttp_client(create_app(config)), await aiohttp_client(create_app(config))
    alice, bob = await register(first, "alice"), await register(second, "bob")
    chat = await create_chat(first, alice)
    reader = await connect(second, bob)
    await reader.send_json({"type": "join", "chat_id": chat})
    # The chat's chat_created may reach the second application after bob connected to it.
    assert (await next_frame(reader, "joined"))["chat_id"] == chat
    writer = await connect(first, alice)
    for n in range(20):
        await writer.send_json({"chat_id": chat, "text": f"m{n}", "nonce": f"n{n}"})
    frames = [await next_frame(reader) for _ in range(20)]
    assert [f["text"] for f in frames] == [f"m{n}" for n in range(20)]
    assert [f["id"] for f in frames] == sorted(f["id"] for f in frames)


@pytest.mark.postgres_only
async def test_many_ids_are_split_over_notifications_below_the_payload_limit(database):
    from chatapi import postgres

    store = await postgres.open_database(database)
    payloads: list[str] = []
    listener = await store.listen(payloads.append, lambda: None)
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            await store._notify_ids(conn, postgres.PRESENCE, list(range(10**12, 10**12 + 3000)))
        for _ in range(100):
            if sum(p.count(",") + 1 for p in payloads) >= 3000:
                break
            await asyncio.sleep(0.05)
    finally:
        await listener.close()
        await store.close()
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    ids = [int(i) for p in payloads for i in p.removeprefix("p:").split(",")]
    assert ids == list(range(10**12, 10**12 + 3000))


@pytest.mark.postgres_only
async def test_new_messages_are_read_back_per_chat_from_each_position(database, monkeypatch):
    """The bus's read of new rows: every chat's messages after its own position, in
    (chat, id) order, a quiet chat's among busy ones' included, at most CATCH_UP_ROWS."""
    from chatapi import db, postgres

    store = await postgres.open_database(database)
    try:
        user = await store.create_user("ann@example.com", "ann", "x")
        quiet, busy, other = [(await store.create_chat(name, user["id"]))["id"]
                              for name in ("quiet", "busy", "other")]

        async def post(chat_id: int, text: str) -> int:
            (stored,) = await store.insert_messages([db.Draft(chat_id, user["id"], "ann", text)])
            return stored.message["id"]

        old = await post(quiet, "old")
        ids = {busy: [], other: []}
        for n in range(40):
            for chat_id in (busy, other):
                ids[chat_id].append(await post(chat_id, f"{chat_id}/{n}"))
        new = await post(quiet, "new")
        positions = {other: ids[other][29], quiet: old, busy: ids[busy][9]}
        expected = [(quiet, new)] + [(busy, i) for i in ids[busy][10:]] + [
            (other, i) for i in ids[other][30:]]
        rows = await store.changes_after(positions, postgres.CATCH_UP_ROWS)
        assert [(row["chat_id"], row["id"]) for row in rows] == sorted(expected)
        assert rows[0]["text"] == "new" and rows[0]["username"] == "ann"
        rows = await store.changes_after(positions, 5)
        assert [(row["chat_id"], row["id"]) for row in rows] == sorted(expected)[:5]
    finally:
        await store.close()


@pytest.mark.postgres_only
async def test_a_logout_missed_while_the_listener_was_away_still_closes_the_socket(
    aiohttp_client, config, register
):
    """Tokens revoked without a notification reaching this process (as during a listener
    reconnect) are found by the re-check that follows every reconnect."""
    client = await aiohttp_client(create_app(config))
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    await run_sql(config.db_path, "UPDATE users SET token_version = token_version + 1")
    await no_frame(ws, 0.5)  # nothing told this process
    schema = config.db_path.rsplit("search_path=", 1)[1]
    (cut,) = await run_sql(
        config.db_path,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = ?",
        f'LISTEN "chatapi_{schema}"',
    )
    assert cut == (1,)
    msg = await ws.receive(timeout=15)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)
