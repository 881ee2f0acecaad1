"""The websocket: posting, subscriptions, bad frames, limits, ordering, slow clients."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from conftest import assert_error, connect, create_chat, next_frame, no_frame

from chatapi import create_app, hub
from chatapi.keys import HUB
from chatapi.runner import MaskCheck
from chatapi.testing import ChatServer


async def test_two_users_see_each_others_messages(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    assert await next_frame(ws_b) == {"type": "joined", "chat_id": chat}

    await ws_a.send_json({"text": "hi bob", "chat_id": chat})
    ack = await next_frame(ws_a)
    got = await next_frame(ws_b)
    assert ack == got
    assert got["type"] == "message" and got["text"] == "hi bob"
    assert got["username"] == "alice" and got["owner_id"] == alice["id"]
    assert got["chat_id"] == chat and isinstance(got["id"], int)
    assert got["created_at"].endswith("Z")

    await ws_b.send_json({"text": "hi alice", "chat_id": chat})
    assert (await next_frame(ws_a))["text"] == "hi alice"


async def test_base_client_frame_with_type_message(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_json({"type": "message", "text": "typed", "chat_id": chat})
    assert (await next_frame(ws))["text"] == "typed"


async def test_a_user_who_has_not_joined_receives_nothing(client, register):
    alice, carol = await register(client, "alice"), await register(client, "carol")
    chat = await create_chat(client, alice)
    ws_a, ws_c = await connect(client, alice), await connect(client, carol)
    await ws_a.send_json({"text": "private", "chat_id": chat})
    await next_frame(ws_a)
    await no_frame(ws_c)


async def test_leave_stops_delivery(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b, "joined")
    await ws_b.send_json({"type": "leave", "chat_id": chat})
    assert await next_frame(ws_b) == {"type": "left", "chat_id": chat}
    await ws_a.send_json({"text": "after leave", "chat_id": chat})
    await next_frame(ws_a)
    await no_frame(ws_b)


async def test_subscriptions_belong_to_the_socket(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_b1, ws_b2 = await connect(client, bob), await connect(client, bob)
    await ws_b1.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b1, "joined")
    ws_a = await connect(client, alice)
    await ws_a.send_json({"text": "to one socket", "chat_id": chat})
    assert (await next_frame(ws_b1))["text"] == "to one socket"
    await no_frame(ws_b2)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("not json", "JSON"),
        ("[1, 2]", "object"),
        ('"text"', "object"),
        ('{"type": "dance", "chat_id": 1}', "unknown frame type"),
        ('{"text": "no chat"}', "chat_id"),
        ('{"text": "x", "chat_id": "1"}', "chat_id"),
        ('{"text": "x", "chat_id": true}', "chat_id"),
        ('{"text": "x", "chat_id": -1}', "chat_id"),
        ('{"text": "x", "chat_id": 1e400}', "chat_id"),
        ('{"text": "x", "chat_id": 123456789012345678901234567890}', "chat_id"),
        ('{"chat_id": CHAT}', "text"),
        ('{"text": 5, "chat_id": CHAT}', "text"),
        ('{"text": "", "chat_id": CHAT}', "text"),
        ('{"text": "  \\n\\t ", "chat_id": CHAT}', "white space"),
        ('{"text": "TOO_LONG", "chat_id": CHAT}', "5000"),
        ('{"text": "x", "chat_id": CHAT, "nonce": ""}', "nonce"),
        ('{"text": "x", "chat_id": CHAT, "nonce": 7}', "nonce"),
        ('{"text": "x", "chat_id": 424242}', "does not exist"),
        ('{"type": "join", "chat_id": 424242}', "does not exist"),
        ('{"type": "join"}', "chat_id"),
        ('{"type": "join", "chat_id": CHAT, "since": -1}', "since"),
        ('{"type": "join", "chat_id": CHAT, "since": "5"}', "since"),
        ('{"type": "leave", "chat_id": "x"}', "chat_id"),
    ],
)
async def test_each_bad_frame_gets_an_error_and_the_socket_still_works(
    client, register, raw, fragment
):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_str(raw.replace("CHAT", str(chat)).replace("TOO_LONG", "x" * 5001))
    error = await next_frame(ws)
    assert error["type"] == "error"
    assert fragment in error["error"]
    await ws.send_json({"text": "still here", "chat_id": chat})
    assert (await next_frame(ws))["text"] == "still here"
    # Nothing invalid was stored.
    history = await (await client.get(f"/chats/messages?id={chat}", headers=alice.headers)).json()
    assert [m["text"] for m in history] == ["still here"]


async def test_binary_frames_are_refused_with_an_error(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_bytes(b'{"text": "x", "chat_id": 1}')
    assert "binary" in (await next_frame(ws, "error"))["error"]
    await ws.send_json({"text": "text works", "chat_id": chat})
    assert (await next_frame(ws))["text"] == "text works"


async def test_oversized_frame_closes_with_1009(client, register, config):
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    await ws.send_str(json.dumps({"text": "x" * config.max_frame, "chat_id": 1}))
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009


@pytest.mark.parametrize("params", [{}, {"token": "garbage"}])
async def test_handshake_without_a_valid_token_is_401(client, params):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/chats/ws", params=params)
    assert info.value.status == 401


async def test_token_in_the_authorization_header_works(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await client.ws_connect("/chats/ws", headers=alice.headers)
    await ws.send_json({"text": "via header", "chat_id": chat})
    assert (await next_frame(ws))["text"] == "via header"


async def test_foreign_origin_is_403_and_own_origin_is_accepted(client, register):
    alice = await register(client, "alice")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(client, alice, origin="https://evil.example")
    assert info.value.status == 403
    own = f"http://{client.host}:{client.port}"
    ws = await connect(client, alice, origin=own)
    assert not ws.closed


async def test_concurrent_senders_give_increasing_ids_to_every_subscriber(client, register):
    users = [await register(client, f"sender{i}") for i in range(4)]
    chat = await create_chat(client, users[0])
    sockets = [await connect(client, user) for user in users]
    watchers = [await connect(client, users[0]) for _ in range(2)]
    for ws in sockets + watchers:
        await ws.send_json({"type": "join", "chat_id": chat})
        await next_frame(ws, "joined")

    per_sender = 25

    async def send_all(ws, index):
        for n in range(per_sender):
            await ws.send_json({"text": f"{index}-{n}", "chat_id": chat})

    await asyncio.gather(*(send_all(ws, i) for i, ws in enumerate(sockets)))
    total = per_sender * len(sockets)
    for ws in sockets + watchers:
        ids = [(await next_frame(ws, "message"))["id"] for _ in range(total)]
        assert ids == sorted(ids) and len(set(ids)) == total


async def test_a_client_that_never_reads_does_not_delay_the_others(
    aiohttp_client, config, register
):
    app = create_app(config.replace(outbox_limit=64))
    client = await aiohttp_client(app)
    alice, bob, idle = [await register(client, n) for n in ("alice", "bob", "idle")]
    chat = await create_chat(client, alice)

    # A raw socket with a tiny receive buffer that completes the handshake and
    # then never reads again: the server's writes to it back up.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(
        (
            f"GET /chats/ws?token={idle['token']} HTTP/1.1\r\nHost: {client.host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status = await reader.readline()
    assert b"101" in status
    # join: a masked client text frame
    payload = json.dumps({"type": "join", "chat_id": chat}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    hub = app[HUB]
    for _ in range(100):
        idle_conn = next((c for c in hub.connections if c.username == "idle"), None)
        if idle_conn is not None and chat in idle_conn.subscriptions:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("idle socket never joined")
    # Shrink the kernel's send buffer on the server side too, so that the
    # backlog shows after a few hundred kilobytes instead of megabytes.
    server_sock = idle_conn.transport.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b, "joined")

    count = 300  # 300 x 5 kB: far beyond the idle peer's buffers and outbox
    text = "y" * 5000
    for n in range(count):
        await ws_a.send_json({"text": text, "chat_id": chat, "nonce": str(n)})
    received = [await next_frame(ws_b, "message", timeout=10) for _ in range(count)]
    assert [m["nonce"] for m in received] == [str(n) for n in range(count)]

    # The idle socket was dropped instead of buffered without bound.
    assert idle_conn.dropped
    for _ in range(500):
        if not any(c.username == "idle" for c in hub.connections):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the idle socket is still registered")
    writer.close()


async def test_a_peer_that_stops_answering_pings_is_dropped(aiohttp_client, config, register):
    app = create_app(config.replace(heartbeat=0.2))
    client = await aiohttp_client(app)
    alice = await register(client, "alice")
    # autoping=False: this client never answers the server's pings.
    ws = await connect(client, alice, autoping=False)
    kinds = []
    while True:
        msg = await ws.receive(timeout=5)
        kinds.append(msg.type)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            break
    assert aiohttp.WSMsgType.PING in kinds
    for _ in range(100):
        if not app[HUB].connections:
            break
        await asyncio.sleep(0.02)
    assert not app[HUB].connections


async def test_a_created_chat_is_announced_to_every_open_socket(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    resp = await client.post("/chats/create", json={"name": " plans "}, headers=bob.headers)
    assert resp.status == 201
    created = await resp.json()
    assert created["name"] == "plans"
    for ws in (ws_a, ws_b):
        assert await next_frame(ws) == {"type": "chat_created", "chat": created}
    # Announced after the commit: the chat is already in the list the frame points to.
    chats = await (await client.get("/chats/", headers=alice.headers)).json()
    # (Listed with the caller's membership besides the created chat's fields.)
    assert any({field: chat[field] for field in created} == created for chat in chats)
    # A refused create announces nothing.
    resp = await client.post("/chats/create", json={"name": "  "}, headers=bob.headers)
    assert resp.status == 400
    await no_frame(ws_a)
    await no_frame(ws_b)


async def test_a_frame_of_exactly_the_limit_is_taken_and_one_byte_more_is_1009(
    client, register, config
):
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    prefix, suffix = '{"chat_id": 1, "text": "', '"}'
    filler = "x" * (config.max_frame - len(prefix) - len(suffix))
    await ws.send_str(prefix + filler + suffix)  # exactly max_frame bytes
    assert "at most" in (await next_frame(ws, "error"))["error"]  # text over 5000: an error only
    await ws.send_str(prefix + filler + "x" + suffix)
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009


async def test_a_lone_surrogate_nonce_gets_the_validation_error(client, register, caplog):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_str(f'{{"chat_id": {chat}, "text": "hi", "nonce": "\\ud800"}}')
    error = await next_frame(ws, "error")
    assert error == {
        "type": "error", "error": "nonce must be a string of 1 to 64 characters (not U+0000)"
    }
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    await ws.send_json({"chat_id": chat, "text": "still fine", "nonce": "n1"})
    assert (await next_frame(ws))["text"] == "still fine"


async def test_a_reused_nonce_sent_to_a_missing_chat_is_refused(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_json({"chat_id": chat, "text": "first", "nonce": "once"})
    assert (await next_frame(ws))["nonce"] == "once"
    await ws.send_json({"chat_id": 999, "text": "first", "nonce": "once"})
    assert await next_frame(ws) == {
        "type": "error", "error": "chat 999 does not exist", "nonce": "once"
    }


def test_the_mask_check_follows_frames_split_anywhere():
    stream = b"".join(
        masked_text_frame(b"x" * size) for size in (0, 5, 125, 126, 300, 65535, 65536, 70000)
    )
    for chunk in (1, 2, 3, 7, 13, 1000, len(stream)):
        check = MaskCheck()
        assert all(check.feed(stream[i:i + chunk]) for i in range(0, len(stream), chunk))
        assert not check.feed(masked_text_frame(b"unmasked", masked=False))


async def test_an_unmasked_client_frame_fails_the_connection_with_1002(database):
    # The production runner (as `chatapi` serves), over a raw socket.
    async with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        reader, writer = await websocket_handshake(server.url, await token_for(server.url))
        writer.write(masked_text_frame(b'{"type": "leave", "chat_id": 1}'))
        assert (await read_frame(reader))[0] == 0x1  # masked: served
        writer.write(masked_text_frame(b'{"type": "leave", "chat_id": 1}', masked=False))
        opcode, payload = await read_frame(reader)
        assert opcode == 0x8 and int.from_bytes(payload[:2]) == 1002
        assert payload[2:] == b"client frames must be masked"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()


async def token_for(url: str) -> str:
    body = {"email": "raw@example.com", "username": "raw", "password": "password1"}
    async with aiohttp.ClientSession() as http, http.post(url + "/auth/reg", json=body) as resp:
        return (await resp.json())["token"]


async def websocket_handshake(
    url: str, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket opened by hand on a raw connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /chats/ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer


@pytest.mark.parametrize("private", [True, False], ids=["private", "public"])
async def test_the_server_waits_for_the_clients_close_reply(client, register, monkeypatch, private):
    # A raw client: the server's close frame must not be followed by the TCP
    # connection dropping before the client has answered it (the peer would see 1006).
    # That takes aiohttp's internals (chatapi.hub._close_frame_sender); without them
    # (public: `ws.close` from another task) the connection ends right after the frame,
    # and an aiohttp client sees 4001 all the same.
    if not private:
        monkeypatch.setattr(hub, "_close_frame_sender", lambda ws: None)
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    reader, writer = await websocket_handshake(f"http://{client.host}:{client.port}", alice["token"])
    writer.write(masked_text_frame(b'{"type": "leave", "chat_id": 1}'))
    assert await read_frame(reader) == (0x1, b'{"type": "left", "chat_id": 1}')
    # The pinned aiohttp has the internals.
    assert all(hub._close_frame_sender(c.ws) for c in client.app[HUB].connections) == private

    assert (await client.post("/auth/logout", headers=alice.headers)).status == 204
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)
    opcode, payload = await read_frame(reader)
    assert opcode == 0x8 and int.from_bytes(payload[:2]) == 4001
    if private:  # not dropped before the reply: nothing (no EOF) until the client answers
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.5)
        writer.write(masked_close_frame(4001))
    # Then the server ends the connection (aiohttp may repeat its close frame first).
    rest = await asyncio.wait_for(reader.read(), 5)
    assert rest == b"" or rest[0] == 0x88, rest
    writer.close()
    await writer.wait_closed()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, payload) of one short unmasked server frame."""
    head = await asyncio.wait_for(reader.readexactly(2), 5)
    assert head[1] < 126, head
    return head[0] & 0x0F, await asyncio.wait_for(reader.readexactly(head[1]), 5)


def masked_text_frame(payload: bytes, opcode: int = 0x1, masked: bool = True) -> bytes:
    """One client frame (FIN set), masked as RFC 6455 requires unless told otherwise."""
    mask = b"\x01\x02\x03\x04" if masked else b""
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
    bit = 0x80 if masked else 0
    if len(payload) < 126:
        length = bytes([bit | len(payload)])
    elif len(payload) < 2**16:
        length = bytes([bit | 126]) + len(payload).to_bytes(2)
    else:
        length = bytes([bit | 127]) + len(payload).to_bytes(8)
    return bytes([0x80 | opcode]) + length + mask + body


def masked_close_frame(code: int) -> bytes:
    return masked_text_frame(code.to_bytes(2), opcode=0x8)


async def test_the_websocket_route_without_a_handshake_is_a_json_400(client, register):
    alice = await register(client, "alice")
    resp = await client.get("/chats/ws", headers=alice.headers)
    body = await assert_error(resp, 400)
    assert body["error"] == "not a websocket handshake: send Upgrade: websocket"


async def test_the_character_u0000_is_refused_in_everything_stored(client, register):
    """PostgreSQL's text cannot hold U+0000; both backends refuse it the same way."""
    alice = await register(client, "alice")
    body = {"email": "nul\x00@example.com", "username": "nul-user", "password": "password1"}
    assert "email" in (await assert_error(await client.post("/auth/reg", json=body), 400))["details"]
    resp = await client.post("/chats/create", json={"name": "a\x00b"}, headers=alice.headers)
    assert "name" in (await assert_error(resp, 400))["details"]
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_json({"chat_id": chat, "text": "a\x00b"})
    assert "U+0000" in (await next_frame(ws, "error"))["error"]
    await ws.send_json({"chat_id": chat, "text": "fine", "nonce": "n\x00"})
    assert "nonce" in (await next_frame(ws, "error"))["error"]
    await ws.send_json({"chat_id": chat, "text": "fine"})
    assert (await next_frame(ws, "message"))["text"] == "fine"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_frame_written_straight_to_the_transport_is_a_valid_text_frame(size):
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    payload = ("é" * size).encode()[:size]
    stream = StreamReader()
    stream.feed_data(hub._text_frame(payload))
    stream.feed_eof()
    parser = Frame.parse(stream.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert frame.opcode is Opcode.TEXT and frame.fin and not frame.rsv1
    assert frame.data == payload


async def test_frames_written_at_once_and_queued_behind_a_backlog_arrive_whole_and_in_order(
    aiohttp_client, config, register, monkeypatch
):
    # Both ways out of Connection.send: straight to the transport while it takes
    # frames, queued (and written by the pump through aiohttp) once it backs up.
    outcomes: list[bool] = []
    write_now = hub._write_now

    def counting(*args: object) -> bool:
        outcomes.append(write_now(*args))
        return outcomes[-1]

    monkeypatch.setattr(hub, "_write_now", counting)
    # bob answers no ping while he reads nothing: the heartbeat must not drop him.
    app = create_app(config.replace(outbox_limit=10_000, heartbeat=120.0))
    client = await aiohttp_client(app)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_b = await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b, "joined")
    bob_conn = next(c for c in app[HUB].connections if c.username == "bob")
    # The server's send buffer for bob is made small and bob reads nothing until
    # every message is sent: the server's writes back up into the queue.
    bob_conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ws_b._response.connection.transport.pause_reading()

    ws_a = await connect(client, alice)
    # 126 to 15,000 bytes each, 1.5 MB in all: far beyond what the kernel buffers
    texts = ["€" * (42 + n * 337 % 4958) for n in range(200)]
    for n, text in enumerate(texts):
        await ws_a.send_json({"text": text, "chat_id": chat, "nonce": str(n)})
        await next_frame(ws_a, "message")
    assert True in outcomes and False in outcomes, "both paths were taken"

    ws_b._response.connection.transport.resume_reading()
    received = [await next_frame(ws_b, "message", timeout=10) for _ in texts]
    assert [m["nonce"] for m in received] == [str(n) for n in range(len(texts))]
    assert [m["text"] for m in received] == texts
    assert not bob_conn.dropped
