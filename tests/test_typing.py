"""Typing indications: a `typing` frame reaches the chat's other subscribers (never the
typist's own sockets, never a socket that did not join), is not stored, passes at most
once per user and chat every few seconds (the rest dropped without an answer), and
travels between processes in batches: one notification for many typists."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from conftest import connect, create_chat, next_frame, no_frame, run_sql
from test_faults import api
from test_faults import create_chat as create_chat_over_http
from test_faults import register as register_over_http
from test_scaleout import cluster, session  # noqa: F401 (cluster is a fixture)

from chatapi import typists
from chatapi.keys import TYPISTS


async def joined(client, user, chat: int) -> aiohttp.ClientWebSocketResponse:
    ws = await connect(client, user)
    await ws.send_json({"type": "join", "chat_id": chat})
    assert (await next_frame(ws))["type"] == "joined"
    return ws


async def test_the_other_subscribers_see_who_is_typing_and_the_typist_does_not(
    client, register, config
):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    alice_ws = [await joined(client, alice, chat) for _ in range(2)]
    bob_ws = await joined(client, bob, chat)
    await alice_ws[0].send_json({"type": "typing", "chat_id": chat})
    assert await next_frame(bob_ws) == {
        "type": "typing", "chat_id": chat, "user_id": alice["id"], "username": "alice",
        "expires_in": typists.EXPIRES_IN,
    }
    for ws in alice_ws:
        await no_frame(ws)
    assert typists.EXPIRES_IN == 5
    (count,) = await run_sql(config.db_path, "SELECT count(*) FROM messages")
    assert count[0] == 0  # not stored
    # Both ways: bob types, alice's sockets see it.
    await bob_ws.send_json({"type": "typing", "chat_id": chat})
    for ws in alice_ws:
        assert (await next_frame(ws))["username"] == "bob"
    await no_frame(bob_ws)


async def test_one_indication_per_user_and_chat_per_interval_the_rest_dropped_silently(
    app, client, register
):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    first, second = await create_chat(client, alice, "one"), await create_chat(client, alice, "two")
    typist = await joined(client, alice, first)
    other_socket = await joined(client, alice, second)
    watcher = await joined(client, bob, first)
    await watcher.send_json({"type": "join", "chat_id": second})
    assert (await next_frame(watcher))["type"] == "joined"
    for _ in range(5):
        await typist.send_json({"type": "typing", "chat_id": first})
        await other_socket.send_json({"type": "typing", "chat_id": first})  # same user
    await other_socket.send_json({"type": "typing", "chat_id": second})  # another chat
    seen = [await next_frame(watcher) for _ in range(2)]
    assert sorted(frame["chat_id"] for frame in seen) == [first, second]
    await no_frame(watcher, wait=0.5)
    await no_frame(typist)  # no error: the extras are dropped without an answer
    await no_frame(other_socket)

    assert app[TYPISTS].interval == typists.INTERVAL == 3.0
    app[TYPISTS].interval = 0.2  # once the interval has passed, the next one goes out
    await asyncio.sleep(0.25)
    await typist.send_json({"type": "typing", "chat_id": first})
    assert (await next_frame(watcher))["chat_id"] == first


async def test_sockets_that_did_not_join_the_chat_see_nothing(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    carol = await register(client, "carol")
    chat, elsewhere = await create_chat(client, alice), await create_chat(client, carol, "other")
    typist = await joined(client, alice, chat)
    not_joined = await connect(client, bob)
    in_another_chat = await joined(client, carol, elsewhere)
    await typist.send_json({"type": "typing", "chat_id": chat})
    await no_frame(not_joined)
    await no_frame(in_another_chat)


@pytest.mark.parametrize("frame, error", [
    ({"type": "typing"}, "chat_id is required"),
    ({"type": "typing", "chat_id": "1"}, "chat_id must be a positive integer"),
    ({"type": "typing", "chat_id": 999}, "chat 999 does not exist"),
])
async def test_a_typing_frame_for_no_chat_gets_the_usual_error(client, register, frame, error):
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    await ws.send_json(frame)
    assert await next_frame(ws) == {"type": "error", "error": error}


async def test_a_private_chat_of_others_answers_as_an_unknown_chat(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    resp = await client.post(
        "/chats/create", json={"name": "secret", "kind": "private"}, headers=alice.headers
    )
    assert resp.status == 201, await resp.text()
    chat = (await resp.json())["id"]
    member = await joined(client, alice, chat)
    outsider = await connect(client, bob)
    await outsider.send_json({"type": "typing", "chat_id": chat})
    assert await next_frame(outsider) == {"type": "error", "error": f"chat {chat} does not exist"}
    await no_frame(member)


def _channel(postgres_url: str) -> str:
    schema = parse_qs(urlsplit(postgres_url).query)["search_path"][0]
    return f"chatapi_{schema}"[:63]


@pytest.mark.postgres_only
async def test_typists_on_one_process_reach_another_in_one_notification(
    cluster, postgres_url,  # noqa: F811 (the fixture imported above)
):
    first, second = await cluster(2)
    heard: list[str] = []
    listener = await asyncpg.connect(postgres_url)
    await listener.add_listener(_channel(postgres_url), lambda *args: heard.append(args[-1]))
    try:
        async with session() as http:
            names = [f"typist{n}" for n in range(8)]
            users = [await register_over_http(http, first.url, name) for name in names]
            watcher = await register_over_http(http, second.url, "watcher")
            chat = await create_chat_over_http(http, first.url, users[0]["token"], "general")
            sockets = []
            for user in users:
                ws = await http.ws_connect(first.ws_url, params={"token": user["token"]})
                await ws.send_json({"type": "join", "chat_id": chat})
                assert (await next_frame(ws))["type"] == "joined"
                sockets.append(ws)
            far = await http.ws_connect(second.ws_url, params={"token": watcher["token"]})
            await far.send_json({"type": "join", "chat_id": chat})
            assert (await next_frame(far))["type"] == "joined"

            await asyncio.gather(*(
                ws.send_json({"type": "typing", "chat_id": chat}) for ws in sockets
            ))
            seen = [await next_frame(far, "typing") for _ in names]
            assert sorted(frame["username"] for frame in seen) == names
            assert {frame["chat_id"] for frame in seen} == {chat}
            await asyncio.sleep(0.5)
            batches = [p for p in heard if p.startswith("y:")]
            assert len(batches) == 1, batches
            assert len(json.loads(batches[0].split(":", 2)[2])) == len(names)
            # The typists' own process told its sockets directly: each sees the 7 others.
            for ws in sockets[:2]:
                others = [await next_frame(ws, "typing") for _ in range(len(names) - 1)]
                assert len({frame["user_id"] for frame in others}) == len(names) - 1
            await api(http, "GET", second.url + "/health")
    finally:
        await listener.close()


def test_a_large_batch_is_split_below_the_payload_limit():
    from chatapi.postgres import MAX_PAYLOAD, typing_payloads

    events = [typists.typing_event(n, n, "ü" * 50) for n in range(1, 400)]
    payloads = typing_payloads("node", events)
    assert len(payloads) > 1
    assert all(len(p.encode()) < MAX_PAYLOAD for p in payloads)
    items = [item for p in payloads for item in json.loads(p.split(":", 2)[2])]
    assert items == [[n, n, "ü" * 50] for n in range(1, 400)]


async def test_the_readme_typing_example_shows_and_clears_a_typist(tmp_path, backend):
    from conftest import database_for, readme_block

    from chatapi.client import ChatClient
    from chatapi.testing import ChatServer

    namespace: dict = {}
    exec(readme_block("Typing", "python"), namespace)  # noqa: S102 - README's own example
    shown: list[list[str]] = []
    with database_for(backend, tmp_path) as database, ChatServer(
        db_path=database, bcrypt_rounds=4
    ) as server:
        async with ChatClient(server.url) as alice, ChatClient(server.url) as bob:
            await alice.register("alice@example.com", "alice", "password-alice")
            await bob.register("bob@example.com", "bob", "password-bob")
            chat = (await alice.create_chat("general"))["id"]
            watcher = asyncio.create_task(namespace["show_typists"](bob, chat, shown.append))
            try:
                async with asyncio.timeout(10):
                    while not shown:  # joined
                        await asyncio.sleep(0.01)
                await namespace["type_then_send"](alice, chat, "hello")
                async with asyncio.timeout(10):
                    while len(shown) < 3:
                        await asyncio.sleep(0.01)
            finally:
                watcher.cancel()
    assert shown[:3] == [[], ["alice"], []]
