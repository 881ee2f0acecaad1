"""Bounded everything: frame rate, sockets per user, CORS, and sockets that vanish mid-replay."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from conftest import chatapi_process, connect, create_chat, next_frame, run_sql

from chatapi import create_app
from chatapi.testing import ChatServer


async def test_a_flooding_socket_is_rate_limited_then_closed(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(frames_per_second=1.0, frame_burst=5)))
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    for n in range(5):
        await ws.send_json({"type": "join", "chat_id": chat, "nonce": str(n)})
    for _ in range(5):
        assert (await next_frame(ws))["type"] == "joined"
    await ws.send_json({"type": "join", "chat_id": chat})
    assert (await next_frame(ws)) == {"type": "error", "error": "rate limited: slow down"}
    for _ in range(10):  # going on regardless
        await ws.send_json({"type": "join", "chat_id": chat})
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            break
    assert msg.data == 1008


async def test_sockets_per_user_are_capped(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(max_sockets_per_user=2)))
    alice, bob = await register(client, "alice"), await register(client, "bob")
    first, second = await connect(client, alice), await connect(client, alice)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(client, alice)
    assert info.value.status == 429
    assert not (await connect(client, bob)).closed  # others are not affected
    await first.close()
    for _ in range(100):  # the slot frees once the server has seen the close
        try:
            third = await connect(client, alice)
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(0.02)
    assert not third.closed and not second.closed


async def test_cors_only_for_configured_origins(aiohttp_client, config):
    allowed = "https://chat.example.com"
    client = await aiohttp_client(create_app(config.replace(allowed_origins=(allowed,))))
    ok = await client.get("/health", headers={"Origin": allowed})
    assert ok.headers["Access-Control-Allow-Origin"] == allowed
    other = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    error = await client.get("/users/me", headers={"Origin": allowed})
    assert error.status == 401 and error.headers["Access-Control-Allow-Origin"] == allowed
    preflight = await client.options("/chats/create", headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == allowed
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


async def test_cors_is_off_by_default(client):
    resp = await client.get("/health", headers={"Origin": "https://chat.example.com"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_head_of_the_streamed_history_is_405(client, register):
    user = await register(client)
    chat = await create_chat(client, user)
    resp = await client.head(f"/chats/messages?id={chat}", headers=user.headers)
    assert resp.status == 405
    assert (await client.get("/health")).status == 200  # the connection is still sound


async def test_lone_surrogate_in_a_frame_is_an_error_frame(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_str('{"text": "bad \\ud800", "chat_id": ' + str(chat) + '}')
    assert "Unicode" in (await next_frame(ws, "error"))["error"]
    await ws.send_json({"text": "fine", "chat_id": chat})
    assert (await next_frame(ws, "message"))["text"] == "fine"


async def test_a_client_vanishing_during_a_long_catch_up_is_cleaned_up(database):
    # The production runner: aiohttp's test server would cancel the handler for us.
    server = ChatServer(db_path=database, bcrypt_rounds=4, outbox_limit=16)
    async with server, aiohttp.ClientSession() as http:
        body = {"email": "v@example.com", "username": "vanisher", "password": "password1"}
        async with http.post(server.url + "/auth/reg", json=body) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(server.url + "/chats/create", json={"name": "big"},
                             headers=headers) as resp:
            chat = (await resp.json())["id"]
        await run_sql(
            database,
            "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, 1, ?)",
            many=[(chat, "x" * 2000) for _ in range(3000)],
        )
        ws = await http.ws_connect(server.ws_url, params={"token": token})
        await ws.send_json({"type": "join", "chat_id": chat, "since": 0})
        await ws.receive(timeout=5)  # the replay has started
        ws._response.connection.transport.abort()  # vanish without a close handshake

        async def online() -> bool:
            async with http.get(server.url + "/users/me", headers=headers) as resp:
                return (await resp.json())["is_online"]

        for _ in range(500):
            if not await online():
                break
            await asyncio.sleep(0.02)
        assert not await online()


async def test_a_body_that_never_finishes_gets_408(aiohttp_client, config):
    client = await aiohttp_client(create_app(config.replace(idle_timeout=1.0)))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"email": '
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 408"), head
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), 30)
    assert json.loads(body) == {"error": "request body did not arrive in time"}
    writer.close()
    await writer.wait_closed()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(tmp_path, database):
    # As the attacking client did: one complete request, then the connection kept open
    # and silent (aiohttp's own default keeps it for an hour). The production runner.
    idle = 1.0
    async with chatapi_process(tmp_path, database=database, CHATAPI_IDLE_TIMEOUT=str(idle)) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        loop = asyncio.get_running_loop()
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            assert json.loads(await reader.readexactly(length)) == {"status": "ok"}
            answered = loop.time()
            # Kept open after the answer (HTTP/1.1), then closed by the server, not by us.
            assert await asyncio.wait_for(reader.read(), idle * 10) == b""
            assert idle * 0.5 <= loop.time() - answered <= idle * 5
        finally:
            writer.close()
            await writer.wait_closed()
