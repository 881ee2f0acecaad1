"""Teams: registration modes, admins, chat kinds, members, read markers, emails.

Each test runs on both backends; where "another process" matters, PostgreSQL runs
two applications on one database (as two processes would) and SQLite one.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest
from conftest import (
    assert_error,
    connect,
    create_chat,
    in_thread,
    next_frame,
    no_frame,
    run_sql,
)

from chatapi import create_app, db
from chatapi.keys import DB


def second_app(config):
    """Another application on the same database: another process on PostgreSQL."""
    return create_app(config) if config.db_path.startswith("postgres") else None


async def two_clients(aiohttp_client, config, client):
    app = second_app(config)
    return client if app is None else await aiohttp_client(app)


async def make_admin(client, user) -> None:
    await db.set_admin(client.app[DB], user["email"], True)


async def private_chat(client, owner, members=(), name="secret") -> int:
    resp = await client.post(
        "/chats/create",
        json={"name": name, "kind": "private", "members": list(members)},
        headers=owner.headers,
    )
    assert resp.status == 201, await resp.text()
    chat = await resp.json()
    assert chat["kind"] == "private" and chat["owner_id"] == owner["id"]
    return chat["id"]


async def listed(client, user) -> dict[int, dict]:
    resp = await client.get("/chats/", headers=user.headers)
    assert resp.status == 200
    return {chat["id"]: chat for chat in await resp.json()}


async def post(ws, chat_id, text):
    await ws.send_json({"chat_id": chat_id, "text": text})
    return await next_frame(ws, "message")


# Registration modes


async def test_open_registration_is_the_default(client, register):
    user = await register(client)
    assert user["token"]


async def test_closed_registration_is_refused_naming_the_mode(aiohttp_client, config):
    client = await aiohttp_client(create_app(config.replace(registration="closed")))
    body = {"email": "eve@example.com", "username": "eve", "password": "password1"}
    error = await assert_error(await client.post("/auth/reg", json=body), 403)
    assert "closed" in error["error"]
    assert await db.list_users(client.app[DB]) == []


async def test_invite_registration_spends_a_code(aiohttp_client, config, register):
    open_client = await aiohttp_client(create_app(config))
    admin = await register(open_client, "boss")
    await make_admin(open_client, admin)
    client = await aiohttp_client(create_app(config.replace(registration="invite")))

    body = {"email": "new@example.com", "username": "newbie", "password": "password1"}
    error = await assert_error(await client.post("/auth/reg", json=body), 403)
    assert "invite" in error["error"]
    bad = await client.post("/auth/reg", json={**body, "invite": "made-up"})
    assert "invite" in (await assert_error(bad, 403))["error"]

    resp = await client.post("/invites", json={"uses": 2, "expires_in": 3600}, headers=admin.headers)
    assert resp.status == 201
    invite = await resp.json()
    assert invite["uses_left"] == 2 and invite["expires_at"].endswith("Z")
    for n in range(2):
        resp = await client.post(
            "/auth/reg",
            json={**body, "email": f"n{n}@example.com", "username": f"new{n}", "invite": invite["code"]},
        )
        assert resp.status == 201, await resp.text()
    used_up = await client.post(
        "/auth/reg", json={**body, "email": "n3@example.com", "username": "new3", "invite": invite["code"]}
    )
    assert "used up" in (await assert_error(used_up, 403))["error"]
    assert [u["username"] for u in await db.list_users(client.app[DB])] == ["boss", "new0", "new1"]


async def test_an_expired_invite_is_refused(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(registration="invite")))
    # The first admin exists before the server refuses registrations.
    open_client = await aiohttp_client(create_app(config))
    admin = await register(open_client, "boss")
    await make_admin(open_client, admin)
    invite = await (await client.post("/invites", json={}, headers=admin.headers)).json()
    await run_sql(config.db_path, "UPDATE invites SET expires_at = ?", "2000-01-01T00:00:00.000Z")
    body = {"email": "late@example.com", "username": "late", "password": "password1",
            "invite": invite["code"]}
    assert "expired" in (await assert_error(await client.post("/auth/reg", json=body), 403))["error"]


async def test_only_admins_create_invites_unless_members_may(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config))
    user = await register(client)
    await assert_error(await client.post("/invites", json={}, headers=user.headers), 403)
    relaxed = await aiohttp_client(create_app(config.replace(member_invites=True)))
    assert (await relaxed.post("/invites", json={}, headers=user.headers)).status == 201
    await assert_error(
        await relaxed.post("/invites", json={"uses": 0}, headers=user.headers), 400
    )


# Admin commands


def chatapi(database, *args, stdin=""):
    result = subprocess.run(
        [sys.executable, "-m", "chatapi", *args, "--db", database],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )
    return result


async def _create_schema(database):
    await (await db.open_database(database)).close()


def test_admin_commands(database):
    in_thread(_create_schema(database))  # admin commands refuse a database that does not exist
    made = chatapi(database, "create-user", "--email", "root@example.com", "--username", "root",
                   "--admin", stdin="password-root\n")
    assert made.returncode == 0, made.stderr
    root = json.loads(made.stdout)
    assert root["is_admin"] is True and root["username"] == "root"
    plain = chatapi(database, "create-user", "--email", "ann@example.com", "--username", "ann",
                    stdin="password-ann\n")
    assert json.loads(plain.stdout)["is_admin"] is False

    granted = chatapi(database, "grant-admin", "--email", "ANN@example.com")
    assert granted.returncode == 0 and json.loads(granted.stdout)["is_admin"] is True
    revoked = chatapi(database, "revoke-admin", "--email", "root@example.com")
    assert json.loads(revoked.stdout)["is_admin"] is False
    missing = chatapi(database, "grant-admin", "--email", "nobody@example.com")
    assert missing.returncode != 0 and "nobody@example.com" in missing.stderr

    users = [json.loads(line) for line in chatapi(database, "list-users").stdout.splitlines()]
    assert [(u["username"], u["is_admin"]) for u in users] == [("root", False), ("ann", True)]
    assert "password" not in json.dumps(users)
    assert chatapi(database, "list-chats").stdout == ""


async def test_list_chats_command_names_kinds(client, register, config):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    await create_chat(client, alice, "lobby")
    await private_chat(client, alice, [bob["id"]])
    out = await asyncio.to_thread(chatapi, config.db_path, "list-chats")
    chats = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(c["name"], c["kind"]) for c in chats] == [("lobby", "public"), ("secret", "private")]


async def test_an_admin_manages_members_of_any_chat(client, register):
    alice, bob, root = [await register(client, n) for n in ("alice", "bob", "root")]
    chat = await private_chat(client, alice)
    await assert_error(await client.get(f"/chats/{chat}/members", headers=root.headers), 404)
    await make_admin(client, root)
    resp = await client.post(f"/chats/{chat}/members", json={"user_id": bob["id"]}, headers=root.headers)
    assert resp.status == 201
    assert chat in await listed(client, bob)


# Chat kinds


async def test_each_chat_kind_and_the_list(client, register):
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    public = await create_chat(client, alice, "lobby")
    private = await private_chat(client, alice, [bob["id"]])
    resp = await client.post("/chats/create", json={"kind": "direct", "user_id": carol["id"]},
                             headers=bob.headers)
    assert resp.status == 201
    direct = (await resp.json())["id"]

    mine = await listed(client, bob)
    assert set(mine) == {public, private, direct}
    assert mine[public]["kind"] == "public" and mine[public]["is_member"] is False
    assert "unread" not in mine[public]
    assert mine[private]["kind"] == "private" and mine[private]["role"] == "member"
    assert mine[direct]["other_user"] == {"id": carol["id"], "username": "carol"}
    assert mine[direct]["role"] == "owner"
    assert set(await listed(client, carol)) == {public, direct}
    assert set(await listed(client, alice)) == {public, private}
    assert (await listed(client, carol))[direct]["other_user"]["id"] == bob["id"]

    again = await client.post("/chats/create", json={"kind": "direct", "user_id": bob["id"]},
                              headers=carol.headers)
    assert again.status == 200 and (await again.json())["id"] == direct


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "kind": "secret"}, "kind"),
    ({"name": "x", "kind": "private", "members": [0]}, "members"),
    ({"name": "x", "kind": "private", "members": "all"}, "members"),
    ({"kind": "direct"}, "user_id"),
    ({"kind": "direct", "user_id": "2"}, "user_id"),
])
async def test_chat_creation_is_validated(client, register, body, field):
    user = await register(client)
    error = await assert_error(await client.post("/chats/create", json=body, headers=user.headers), 400)
    assert field in error["details"]


async def test_a_direct_chat_with_oneself_or_nobody_is_refused(client, register):
    user = await register(client)
    body = {"kind": "direct", "user_id": user["id"]}
    await assert_error(await client.post("/chats/create", json=body, headers=user.headers), 409)
    for body in ({"kind": "direct", "user_id": 10**6}, {"name": "x", "kind": "private", "members": [10**6]}):
        await assert_error(await client.post("/chats/create", json=body, headers=user.headers), 404)
    assert await db.list_chats(client.app[DB]) == []


async def test_concurrent_direct_chat_creation_yields_one_chat(aiohttp_client, config, client, register):
    other = await two_clients(aiohttp_client, config, client)
    for n in range(20):
        a, b = await register(client, f"ann{n}"), await register(client, f"bob{n}")
        answers = await asyncio.gather(
            client.post("/chats/create", json={"kind": "direct", "user_id": b["id"]}, headers=a.headers),
            other.post("/chats/create", json={"kind": "direct", "user_id": a["id"]}, headers=b.headers),
        )
        assert sorted(resp.status for resp in answers) == [200, 201]
        ids = {(await resp.json())["id"] for resp in answers}
        assert len(ids) == 1
    rows = await run_sql(config.db_path, "SELECT count(*) FROM chats WHERE kind = 'direct'")
    assert rows[0][0] == 20


# A non-member sees exactly what an unknown chat shows


async def test_a_private_chat_answers_a_non_member_like_an_unknown_chat(client, register):
    alice, eve = await register(client, "alice"), await register(client, "eve")
    secret = await private_chat(client, alice)
    ws = await connect(client, alice)
    await post(ws, secret, "classified")
    unknown = 10**6

    async def answers(chat_id):
        calls = [
            client.get(f"/chats/messages?id={chat_id}", headers=eve.headers),
            client.get(f"/chats/{chat_id}/members", headers=eve.headers),
            client.post(f"/chats/{chat_id}/members", json={"user_id": eve["id"]}, headers=eve.headers),
            client.patch(f"/chats/{chat_id}/members/{alice['id']}", json={"role": "member"},
                         headers=eve.headers),
            client.delete(f"/chats/{chat_id}/members/{alice['id']}", headers=eve.headers),
            client.delete(f"/chats/{chat_id}/members/{eve['id']}", headers=eve.headers),
            client.post(f"/chats/{chat_id}/join", headers=eve.headers),
            client.post(f"/chats/{chat_id}/read", json={"message_id": 1}, headers=eve.headers),
        ]
        got = []
        for call in calls:
            resp = await call
            got.append((resp.status, (await resp.text()).replace(str(chat_id), "N")))
        sock = await connect(client, eve)
        for frame in ({"chat_id": chat_id, "text": "hi"}, {"type": "join", "chat_id": chat_id},
                      {"type": "join", "chat_id": chat_id, "since": 0},
                      {"type": "read", "chat_id": chat_id, "message_id": 1}):
            await sock.send_json(frame)
            got.append(json.dumps(await next_frame(sock)).replace(str(chat_id), "N"))
        await sock.close()
        return got

    for_secret, for_unknown = await answers(secret), await answers(unknown)
    assert for_secret == for_unknown
    assert all(status == 404 for status, _ in for_secret[:8])
    assert secret not in await listed(client, eve)
    history = await client.get(f"/chats/messages?id={secret}", headers=alice.headers)
    assert [m["text"] for m in await history.json()] == ["classified"]


# Members and roles


async def test_members_are_added_promoted_and_leave(client, register):
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    chat = await private_chat(client, alice)
    members_url = f"/chats/{chat}/members"

    resp = await client.post(members_url, json={"user_id": bob["id"]}, headers=alice.headers)
    assert resp.status == 201
    assert await resp.json() == {"user_id": bob["id"], "username": "bob", "role": "member"}
    await assert_error(await client.post(members_url, json={"user_id": bob["id"]}, headers=alice.headers), 409)
    # A member is not an owner: cannot add others.
    await assert_error(await client.post(members_url, json={"user_id": carol["id"]}, headers=bob.headers), 403)
    # The last owner cannot leave, nor be demoted.
    await assert_error(await client.delete(f"{members_url}/{alice['id']}", headers=alice.headers), 409)
    await assert_error(
        await client.patch(f"{members_url}/{alice['id']}", json={"role": "member"}, headers=alice.headers), 409
    )
    resp = await client.patch(f"{members_url}/{bob['id']}", json={"role": "owner"}, headers=alice.headers)
    assert resp.status == 200
    assert (await client.delete(f"{members_url}/{alice['id']}", headers=alice.headers)).status == 204
    assert chat not in await listed(client, alice)
    members = await (await client.get(members_url, headers=bob.headers)).json()
    assert members == [{"user_id": bob["id"], "username": "bob", "role": "owner"}]
    await assert_error(await client.get(members_url, headers=alice.headers), 404)



@pytest.mark.parametrize(
    ("chat_id", "user_id", "unknown"),
    [
        # An id no user can have is an unknown user (beyond 2**63-1 it was a 500 once).
        *((None, user_id, f"user {user_id}") for user_id in
          ("0", "9223372036854775808", "9999999999999999999", "x")),
        # An id no chat can have is an unknown chat, whatever the member id.
        *((chat_id, None, f"chat {chat_id}") for chat_id in ("abc", "-1", "0", "99999999999999999999")),
    ],
)
async def test_ids_no_one_can_have_on_member_routes_are_unknown(client, register, chat_id, user_id,
                                                                unknown):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat_id = chat_id or await private_chat(client, alice)
    url = f"/chats/{chat_id}/members/{user_id or bob['id']}"
    for resp in (await client.delete(url, headers=alice.headers),
                 await client.patch(url, json={"role": "owner"}, headers=alice.headers)):
        body = await assert_error(resp, 404)
        assert body["error"] == f"{unknown} does not exist"


async def test_posting_in_a_public_chat_makes_a_member(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice, "lobby")
    assert (await listed(client, bob))[chat]["is_member"] is False
    await post(await connect(client, bob), chat, "hello")
    mine = (await listed(client, bob))[chat]
    assert mine["is_member"] is True and mine["role"] == "member" and mine["unread"] == 0
    resp = await client.post(f"/chats/{chat}/join", headers=alice.headers)
    assert resp.status == 200 and (await resp.json())["role"] == "owner"


async def test_membership_changes_reach_subscribers_and_the_member(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await private_chat(client, alice)
    ws_alice, ws_bob = await connect(client, alice), await connect(client, bob)
    await ws_alice.send_json({"type": "join", "chat_id": chat})
    assert (await next_frame(ws_alice))["type"] == "joined"

    await client.post(f"/chats/{chat}/members", json={"user_id": bob["id"]}, headers=alice.headers)
    for ws in (ws_alice, ws_bob):
        frame = await next_frame(ws)
        assert frame["type"] == "member_added" and frame["user_id"] == bob["id"]
        assert frame["role"] == "member" and frame["by"] == alice["id"]
        assert frame["chat"]["id"] == chat and frame["chat"]["kind"] == "private"

    await client.patch(f"/chats/{chat}/members/{bob['id']}", json={"role": "owner"}, headers=alice.headers)
    for ws in (ws_alice, ws_bob):
        frame = await next_frame(ws)
        assert (frame["type"], frame["role"]) == ("member_role", "owner")

    await ws_bob.send_json({"type": "join", "chat_id": chat})
    assert (await next_frame(ws_bob))["type"] == "joined"
    await client.delete(f"/chats/{chat}/members/{bob['id']}", headers=bob.headers)
    for ws in (ws_alice, ws_bob):
        frame = await next_frame(ws)
        assert (frame["type"], frame["user_id"]) == ("member_left", bob["id"])
    # Bob's socket no longer follows the chat.
    await post(ws_alice, chat, "after bob left")
    await no_frame(ws_bob)


async def test_a_private_chat_is_announced_to_its_members_only(client, register):
    alice, bob, eve = [await register(client, n) for n in ("alice", "bob", "eve")]
    sockets = {name: await connect(client, user) for name, user in
               (("alice", alice), ("bob", bob), ("eve", eve))}
    chat = await private_chat(client, alice, [bob["id"]])
    for name in ("alice", "bob"):
        frame = await next_frame(sockets[name])
        assert frame == {"type": "chat_created", "chat": {**frame["chat"], "id": chat, "kind": "private"}}
    await no_frame(sockets["eve"])


async def test_removal_reaches_a_socket_on_another_process_within_a_second(
    aiohttp_client, config, client, register
):
    other = await two_clients(aiohttp_client, config, client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    # Connected first: the chat's announcement, which crosses processes, comes before the rest.
    ws_bob = await connect(other, bob)
    chat = await private_chat(client, alice, [bob["id"]])
    frame = await next_frame(ws_bob)
    assert (frame["type"], frame["chat"]["id"]) == ("chat_created", chat)
    await ws_bob.send_json({"type": "join", "chat_id": chat})
    assert (await next_frame(ws_bob))["type"] == "joined"

    resp = await client.delete(f"/chats/{chat}/members/{bob['id']}", headers=alice.headers)
    assert resp.status == 204
    started = time.monotonic()
    frame = await next_frame(ws_bob, timeout=1.0)
    assert frame["type"] == "member_removed" and frame["by"] == alice["id"]
    assert time.monotonic() - started < 1.0
    for sent in ({"chat_id": chat, "text": "still here?"}, {"type": "join", "chat_id": chat}):
        await ws_bob.send_json(sent)
        assert (await next_frame(ws_bob)) == {"type": "error", "error": f"chat {chat} does not exist"}
    await assert_error(await other.get(f"/chats/messages?id={chat}", headers=bob.headers), 404)
    await post(await connect(client, alice), chat, "bob is gone")
    await no_frame(ws_bob)


async def test_removal_stops_a_running_catch_up(aiohttp_client, config, client, register):
    other = await two_clients(aiohttp_client, config, client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await private_chat(client, alice, [bob["id"]])
    total = 20_000
    await run_sql(
        config.db_path, "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
        many=[(chat, alice["id"], f"{n:05d} " + "x" * 1000) for n in range(total)],
    )
    ws_bob = await connect(other, bob, max_msg_size=0)
    await ws_bob.send_json({"type": "join", "chat_id": chat, "since": 0})
    first = await next_frame(ws_bob)
    assert first["type"] == "message"
    # Bob reads no further: the replay fills the socket and waits while he is removed.
    await asyncio.sleep(0.3)
    resp = await client.delete(f"/chats/{chat}/members/{bob['id']}", headers=alice.headers)
    assert resp.status == 204
    received = 1
    while True:
        frame = await next_frame(ws_bob, timeout=10.0)
        if frame["type"] != "message":
            break
        received += 1
    assert frame["type"] == "member_removed"
    assert received < total
    await no_frame(ws_bob, wait=0.5)


# Read markers and unread counts


async def test_unread_counts_and_markers_across_two_sockets(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await private_chat(client, alice, [bob["id"]])
    writer = await connect(client, alice)
    ids = [(await post(writer, chat, f"m{n}"))["id"] for n in range(3)]
    assert (await listed(client, alice))[chat]["unread"] == 0  # one's own messages are read
    mine = (await listed(client, bob))[chat]
    assert (mine["unread"], mine["unread_capped"], mine["last_read_id"]) == (3, False, 0)

    phone, laptop = await connect(client, bob), await connect(client, bob)
    await phone.send_json({"type": "read", "chat_id": chat, "message_id": ids[1]})
    for ws in (phone, laptop):
        assert await next_frame(ws) == {"type": "read", "chat_id": chat, "last_read_id": ids[1]}
    assert (await listed(client, bob))[chat]["unread"] == 1

    # Markers only move forward, and never past the chat's last message.
    resp = await client.post(f"/chats/{chat}/read", json={"message_id": ids[0]}, headers=bob.headers)
    assert await resp.json() == {"chat_id": chat, "last_read_id": ids[1]}
    resp = await client.post(f"/chats/{chat}/read", json={"message_id": 10**12}, headers=bob.headers)
    assert (await resp.json())["last_read_id"] == ids[2]
    for ws in (phone, laptop):
        assert (await next_frame(ws))["last_read_id"] == ids[1]
        assert (await next_frame(ws))["last_read_id"] == ids[2]
    assert (await listed(client, bob))[chat]["unread"] == 0
    await assert_error(
        await client.post(f"/chats/{chat}/read", json={"message_id": "x"}, headers=bob.headers), 400
    )


async def test_unread_counts_are_capped(client, register, config):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await private_chat(client, alice, [bob["id"]])
    for first, count in ((0, 999), (999, 501)):
        await run_sql(
            config.db_path, "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
            many=[(chat, alice["id"], f"m{n}") for n in range(first, first + count)],
        )
        mine = (await listed(client, bob))[chat]
        # The count is exact: 999 is shown as it is, one more is flagged.
        assert (mine["unread"], mine["unread_capped"]) == (999, first > 0)
    ids = await run_sql(config.db_path, "SELECT id FROM messages WHERE chat_id = ? ORDER BY id", chat)
    await client.post(f"/chats/{chat}/read", json={"message_id": ids[999][0]}, headers=bob.headers)
    mine = (await listed(client, bob))[chat]
    assert (mine["unread"], mine["unread_capped"]) == (500, False)


async def settled(client, user, chat, count):
    """Wait until the chat holds `count` messages."""
    for _ in range(200):
        resp = await client.get(f"/chats/messages?id={chat}", headers=user.headers)
        if len(await resp.json()) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"chat {chat} never held {count} messages")


async def test_unread_counts_are_exact_at_every_marker_and_a_marker_moving_back_changes_nothing(
    aiohttp_client, client, register, config
):
    other = await two_clients(aiohttp_client, config, client)  # another process on PostgreSQL
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    chat = await private_chat(client, alice, [bob["id"], carol["id"]])
    sockets = {u["id"]: await connect(c, u) for u, c in ((alice, client), (bob, other), (carol, other))}
    order = [alice, bob, carol, carol, alice, bob, bob, alice, carol, alice, carol]
    for n, sender in enumerate(order):
        await sockets[sender["id"]].send_json({"chat_id": chat, "text": f"m{n}"})
    await settled(client, alice, chat, len(order))
    stored = await (await client.get(f"/chats/messages?id={chat}", headers=alice.headers)).json()
    messages = [(m["id"], m["owner_id"]) for m in stored]
    assert sorted(owner for _, owner in messages) == sorted(u["id"] for u in order)

    def unread_after(marker, user):
        return sum(1 for id_, owner in messages if id_ > marker and owner != user["id"])

    async def others_read(user):
        return (await run_sql(config.db_path, "SELECT others_read FROM members "
                              "WHERE chat_id = ? AND user_id = ?", chat, user["id"]))[0][0]

    for user in (alice, bob, carol):
        assert (await listed(client, user))[chat]["unread"] == unread_after(0, user)
    # Forward in uneven steps, each through either process: the count follows exactly.
    for n, step in enumerate((0, 1, 4, 5, 9)):
        marker = messages[step][0]
        resp = await (client, other)[n % 2].post(
            f"/chats/{chat}/read", json={"message_id": marker}, headers=bob.headers
        )
        assert (await resp.json())["last_read_id"] == marker
        assert (await listed(other, bob))[chat]["unread"] == unread_after(marker, bob)
    # Back: the marker, the count and the stored read count stay as they are.
    before = await others_read(bob)
    for marker in (messages[3][0], 0):
        resp = await client.post(f"/chats/{chat}/read", json={"message_id": marker},
                                 headers=bob.headers)
        assert (await resp.json())["last_read_id"] == messages[9][0]
        assert (await listed(client, bob))[chat]["unread"] == unread_after(messages[9][0], bob)
        assert await others_read(bob) == before
    # Past the newest message: everything read, the other members' counts untouched.
    await client.post(f"/chats/{chat}/read", json={"message_id": 10**12}, headers=bob.headers)
    assert (await listed(client, bob))[chat]["unread"] == 0
    assert (await listed(client, carol))[chat]["unread"] == unread_after(0, carol)
    # A new message counts for everyone but its sender.
    await sockets[carol["id"]].send_json({"chat_id": chat, "text": "one more"})
    await settled(client, alice, chat, len(order) + 1)
    assert (await listed(other, bob))[chat]["unread"] == 1
    assert (await listed(other, carol))[chat]["unread"] == unread_after(0, carol)
    assert (await listed(client, alice))[chat]["unread"] == unread_after(0, alice) + 1
    for ws in sockets.values():
        await ws.close()


async def test_unread_counts_follow_deleted_messages(client, register, config):
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    chat = await private_chat(client, alice, [bob["id"], carol["id"]])
    await run_sql(
        config.db_path, "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
        many=[(chat, (alice, bob, carol)[n % 3]["id"], f"m{n}") for n in range(30)],
    )
    ids = [row[0] for row in await run_sql(
        config.db_path, "SELECT id FROM messages WHERE chat_id = ? ORDER BY id", chat)]
    await client.post(f"/chats/{chat}/read", json={"message_id": ids[14]}, headers=bob.headers)
    await client.post(f"/chats/{chat}/read", json={"message_id": ids[-1]}, headers=carol.headers)
    # Some below the markers, some above, of every sender, in one statement.
    await run_sql(config.db_path, "DELETE FROM messages WHERE chat_id = ? AND id % 4 = 1", chat)
    left = await run_sql(config.db_path, "SELECT id, owner_id FROM messages WHERE chat_id = ?", chat)
    for user in (alice, bob, carol):
        mine = (await listed(client, user))[chat]
        expected = sum(1 for id_, owner in left
                       if id_ > mine["last_read_id"] and owner != user["id"])
        assert mine["unread"] == expected, user["username"]


async def test_reading_a_public_chat_one_has_not_joined_is_refused(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice, "lobby")
    resp = await client.post(f"/chats/{chat}/read", json={"message_id": 0}, headers=bob.headers)
    assert "join" in (await assert_error(resp, 409))["error"]


# Emails


async def test_emails_can_be_hidden_from_other_users(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(show_emails=False)))
    alice, bob = await register(client, "alice"), await register(client, "bob")
    users = await (await client.get("/users/", headers=alice.headers)).json()
    by_name = {u["username"]: u for u in users}
    assert by_name["alice"]["email"] == "alice@example.com"
    assert "email" not in by_name["bob"]
    me = await (await client.get("/users/me", headers=bob.headers)).json()
    assert me["email"] == "bob@example.com"


async def test_emails_are_shown_by_default(client, register):
    alice, _ = await register(client, "alice"), await register(client, "bob")
    users = await (await client.get("/users/", headers=alice.headers)).json()
    assert all("email" in u for u in users)


# Upgrading a version 1 database


async def test_a_version_1_database_is_migrated(database, backend):
    from chatapi import postgres, sqlite

    schema = (sqlite if backend == "sqlite" else postgres).schema_sql().split("-- Teams")[0]
    if backend == "sqlite":
        await asyncio.to_thread(_sqlite_script, database, schema + "PRAGMA user_version = 1;")
    else:
        await run_sql(database, schema + "SELECT 1;")
    await run_sql(database, "INSERT INTO users (email, username, username_key, password_hash) "
                  "VALUES ('a@example.com', 'a', 'a', 'x')")
    await run_sql(database, "INSERT INTO chats (name, owner_id) VALUES ('old', 1)")
    opened = await db.open_database(database)
    try:
        assert [c["kind"] for c in await db.list_chats(opened)] == ["public"]
        assert [m["role"] for m in await db.members_of(opened, 1)] == ["owner"]
    finally:
        await opened.close()
    # Opening again changes nothing.
    opened = await db.open_database(database)
    await opened.close()


async def test_a_version_2_database_gets_the_same_unread_counts(database, backend):
    from chatapi import postgres, sqlite

    # Version 2: the schema before the unread counts, without the column they added.
    schema = (sqlite if backend == "sqlite" else postgres).schema_sql().split("-- Unread counts")[0]
    schema = re.sub(r"\n *others_read [^\n]*", "", schema)
    assert "others_read" not in schema
    if backend == "sqlite":
        await asyncio.to_thread(_sqlite_script, database, schema)
    else:
        await run_sql(database, schema + "SELECT 1;")
    await run_sql(database, "INSERT INTO users (email, username, username_key, password_hash) "
                  "VALUES (?, ?, ?, 'x')", many=[(f"{n}@example.com", n, n) for n in "abcd"])
    await run_sql(database, "INSERT INTO chats (name, owner_id) VALUES (?, 1)",
                  many=[("one",), ("two",), ("empty",)])
    # Messages of three senders in two chats, interleaved.
    await run_sql(database, "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, 'x')",
                  many=[(1 + n % 2, 1 + n % 3, ) for n in range(60)])
    markers = {(1, 1): 0, (1, 2): 20, (1, 3): 59, (2, 2): 33, (2, 4): 1000, (3, 1): 0}
    await run_sql(database, "INSERT INTO members (chat_id, user_id, role, last_read_id) "
                  "VALUES (?, ?, 'member', ?)", many=[(*key, marker) for key, marker in markers.items()])
    expected = {
        key: (await run_sql(database, "SELECT count(*) FROM messages WHERE chat_id = ? "
                            "AND id > ? AND owner_id <> ?", key[0], marker, key[1]))[0][0]
        for key, marker in markers.items()
    }
    assert len(set(expected.values())) > 3  # the markers tell the cases apart

    async def counts() -> dict[tuple[int, int], int]:
        opened = await db.open_database(database)
        try:
            found = {}
            for user in (1, 2, 3, 4):
                for row in await db.chats_of(opened, user):
                    if row["role"] is not None:
                        found[(row["id"], user)] = row["unread"]
            return found
        finally:
            await opened.close()

    assert await counts() == expected
    assert await counts() == expected  # opening again changes nothing
    # The trigger keeps them from here on.
    await run_sql(database, "INSERT INTO messages (chat_id, owner_id, text) VALUES (1, 2, 'new')")
    after = await counts()
    assert after == {key: n + (key == (1, 1) or key == (1, 3)) for key, n in expected.items()}


def _sqlite_script(path, script):
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.executescript(script)
