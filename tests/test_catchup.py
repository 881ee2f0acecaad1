"""Reconnecting without losing messages: paging, `since`, nonces and logout."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from conftest import assert_error, connect, create_chat, next_frame, no_frame

from chatapi import create_app


async def post(ws, chat: int, text: str, nonce: str | None = None) -> dict:
    frame = {"text": text, "chat_id": chat}
    if nonce is not None:
        frame["nonce"] = nonce
    await ws.send_json(frame)
    return await next_frame(ws, "message")


async def history(client, user, chat: int, **params) -> list[dict]:
    resp = await client.get("/chats/messages", params={"id": chat, **params}, headers=user.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def read_session(ws, chat: int, seen: list[int], duration: float) -> None:
    """Collect message ids of `chat` for `duration` seconds (or until the socket closes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while (left := deadline - loop.time()) > 0:
        try:
            frame = await next_frame(ws, timeout=left)
        except TimeoutError:
            return
        if frame["type"] == "message" and frame["chat_id"] == chat:
            seen.append(frame["id"])


async def test_reconnecting_with_since_misses_nothing_while_another_client_posts(
    client, register
):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a = await connect(client, alice)
    total = 150
    done = asyncio.Event()

    async def poster():
        for n in range(total):
            await ws_a.send_json({"text": f"m{n}", "chat_id": chat})
            await asyncio.sleep(random.uniform(0, 0.004))
        done.set()

    posting = asyncio.create_task(poster())
    seen: list[int] = []
    rounds = 0
    while not done.is_set() or rounds < 3:
        ws_b = await connect(client, bob)
        await ws_b.send_json({"type": "join", "chat_id": chat, "since": seen[-1] if seen else 0})
        await read_session(ws_b, chat, seen, random.uniform(0.02, 0.12))
        await ws_b.close()
        rounds += 1
    await posting
    # One last reconnect collects the tail.
    ws_b = await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat, "since": seen[-1] if seen else 0})
    for _ in range(500):  # the last frames sent may still be on their way to the database
        stored = [m["id"] for m in await history(client, alice, chat)]
        if len(stored) == total:
            break
        await asyncio.sleep(0.02)
    assert len(stored) == total
    while len(seen) < total:
        frame = await next_frame(ws_b)
        if frame["type"] == "message":
            seen.append(frame["id"])
    await read_session(ws_b, chat, seen, 0.2)
    assert rounds >= 3
    assert seen == stored


async def test_reconnecting_across_a_server_restart_misses_nothing(
    aiohttp_client, config, register
):
    first = await aiohttp_client(create_app(config))
    alice, bob = await register(first, "alice"), await register(first, "bob")
    chat = await create_chat(first, alice)
    ws_a, ws_b = await connect(first, alice), await connect(first, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat, "since": 0})
    await next_frame(ws_b, "joined")
    for n in range(5):
        await post(ws_a, chat, f"before {n}")
    seen = [(await next_frame(ws_b, "message"))["id"] for _ in range(5)]
    await first.server.close()

    second = await aiohttp_client(create_app(config))
    ws_a = await connect(second, alice)
    for n in range(5):
        await post(ws_a, chat, f"while away {n}")
    ws_b = await connect(second, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat, "since": seen[-1]})
    replayed = []
    while (frame := await next_frame(ws_b))["type"] != "joined":
        replayed.append(frame)
    assert [m["text"] for m in replayed] == [f"while away {n}" for n in range(5)]
    await post(ws_a, chat, "live again")
    assert (await next_frame(ws_b, "message"))["text"] == "live again"
    seen += [m["id"] for m in replayed]
    stored = [m["id"] for m in await history(second, alice, chat)]
    assert seen == stored[:-1]


async def test_join_since_replays_then_answers_joined(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    ids = [(await post(ws, chat, f"m{n}"))["id"] for n in range(4)]
    other = await connect(client, alice)
    await other.send_json({"type": "join", "chat_id": chat, "since": ids[1]})
    assert [(await next_frame(other))["id"] for _ in range(2)] == ids[2:]
    assert await next_frame(other) == {"type": "joined", "chat_id": chat}


# History paging


@pytest.fixture
async def chat_with_ten(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    ids = [(await post(ws, chat, f"m{n}"))["id"] for n in range(10)]
    return alice, chat, ids


async def test_limit_alone_is_the_newest_oldest_first(client, chat_with_ten):
    alice, chat, ids = chat_with_ten
    assert [m["id"] for m in await history(client, alice, chat, limit=3)] == ids[-3:]


async def test_before_gives_the_page_below(client, chat_with_ten):
    alice, chat, ids = chat_with_ten
    page = await history(client, alice, chat, limit=3, before=ids[5])
    assert [m["id"] for m in page] == ids[2:5]
    assert await history(client, alice, chat, limit=3, before=ids[0]) == []
    assert [m["id"] for m in await history(client, alice, chat, before=ids[2])] == ids[:2]


async def test_after_gives_the_page_above(client, chat_with_ten):
    alice, chat, ids = chat_with_ten
    page = await history(client, alice, chat, limit=3, after=ids[5])
    assert [m["id"] for m in page] == ids[6:9]
    assert await history(client, alice, chat, after=ids[-1]) == []
    assert [m["id"] for m in await history(client, alice, chat, after=0)] == ids


async def test_before_and_after_together_give_the_range_between(client, chat_with_ten):
    alice, chat, ids = chat_with_ten
    page = await history(client, alice, chat, after=ids[1], before=ids[6])
    assert [m["id"] for m in page] == ids[2:6]


async def test_paging_an_empty_chat(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    assert await history(client, alice, chat, limit=5) == []
    assert await history(client, alice, chat, limit=5, before=1) == []
    assert await history(client, alice, chat, limit=5, after=1) == []


async def test_limit_bounds(client, chat_with_ten):
    alice, chat, ids = chat_with_ten
    assert [m["id"] for m in await history(client, alice, chat, limit=1)] == ids[-1:]
    assert [m["id"] for m in await history(client, alice, chat, limit=1000)] == ids


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"limit": "ten"},
                                    {"before": "x"}, {"after": -1}, {"before": 0}])
async def test_bad_paging_parameters_are_400(client, chat_with_ten, params):
    alice, chat, _ = chat_with_ten
    resp = await client.get("/chats/messages", params={"id": chat, **params}, headers=alice.headers)
    await assert_error(resp, 400)


# Idempotent sends


async def test_a_repeated_nonce_stores_nothing_and_returns_the_original(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_b = await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b, "joined")

    ws_a = await connect(client, alice)
    original = await post(ws_a, chat, "once", nonce="n-1")
    assert original["nonce"] == "n-1"
    assert (await next_frame(ws_b, "message"))["id"] == original["id"]
    await ws_a.close()

    # The acknowledgement was lost; the client reconnects and sends again.
    ws_a = await connect(client, alice)
    again = await post(ws_a, chat, "once", nonce="n-1")
    assert again == original
    with pytest.raises(TimeoutError):
        await next_frame(ws_b, "message", timeout=0.3)  # nobody else sees it twice
    assert [m["text"] for m in await history(client, alice, chat)] == ["once"]


async def test_nonces_are_per_user(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    first = await post(ws_a, chat, "alice's", nonce="same")
    second = await post(ws_b, chat, "bob's", nonce="same")
    assert first["id"] != second["id"]


# Logout


async def test_logout_revokes_every_token_and_closes_sockets_with_4001(client, register):
    alice = await register(client, "alice")
    login = await client.post(
        "/auth/login", json={"email": alice["email"], "password": alice["password"]}
    )
    second_token = (await login.json())["token"]
    ws = await connect(client, alice)

    resp = await client.post("/auth/logout", headers=alice.headers)
    assert resp.status == 204
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001

    for token in (alice["token"], second_token):
        headers = {"Authorization": f"Bearer {token}"}
        await assert_error(await client.get("/users/me", headers=headers), 401)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/chats/ws", params={"token": token})
        assert info.value.status == 401

    fresh = await client.post(
        "/auth/login", json={"email": alice["email"], "password": alice["password"]}
    )
    token = (await fresh.json())["token"]
    assert (await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})).status == 200


async def test_logout_needs_a_token(client):
    await assert_error(await client.post("/auth/logout"), 401)


async def join_and_collect(ws, chat: int, since: int) -> tuple[list[dict], dict]:
    """Join with `since`; the replayed message frames and the `joined` frame."""
    await ws.send_json({"type": "join", "chat_id": chat, "since": since})
    replayed = []
    while (frame := await next_frame(ws))["type"] != "joined":
        replayed.append(frame)
    return replayed, frame


async def check_cursor_cases(client, alice, bob, chat: int, newest: int) -> None:
    """since above the newest id, equal to it, and 0: no socket misses a later message."""
    total = len(await history(client, alice, chat))
    ws_a = await connect(client, alice)
    # A cursor from the future: reset to the newest id, and said so.
    ahead = await connect(client, bob)
    replayed, joined = await join_and_collect(ahead, chat, newest + 1000)
    assert replayed == []
    assert joined == {"type": "joined", "chat_id": chat, "cursor_reset": True, "last_id": newest}
    # Exactly the newest id: nothing to replay, no reset.
    level = await connect(client, bob)
    replayed, joined = await join_and_collect(level, chat, newest)
    assert (replayed, joined) == ([], {"type": "joined", "chat_id": chat})
    # 0: the whole history, then live.
    start = await connect(client, bob)
    replayed, joined = await join_and_collect(start, chat, 0)
    assert len(replayed) == total and joined == {"type": "joined", "chat_id": chat}

    # The socket that sent the future cursor gets its own acknowledgement...
    await ahead.send_json({"chat_id": chat, "text": "from the future", "nonce": "f1"})
    own = await next_frame(ahead, "message")
    assert (own["text"], own["nonce"]) == ("from the future", "f1")
    assert own["id"] > newest
    # ...and every socket gets every later message, once.
    later = await post(ws_a, chat, "after the join")
    for ws in (ahead, level, start):
        received = [await next_frame(ws, "message") for _ in range(1 if ws is ahead else 2)]
        assert [m["text"] for m in received][-1] == "after the join"
        assert [m["id"] for m in received] == sorted({m["id"] for m in received})
    assert later["id"] > own["id"]
    for ws in (ahead, level, start, ws_a):
        await no_frame(ws, 0.2)
        await ws.close()


async def test_since_beyond_the_newest_message_resets_the_cursor(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    newest = [(await post(ws, chat, f"m{n}"))["id"] for n in range(3)][-1]
    await ws.close()
    await check_cursor_cases(client, alice, bob, chat, newest)


async def test_since_beyond_an_empty_chat_resets_to_zero(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws = await connect(client, bob)
    replayed, joined = await join_and_collect(ws, chat, 5)
    assert replayed == []
    assert joined == {"type": "joined", "chat_id": chat, "cursor_reset": True, "last_id": 0}
    await ws.send_json({"chat_id": chat, "text": "first", "nonce": "n"})
    assert (await next_frame(ws, "message"))["text"] == "first"


async def test_since_cases_after_a_server_restart(aiohttp_client, config, register):
    first = await aiohttp_client(create_app(config))
    alice, bob = await register(first, "alice"), await register(first, "bob")
    chat = await create_chat(first, alice)
    ws = await connect(first, alice)
    newest = [(await post(ws, chat, f"m{n}"))["id"] for n in range(3)][-1]
    await first.server.close()

    second = await aiohttp_client(create_app(config))
    await check_cursor_cases(second, alice, bob, chat, newest)
