"""The bus between processes, seen from two applications on one database."""

from __future__ import annotations

import pytest
from conftest import connect, create_chat, next_frame

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
    assert (await next_frame(reader))["type"] == "joined"
    writer = await connect(first, alice)
    for n in range(20):
        await writer.send_json({"chat_id": chat, "text": f"m{n}", "nonce": f"n{n}"})
    frames = [await next_frame(reader) for _ in range(20)]
    assert [f["text"] for f in frames] == [f"m{n}" for n in range(20)]
    assert [f["id"] for f in frames] == sorted(f["id"] for f in frames)
