"""chatapi.client against the real server: HTTP round trips, websocket sessions, resuming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chatapi import create_app
from chatapi.client import ChatAPIError, ChatClient, ChatConnectionError, ChatSession
from chatapi.hub import Connection, Hub
from chatapi.keys import HUB

TIMEOUT = 30.0  # generous: only reached when something is broken

Accounts = Callable[[str, str], Awaitable[ChatClient]]


def url_of(server: Any) -> str:
    return f"http://{server.host}:{server.port}"


@pytest.fixture
async def accounts() -> AsyncIterator[Accounts]:
    """accounts(base_url, name) -> a ChatClient registered as `name`; closed afterwards."""
    made: list[ChatClient] = []

    async def make(base_url: str, name: str) -> ChatClient:
        api = ChatClient(base_url)
        made.append(api)
        await api.register(f"{name}@example.com", name, f"password-{name}")
        return api

    yield make
    for api in made:
        await api.close()


async def next_frame(session: ChatSession) -> dict[str, Any]:
    """The next frame, whatever its type."""
    async with asyncio.timeout(TIMEOUT):
        return await anext(session)


async def next_of(session: ChatSession, kind: str) -> dict[str, Any]:
    """The next frame of type `kind`, skipping others."""
    async with asyncio.timeout(TIMEOUT):
        async for frame in session:
            if frame["type"] == kind:
                return frame
    raise AssertionError(f"the session ended before a {kind!r} frame")


async def post(session: ChatSession, chat: int, text: str, nonce: str) -> dict[str, Any]:
    """Send until the message comes back, resending with the same nonce after a drop."""
    while True:
        await session.send(chat, text, nonce=nonce)
        try:
            async with asyncio.timeout(2.0):
                async for frame in session:
                    if frame["type"] == "message" and frame.get("nonce") == nonce:
                        return frame
        except TimeoutError:
            continue  # lost in a drop, or just slow: resending stores nothing twice
        raise AssertionError("the session ended")


async def collect_until(session: ChatSession, chat: int, last_text: str) -> list[dict[str, Any]]:
    """Every frame up to the message of `chat` with `last_text`."""
    frames = []
    async with asyncio.timeout(TIMEOUT * 4):
        async for frame in session:
            frames.append(frame)
            is_message = frame["type"] == "message" and frame["chat_id"] == chat
            if is_message and frame["text"] == last_text:
                return frames
    raise AssertionError("the session ended")


async def wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


async def new_socket(hub: Hub, user_id: int, old: set[Connection]) -> Connection:
    """The one socket of `user_id` not in `old` (the server registers it after the handshake)."""

    def fresh() -> list[Connection]:
        return [c for c in hub.connections if c.user_id == user_id and c not in old]

    await wait_for(lambda: len(fresh()) == 1)
    (conn,) = fresh()
    old.add(conn)
    return conn


# HTTP


async def test_http_methods_round_trip(client, accounts):
    url = url_of(client)
    alice = await accounts(url, "alice")
    assert alice.token
    me = await alice.me()
    assert me == {"id": me["id"], "email": "alice@example.com", "username": "alice",
                  "is_online": False, "is_admin": False}

    async with ChatClient(url, session=client.session) as again:
        answer = await again.login("ALICE@example.com", "password-alice")
        assert answer["id"] == me["id"] and again.token == answer["token"]
        bob = await accounts(url, "bob")
        assert [u["username"] for u in await again.users()] == ["alice", "bob"]
        chat = await again.create_chat("  general ")
        assert chat["name"] == "general" and chat["owner_id"] == me["id"]
        assert [c["id"] for c in await bob.chats()] == [chat["id"]]
        assert await bob.messages(chat["id"]) == []
    assert not client.session.closed  # a session passed in is not ours to close

    await alice.logout()
    assert alice.token is None
    with pytest.raises(ChatAPIError) as refused:
        await alice.login("alice@example.com", "wrong password")
    assert refused.value.status == 401


async def test_messages_pass_the_paging_parameters(client, accounts):
    alice = await accounts(url_of(client), "alice")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as session:
        ids = [(await post(session, chat, f"m{n}", f"n{n}"))["id"] for n in range(6)]
    assert [m["id"] for m in await alice.messages(chat)] == ids
    assert [m["id"] for m in await alice.messages(chat, limit=2)] == ids[-2:]
    assert [m["id"] for m in await alice.messages(chat, limit=2, before=ids[3])] == ids[1:3]
    assert [m["id"] for m in await alice.messages(chat, after=ids[3])] == ids[4:]
    assert [m["text"] for m in await alice.messages(chat, limit=1, after=ids[0])] == ["m1"]


@pytest.mark.parametrize(
    "call, status, details",
    [
        (lambda api: api.register("alice@example.com", "other", "password-x"), 409,
         {"email": "already taken"}),
        (lambda api: api.register("new@example.com", "ALICE", "password-x"), 409,
         {"username": "already taken"}),
        (lambda api: api.register("new@example.com", "newbie", "short"), 400,
         {"password": "must be at least 8 characters"}),
        (lambda api: api.create_chat("   "), 400, {"name": "must not be empty"}),
        (lambda api: api.messages(999), 404, None),
        (lambda api: api.messages(1, limit=0), 400, {"limit": "must be between 1 and 1000"}),
    ],
)
async def test_error_answers_raise_chatapierror(client, accounts, call, status, details):
    alice = await accounts(url_of(client), "alice")
    with pytest.raises(ChatAPIError) as raised:
        await call(alice)
    assert raised.value.status == status
    assert raised.value.message
    assert raised.value.details == details


async def test_no_token_raises_401(client):
    async with ChatClient(url_of(client)) as anonymous:
        with pytest.raises(ChatAPIError) as raised:
            await anonymous.me()
    assert raised.value.status == 401
    assert "token" in raised.value.message


# Websocket sessions


async def test_send_and_receive_between_two_clients(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as sender, bob.connect() as receiver:
        await receiver.join(chat)
        assert await next_of(receiver, "joined") == {"type": "joined", "chat_id": chat}
        stored = await sender.send(chat, "hello bob", nonce="n-1")
        ack = await next_of(sender, "message")  # the acknowledgement is passed on too
        received = await next_of(receiver, "message")
    assert stored == ack == received
    assert ack["text"] == "hello bob" and ack["nonce"] == "n-1" and ack["username"] == "alice"
    assert [m["id"] for m in await bob.messages(chat)] == [ack["id"]]


async def test_join_with_since_replays_then_goes_live(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as sender, bob.connect() as receiver:
        first = await post(sender, chat, "one", "n1")
        await post(sender, chat, "two", "n2")
        await receiver.join(chat, since=first["id"])
        frames = await collect_until(receiver, chat, "two")
        assert [f["type"] for f in frames] == ["message"]
        assert (await next_of(receiver, "joined"))["chat_id"] == chat
        assert receiver.last_ids == {chat: frames[0]["id"]}


async def test_a_cursor_beyond_the_chat_is_reset_and_nothing_later_is_dropped(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as sender, bob.connect() as receiver:
        newest = (await post(sender, chat, "one", "n1"))["id"]
        await receiver.join(chat, since=newest + 10_000)  # say, a database restored from backup
        joined = await next_of(receiver, "joined")
        assert (joined["cursor_reset"], joined["last_id"]) == (True, newest)
        assert receiver.last_ids == {chat: newest}
        await post(sender, chat, "two", "n2")
        frames = await collect_until(receiver, chat, "two")
        assert [f["text"] for f in frames if f["type"] == "message"] == ["two"]


async def test_join_without_since_starts_from_now(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as sender, bob.connect() as receiver:
        await post(sender, chat, "before", "n1")
        await receiver.join(chat)
        assert await next_frame(receiver) == {"type": "joined", "chat_id": chat}  # no replay
        await post(sender, chat, "after", "n2")
        assert (await next_frame(receiver))["text"] == "after"


async def test_joining_again_never_repeats_a_message(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as sender, bob.connect() as receiver:
        await receiver.join(chat, since=0)
        await next_of(receiver, "joined")
        await post(sender, chat, "one", "n1")
        await next_of(receiver, "message")
        await receiver.join(chat, since=0)
        assert await next_frame(receiver) == {"type": "joined", "chat_id": chat}
        await post(sender, chat, "two", "n2")
        assert (await next_frame(receiver))["text"] == "two"


async def test_a_repeated_nonce_is_not_delivered_twice(client, accounts):
    alice = await accounts(url_of(client), "alice")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as session:
        first = await post(session, chat, "once", "n1")
        # The server answers with the original, which send() returns but does not pass on.
        assert await session.send(chat, "once", nonce="n1") == first
        await session.send(chat, "end", nonce="n2")
        frames = await collect_until(session, chat, "end")
    assert [f["nonce"] for f in frames] == ["n2"]
    stored = [m["id"] for m in await alice.messages(chat)]
    assert stored == [first["id"], frames[0]["id"]]


async def test_a_refused_message_raises_and_its_error_frame_is_passed_on(client, accounts):
    alice = await accounts(url_of(client), "alice")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as session:
        with pytest.raises(ChatAPIError) as raised:
            await session.send(chat, "   ", nonce="blank")
        error = await next_of(session, "error")
    assert raised.value.status == 400 and "white space" in raised.value.message
    assert error["nonce"] == "blank" and "white space" in error["error"]


async def test_send_returns_the_stored_message_with_a_generated_nonce(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as first, alice.connect() as second:
        sent = await asyncio.gather(*(
            session.send(chat, f"{name} {n}")
            for n in range(5) for name, session in (("first", first), ("second", second))
        ))
    history = await bob.messages(chat)
    assert sorted(sent, key=lambda m: m["id"]) == [{"type": "message", **m} for m in history]
    assert [m["text"] for m in sent] == [f"{name} {n}" for n in range(5)
                                         for name in ("first", "second")]
    assert len({m["nonce"] for m in sent}) == 10


async def test_send_is_not_acknowledged_by_another_users_message_with_its_nonce(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    alice_id = (await alice.me())["id"]
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect(backoff=2.0, max_backoff=2.0) as alices, bob.connect() as bobs:
        await alices.join(chat)
        await next_of(alices, "joined")
        (await new_socket(client.app[HUB], alice_id, set())).transport.abort()
        await wait_for(lambda: not alices.connected)
        # Alice's send waits for the reconnection; its rejoin replays Bob's message,
        # which carries the same nonce, before Alice's own acknowledgement arrives.
        sending = asyncio.create_task(alices.send(chat, "alice's", nonce="same"))
        bobs_message = await bobs.send(chat, "bob's", nonce="same")
        assert not alices.connected
        async with asyncio.timeout(TIMEOUT):
            alices_message = await sending
    assert bobs_message["username"] == "bob" and alices_message["username"] == "alice"
    assert alices_message["id"] > bobs_message["id"]


async def test_a_server_that_is_down_raises_chatconnectionerror(aiohttp_server, config):
    server = await aiohttp_server(create_app(config))
    url = url_of(server)
    await server.close()
    async with ChatClient(url, token="whatever") as api:
        with pytest.raises(ChatConnectionError, match="could not reach"):
            await api.register("a@example.com", "alice", "password-1")
        with pytest.raises(ChatConnectionError, match="could not reach"):
            await api.messages(1)
        with pytest.raises(ChatConnectionError, match="could not reach"):
            async with api.connect():
                pass


async def test_joining_an_unknown_chat_raises_404(client, accounts):
    alice = await accounts(url_of(client), "alice")
    async with alice.connect() as session:
        with pytest.raises(ChatAPIError) as raised:
            await session.join(999)
    assert raised.value.status == 404


async def test_leave_answers_left_and_stops_following(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect() as sender, bob.connect() as receiver:
        await receiver.join(chat)
        await next_of(receiver, "joined")
        await receiver.leave(chat)
        assert await next_of(receiver, "left") == {"type": "left", "chat_id": chat}
        assert receiver.last_ids == {}
        await post(sender, chat, "unheard", "n1")
        await receiver.join(chat)
        assert await next_frame(receiver) == {"type": "joined", "chat_id": chat}
        await post(sender, chat, "heard", "n2")
        assert (await next_frame(receiver))["text"] == "heard"


async def test_a_refused_handshake_raises(client):
    async with ChatClient(url_of(client), token="not a token") as api:
        with pytest.raises(ChatAPIError) as raised:
            async with api.connect():
                pass
    assert raised.value.status == 401


async def test_close_ends_iteration_and_sends_raise(client, accounts):
    alice = await accounts(url_of(client), "alice")
    session = alice.connect()
    await session.open()

    async def consume() -> list[dict[str, Any]]:
        return [frame async for frame in session]

    consuming = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await session.close()
    async with asyncio.timeout(TIMEOUT):
        assert await consuming == []
    with pytest.raises(ChatConnectionError):
        await session.send(1, "too late")


async def test_logout_ends_the_session_with_401(client, accounts):
    url = url_of(client)
    alice = await accounts(url, "alice")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect(backoff=0.01) as session:
        await session.join(chat)
        await next_of(session, "joined")
        await alice.logout()
        with pytest.raises(ChatAPIError) as raised:
            async with asyncio.timeout(TIMEOUT):
                async for _ in session:
                    pass
        assert raised.value.status == 401
        assert "logged out" in raised.value.message  # 4001 ends it: no reconnect is tried
        assert session.reconnects == 0
        with pytest.raises(ChatAPIError):
            await session.send(chat, "after logout")


async def test_client_close_closes_its_sessions(client, accounts):
    alice = await accounts(url_of(client), "alice")
    session = alice.connect()
    await session.open()
    await alice.close()
    assert not session.connected
    with pytest.raises(ChatConnectionError):
        await session.join(1)


# Reconnecting and resuming


async def test_resumes_without_gap_or_duplicate_while_another_client_posts(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    bob_id = (await bob.me())["id"]
    chat = (await alice.create_chat("general"))["id"]
    hub = client.app[HUB]
    drops = 6
    dropped = asyncio.Event()

    async with alice.connect() as poster, bob.connect(backoff=0.02, max_backoff=0.3) as consumer:
        await consumer.join(chat)
        await next_of(consumer, "joined")

        async def keep_posting() -> None:
            n = 0
            while not dropped.is_set() or n < 100:
                await post(poster, chat, f"m{n}", f"n{n}")
                n += 1
            await post(poster, chat, "end", "end")

        async def drop_consumer() -> None:
            old: set[Connection] = set()
            for round_ in range(drops):
                conn = await new_socket(hub, bob_id, old)
                await asyncio.sleep(0.05)  # let a few messages through first
                if round_ % 2:
                    conn.close(1011, "test")
                else:
                    conn.transport.abort()  # the network goes away: no close frame
                await wait_for(lambda n=round_: consumer.reconnects > n)
            dropped.set()

        frames, _, _ = await asyncio.gather(
            collect_until(consumer, chat, "end"), keep_posting(), drop_consumer()
        )

    seen = [f["id"] for f in frames if f["type"] == "message"]
    stored = [m["id"] for m in await alice.messages(chat)]
    assert len(stored) >= 101
    assert seen == stored
    assert [f for f in frames if f["type"] != "message"] == []  # rejoins' answers are kept back
    assert consumer.reconnects >= drops


async def test_posting_alone_follows_the_chat_across_drops(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    alice_id = (await alice.me())["id"]
    chat = (await alice.create_chat("general"))["id"]
    hub = client.app[HUB]
    async with alice.connect(backoff=0.02) as talker, bob.connect() as other:
        await post(talker, chat, "hi", "a0")  # no join: the session follows the chat anyway
        old: set[Connection] = set()
        for n in range(3):
            (await new_socket(hub, alice_id, old)).transport.abort()
            for k in range(5):
                await post(other, chat, f"b{n}.{k}", f"b{n}.{k}")
            await wait_for(lambda n=n: talker.reconnects > n)
        await post(other, chat, "end", "end")
        frames = await collect_until(talker, chat, "end")
    stored = [m["id"] for m in await alice.messages(chat)]
    assert [f["type"] for f in frames] == ["message"] * (len(stored) - 1)
    assert [f["id"] for f in frames] == stored[1:]
    assert talker.last_ids == {chat: stored[-1]}


async def test_resumes_across_a_server_restart_on_the_same_port(aiohttp_server, config, accounts):
    server = await aiohttp_server(create_app(config))
    url, port = url_of(server), server.port
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    chat = (await alice.create_chat("general"))["id"]
    async with (
        alice.connect(backoff=0.05, max_backoff=0.5) as poster,
        bob.connect(backoff=0.05, max_backoff=0.5) as consumer,
    ):
        await consumer.join(chat)
        await next_of(consumer, "joined")
        for n in range(5):
            await post(poster, chat, f"before {n}", f"b{n}")
        await server.close()
        await wait_for(lambda: not consumer.connected)

        await aiohttp_server(create_app(config), port=port)
        for n in range(5):
            await post(poster, chat, f"after {n}", f"a{n}")
        await post(poster, chat, "end", "end")
        frames = await collect_until(consumer, chat, "end")

    seen = [f["id"] for f in frames if f["type"] == "message"]
    stored = [m["id"] for m in await alice.messages(chat)]
    assert len(stored) == 11
    assert seen == stored
    assert consumer.reconnects >= 1 and poster.reconnects >= 1


async def test_follows_a_server_that_moved_and_delivers_what_was_missed(
    aiohttp_server, config, accounts
):
    first = await aiohttp_server(create_app(config))
    alice, bob = await accounts(url_of(first), "alice"), await accounts(url_of(first), "bob")
    chat = (await alice.create_chat("general"))["id"]
    other_chat = (await alice.create_chat("other"))["id"]
    async with (
        alice.connect(backoff=0.05, max_backoff=0.5) as poster,
        bob.connect(backoff=0.05, max_backoff=0.5) as consumer,
    ):
        await consumer.join(chat)
        await next_of(consumer, "joined")
        for n in range(3):
            await post(poster, chat, f"before {n}", f"b{n}")
        await first.close()
        await wait_for(lambda: not poster.connected and not consumer.connected)

        # Sends while disconnected wait for the reconnection, to a followed chat or not.
        sending = asyncio.gather(
            poster.send(chat, "queued", nonce="q1"), poster.send(other_chat, "new", nonce="q2")
        )
        await asyncio.sleep(0.2)
        assert not sending.done()
        second = await aiohttp_server(create_app(config))
        alice.base_url = url_of(second)
        async with asyncio.timeout(TIMEOUT):
            await sending
        acks = [await next_of(poster, "message"), await next_of(poster, "message")]
        assert sorted(ack["nonce"] for ack in acks) == ["q1", "q2"]
        assert poster.last_ids.keys() == {chat, other_chat}
        for n in range(3):
            await post(poster, chat, f"while away {n}", f"w{n}")
        if second.port != first.port:
            assert not consumer.connected  # still knocking at the old address

        bob.base_url = url_of(second)
        await post(poster, chat, "end", "end")
        frames = await collect_until(consumer, chat, "end")

    seen = [f["id"] for f in frames if f["type"] == "message"]
    stored = [m["id"] for m in await alice.messages(chat)]
    assert len(stored) == 8
    assert seen == stored
    assert [m["text"] for m in await alice.messages(other_chat)] == ["new"]


async def test_send_gives_up_after_send_timeout_when_the_server_is_gone(
    aiohttp_server, config, accounts
):
    server = await aiohttp_server(create_app(config))
    alice = await accounts(url_of(server), "alice")
    chat = (await alice.create_chat("general"))["id"]
    async with alice.connect(send_timeout=0.3, backoff=0.05, max_backoff=0.2) as session:
        await post(session, chat, "hi", "n1")
        await server.close()
        await wait_for(lambda: not session.connected)
        with pytest.raises(ChatConnectionError, match="not connected"):
            await session.send(chat, "nobody listens", nonce="n2")
        with pytest.raises(ChatConnectionError, match="not connected"):
            await session.send(chat + 1, "not even followed yet", nonce="n3")
        with pytest.raises(ChatConnectionError, match="not connected"):
            await session.join(chat + 1)


async def test_follows_changes_by_seq_across_drops_each_once(client, accounts):
    url = url_of(client)
    alice, bob = await accounts(url, "alice"), await accounts(url, "bob")
    bob_id = (await bob.me())["id"]
    chat = (await alice.create_chat("general"))["id"]
    firsts = [await alice.post(chat, f"m{n}") for n in range(12)]
    hub = client.app[HUB]
    async with bob.connect(backoff=0.02, max_backoff=0.3) as consumer:
        await consumer.join(chat, since=0)

        async def change_all() -> None:
            for n, message in enumerate(firsts):
                await alice.edit(chat, message["id"], f"m{n}, edited")
                await bob.react(chat, message["id"], "👍")
                if n % 3 == 0:
                    await bob.unreact(chat, message["id"], "👍")
                    await alice.delete(chat, message["id"])
            reply = await alice.post(chat, "end", reply_to=firsts[1]["id"])
            assert reply["reply_to"] == firsts[1]["id"]

        async def drop_consumer() -> None:
            old: set[Connection] = set()
            for _ in range(3):
                (await new_socket(hub, bob_id, old)).transport.abort()
                await asyncio.sleep(0.05)

        frames, _, _ = await asyncio.gather(
            collect_until(consumer, chat, "end"), change_all(), drop_consumer()
        )
        assert consumer.reconnects >= 1
    seqs = [f["seq"] for f in frames if f["type"] in ("message", "update")]
    assert seqs == sorted(set(seqs))
    state: dict[int, dict[str, Any]] = {}
    for frame in frames:
        if frame["type"] in ("message", "update"):
            assert (frame["type"] == "update") == (frame["id"] in state)
            state[frame["id"]] = {k: v for k, v in frame.items() if k != "type"}
    history = await bob.messages(chat)
    assert state == {m["id"]: m for m in history}
    assert await bob.message(chat, firsts[0]["id"]) == state[firsts[0]["id"]]
    assert state[firsts[0]["id"]]["deleted"] and state[firsts[1]["id"]]["reactions"]
