"""Revoked tokens end the user's sockets: from logout, and from the admin command
`reset-password` run as another process on the same database (both backends). Once a revocation is
committed, nothing more from the user's old sockets is stored."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
from conftest import connect, create_chat, next_frame, run_sql

from chatapi import db, revocation
from chatapi.keys import DB, HUB


async def stored_messages(location: str) -> list[tuple[int, str]]:
    """Every stored message as (id, text), read from either backend's database."""
    return await run_sql(location, "SELECT id, text FROM messages ORDER BY id")


async def reset_password(db_path: str, email: str, password: str) -> None:
    """The admin command, as an operator runs it: another process on the same file."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatapi", "--db", db_path, "reset-password", "--email", email,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "CHATAPI_BCRYPT_ROUNDS": "4"},
    )
    _, err = await asyncio.wait_for(proc.communicate(f"{password}\n".encode()), 60)
    assert proc.returncode == 0, err.decode()


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> int | None:
    """Read until the close frame; its code."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return msg.data
            if msg.type == aiohttp.WSMsgType.CLOSED:
                return ws.close_code
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise AssertionError(f"socket error instead of a close: {msg}")


async def test_reset_password_by_the_admin_command_closes_open_sockets_with_4001(
    client, config, register
):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    sockets = [await connect(client, alice) for _ in range(2)]
    await sockets[0].send_json({"chat_id": chat, "text": "before", "nonce": "before"})
    assert (await next_frame(sockets[0]))["nonce"] == "before"

    await reset_password(config.db_path, alice["email"], "a-brand-new-password")
    # Sent after the reset is committed, before the server has noticed it: not stored.
    await sockets[1].send_json({"chat_id": chat, "text": "after", "nonce": "after"})

    assert [await closed_with(ws) for ws in sockets] == [4001, 4001]
    assert [text for _, text in await stored_messages(config.db_path)] == ["before"]


async def test_nothing_from_old_sockets_is_stored_once_logout_has_answered(
    client, config, register
):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    sockets = [await connect(client, alice) for _ in range(4)]
    stop = asyncio.Event()

    async def flood(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
        # Send without waiting for acknowledgements, as the attacking client did,
        # so that a frame is in flight whenever logout runs.
        count = 0
        while not stop.is_set() and not ws.closed:
            count += 1
            try:
                await ws.send_json({"chat_id": chat, "text": f"{n}-{count}"})
            except (ConnectionError, RuntimeError):
                return
            await asyncio.sleep(0)

    floods = [asyncio.create_task(flood(ws, n)) for n, ws in enumerate(sockets)]
    while len(await stored_messages(config.db_path)) < 50:  # the floods are being stored
        await asyncio.sleep(0.01)
    resp = await client.post("/auth/logout", headers=alice.headers)
    assert resp.status == 204
    at_logout = await stored_messages(config.db_path)
    codes = [await closed_with(ws) for ws in sockets]
    stop.set()
    await asyncio.gather(*floods)
    await asyncio.sleep(0.5)  # a straggler would be committed by now
    assert codes == [4001] * 4
    assert await stored_messages(config.db_path) == at_logout


async def test_a_user_who_comes_online_while_versions_are_read_keeps_the_socket(
    app, client, register, monkeypatch
):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a = await connect(client, alice)
    hub, read = app[HUB], db.token_versions
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def bob_connects_meanwhile(database: db.Database, user_ids: list[int]) -> dict:
        if not sockets:  # the first check only (the server's own watcher runs too)
            sockets.append(await connect(client, bob))
            async with asyncio.timeout(10):
                while not hub.sockets_of(bob["id"]):
                    await asyncio.sleep(0.01)
        return await read(database, user_ids)

    monkeypatch.setattr(db, "token_versions", bob_connects_meanwhile)
    assert await revocation.close_revoked_sockets(app[DB], hub) == 0
    (ws_b,) = sockets
    await ws_b.send_json({"chat_id": chat, "text": "still here"})
    assert (await next_frame(ws_b))["text"] == "still here"
    await ws_a.send_json({"chat_id": chat, "text": "alice too"})
    assert (await next_frame(ws_a))["text"] == "alice too"
