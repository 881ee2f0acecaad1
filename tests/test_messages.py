"""Messages that change: edit, delete, reactions, replies, posting over HTTP, and the
one cursor (`seq`) that replays every change exactly once."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from urllib.parse import quote

import pytest
from conftest import (
    assert_error,
    connect,
    create_chat,
    next_frame,
    no_frame,
    readme_block,
    readme_blocks,
    run_sql,
)

from chatapi import db
from chatapi.keys import DB
from chatapi.testing import ChatServer


async def post(client, user, chat: int, text: str, **extra) -> dict:
    resp = await client.post(f"/chats/{chat}/messages", json={"text": text, **extra},
                             headers=user.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def path(chat: int, message: int, emoji: str | None = None) -> str:
    base = f"/chats/{chat}/messages/{message}"
    return base if emoji is None else f"{base}/reactions/{quote(emoji, safe='')}"


async def change(client, user, method: str, url: str, status: int = 200, **body) -> dict:
    resp = await client.request(method, url, json=body or None, headers=user.headers)
    if status != 200:
        return await assert_error(resp, status)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def replay(ws, chat: int, since: int) -> list[dict]:
    """The frames a join with `since` replays, up to (not with) `joined`."""
    await ws.send_json({"type": "join", "chat_id": chat, "since": since})
    frames = []
    while (frame := await next_frame(ws))["type"] != "joined":
        frames.append(frame)
    return frames


async def test_offline_client_catches_up_with_one_update_per_message_in_its_final_state(
    client, register
):
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    chat = await create_chat(client, alice)
    first = await post(client, alice, chat, "first")
    second = await post(client, alice, chat, "second")
    ws = await connect(client, bob)
    seen = await replay(ws, chat, 0)
    assert [f["id"] for f in seen] == [first["id"], second["id"]]
    cursor = max(f["seq"] for f in seen)
    await ws.close()

    # While bob is away: `first` is edited, reacted to and deleted; `second` edited
    # twice and reacted to; `third` posted and edited; `fourth` posted.
    await change(client, alice, "PATCH", path(chat, first["id"]), text="first, fixed")
    await change(client, carol, "PUT", path(chat, first["id"], "👍"))
    await change(client, alice, "DELETE", path(chat, first["id"]))
    await change(client, alice, "PATCH", path(chat, second["id"]), text="second, v2")
    await change(client, carol, "PUT", path(chat, second["id"], "🎉"))
    await change(client, alice, "PATCH", path(chat, second["id"]), text="second, v3")
    third = await post(client, carol, chat, "third", reply_to=second["id"])
    await change(client, carol, "PATCH", path(chat, third["id"]), text="third, fixed")
    fourth = await post(client, alice, chat, "fourth")

    ws = await connect(client, bob)
    frames = await replay(ws, chat, cursor)
    assert [(f["type"], f["id"]) for f in frames] == [
        ("update", first["id"]), ("update", second["id"]),
        ("message", third["id"]), ("message", fourth["id"]),
    ]
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)) and seqs[0] > cursor
    tomb, edited, reply, _ = frames
    assert tomb["deleted"] is True and tomb["text"] == "" and "reactions" not in tomb
    assert tomb["deleted_at"].endswith("Z")
    assert edited["text"] == "second, v3" and edited["edited_at"].endswith("Z")
    assert edited["reactions"] == [{"emoji": "🎉", "user_ids": [carol["id"]]}]
    assert reply["text"] == "third, fixed" and reply["reply_to"] == second["id"]
    # Live from here on, and a cursor at the end replays nothing.
    await change(client, alice, "PATCH", path(chat, fourth["id"]), text="fourth, fixed")
    live = await next_frame(ws)
    assert (live["type"], live["id"], live["text"]) == ("update", fourth["id"], "fourth, fixed")
    assert live["seq"] > max(seqs)
    other = await connect(client, bob)
    assert await replay(other, chat, live["seq"]) == []
    await no_frame(ws)


async def test_history_keeps_the_tombstone_in_its_place(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ids = [(await post(client, alice, chat, f"m{n}"))["id"] for n in range(3)]
    await change(client, alice, "DELETE", path(chat, ids[1]))
    resp = await client.get("/chats/messages", params={"id": chat}, headers=alice.headers)
    history = await resp.json()
    assert [m["id"] for m in history] == ids
    assert history[1]["deleted"] is True and history[1]["text"] == ""
    assert [m.get("deleted", False) for m in history] == [False, True, False]
    assert all(m["seq"] == m["id"] for m in (history[0], history[2]))
    assert history[1]["seq"] > ids[2]
    # Deleting again changes nothing: the same tombstone, no new seq.
    again = await change(client, alice, "DELETE", path(chat, ids[1]))
    assert again == history[1]
    assert await change(client, alice, "GET", path(chat, ids[1])) == history[1]


async def test_changes_reach_subscribers_live_as_update_frames(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b, "joined")
    await ws_a.send_json({"chat_id": chat, "text": "hello"})
    message = await next_frame(ws_a, "message")
    assert message["seq"] == message["id"]
    assert (await next_frame(ws_b))["id"] == message["id"]
    await ws_b.send_json({"type": "react", "chat_id": chat, "message_id": message["id"],
                          "emoji": "❤️"})
    reacted = await next_frame(ws_a, "update")
    await ws_a.send_json({"type": "edit", "chat_id": chat, "message_id": message["id"],
                          "text": "hello, world"})
    for ws in (ws_a, ws_b):
        if ws is ws_b:
            assert await next_frame(ws, "update") == reacted
        assert reacted["reactions"] == [{"emoji": "❤️", "user_ids": [bob["id"]]}]
        edited = await next_frame(ws, "update")
        assert edited["text"] == "hello, world" and edited["seq"] > reacted["seq"]
        assert edited["reactions"] == reacted["reactions"]
    # A reaction already there changes nothing: the sender alone gets the message again.
    await ws_b.send_json({"type": "react", "chat_id": chat, "message_id": message["id"],
                          "emoji": "❤️"})
    assert (await next_frame(ws_b, "update"))["seq"] == edited["seq"]
    await ws_b.send_json({"type": "unreact", "chat_id": chat, "message_id": message["id"],
                          "emoji": "❤️"})
    assert "reactions" not in await next_frame(ws_a, "update")
    await ws_a.send_json({"chat_id": chat, "text": "reply", "reply_to": message["id"]})
    assert "reactions" not in await next_frame(ws_b, "update")
    for ws in (ws_a, ws_b):
        assert (await next_frame(ws, "message"))["reply_to"] == message["id"]
    await ws_a.send_json({"type": "delete", "chat_id": chat, "message_id": message["id"]})
    for ws in (ws_a, ws_b):
        tomb = await next_frame(ws, "update")
        assert tomb["deleted"] is True and tomb["text"] == ""
    await no_frame(ws_b)


async def test_who_may_change_what(client, register):
    alice, bob, carol, boss = [await register(client, n) for n in ("alice", "bob", "carol", "boss")]
    await db.set_admin(client.app[DB], boss["email"], True)
    chat = await create_chat(client, alice)  # alice owns it
    mine = await post(client, bob, chat, "bob's")
    url = path(chat, mine["id"])
    # Edit: the author only, not even the chat's owner or an admin.
    for other in (alice, carol, boss):
        body = await change(client, other, "PATCH", url, 403, text="not yours")
        assert body["error"] == "only its author edits a message"
    assert (await change(client, bob, "PATCH", url, text="mine"))["text"] == "mine"
    # Delete: the author, the chat's owner, an admin; not another member.
    await change(client, carol, "DELETE", url, 403)
    assert (await change(client, alice, "DELETE", url))["deleted"] is True
    for user, text in ((bob, "b"), (carol, "c")):
        message = await post(client, user, chat, text)
        deleter = boss if user is carol else bob
        assert (await change(client, deleter, "DELETE", path(chat, message["id"])))["deleted"]
    # A tombstone cannot be edited or reacted to.
    await change(client, bob, "PATCH", url, 409, text="again")
    await change(client, carol, "PUT", path(chat, mine["id"], "👍"), 409)
    # Unknown messages, and a message of another chat.
    await change(client, bob, "PATCH", path(chat, 10**12), 404, text="x")
    other_chat = await create_chat(client, carol, "other")
    await change(client, bob, "GET", path(other_chat, mine["id"]), 404)
    await change(client, alice, "DELETE", path(other_chat, mine["id"]), 404)


async def test_private_chats_are_unknown_to_others_for_every_change(client, register):
    alice, bob, eve = [await register(client, n) for n in ("alice", "bob", "eve")]
    resp = await client.post("/chats/create", headers=alice.headers,
                             json={"name": "secret", "kind": "private", "members": [bob["id"]]})
    chat = (await resp.json())["id"]
    message = await post(client, alice, chat, "psst")
    url = path(chat, message["id"])
    for method, target, body in (
        ("GET", url, {}), ("PATCH", url, {"text": "x"}), ("DELETE", url, {}),
        ("PUT", path(chat, message["id"], "👀"), {}),
        ("DELETE", path(chat, message["id"], "👀"), {}),
    ):
        error = await change(client, eve, method, target, 404, **body)
        assert error["error"] == f"chat {chat} does not exist"
    await assert_error(await client.post(f"/chats/{chat}/messages", json={"text": "hi"},
                                         headers=eve.headers), 404)
    ws = await connect(client, eve)
    await ws.send_json({"type": "react", "chat_id": chat, "message_id": message["id"],
                        "emoji": "👀"})
    assert (await next_frame(ws)) == {"type": "error", "error": f"chat {chat} does not exist"}
    # A member reacts; a reply must name a message of the same chat.
    assert (await change(client, bob, "PUT", path(chat, message["id"], "👀")))["reactions"]
    public = await create_chat(client, eve, "public")
    resp = await client.post(f"/chats/{public}/messages", headers=eve.headers,
                             json={"text": "hi", "reply_to": message["id"]})
    body = await assert_error(resp, 404)
    assert body["error"] == f"reply_to: message {message['id']} does not exist in chat {public}"


async def test_reactions_one_per_emoji_per_user_and_capped(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    message = await post(client, alice, chat, "react to me")
    for user in (bob, alice, bob):
        body = await change(client, user, "PUT", path(chat, message["id"], "+1"))
    assert body["reactions"] == [{"emoji": "+1", "user_ids": sorted([alice["id"], bob["id"]])}]
    for n in range(db.MAX_REACTIONS - 1):
        await change(client, bob, "PUT", path(chat, message["id"], f"e{n}"))
    error = await change(client, bob, "PUT", path(chat, message["id"], "one-more"), 409)
    assert error["error"] == f"at most {db.MAX_REACTIONS} reactions per user on one message"
    body = await change(client, bob, "DELETE", path(chat, message["id"], "+1"))
    assert body["reactions"][0] == {"emoji": "+1", "user_ids": [alice["id"]]}
    # Removing one that is not there changes nothing.
    assert await change(client, bob, "DELETE", path(chat, message["id"], "+1")) == body



@pytest.mark.parametrize("message_id", ["0", "-1", "x", "1.5", str(2**63), "9" * 30])
async def test_a_message_id_out_of_range_is_an_unknown_message(client, register, message_id):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    for method, tail in (("GET", ""), ("PATCH", ""), ("PUT", "/reactions/%2B1")):
        resp = await client.request(method, f"/chats/{chat}/messages/{message_id}{tail}",
                                    json={"text": "x"}, headers=alice.headers)
        error = await assert_error(resp, 404)
        assert error["error"] == f"message {message_id} does not exist in chat {chat}"


async def test_a_malformed_reply_to_is_a_400_before_the_chat_is_looked_up(client, register):
    alice = await register(client, "alice")
    resp = await client.post("/chats/999999/messages", json={"text": "x", "reply_to": "1"},
                             headers=alice.headers)
    reason = "reply_to must be a message id (a positive integer)"
    assert await assert_error(resp, 400) == {"error": reason, "details": {"reply_to": reason}}

@pytest.mark.parametrize("emoji", ["a%20b", "x" * 33, "%09", "%00", "a%2Fb"])
async def test_malformed_emoji_is_400(client, register, emoji):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    message = await post(client, alice, chat, "m")
    resp = await client.put(f"/chats/{chat}/messages/{message['id']}/reactions/{emoji}",
                            headers=alice.headers)
    assert (await assert_error(resp, 400))["details"] == {"emoji": (await resp.json())["error"]}


async def test_posting_over_http_is_idempotent_and_fans_out(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws = await connect(client, bob)
    await ws.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws, "joined")
    stored = await post(client, alice, chat, "from a script", nonce="n-1")
    assert {k: stored[k] for k in ("text", "nonce", "owner_id", "username")} == {
        "text": "from a script", "nonce": "n-1", "owner_id": alice["id"], "username": "alice"
    }
    assert stored["seq"] == stored["id"]
    assert await next_frame(ws) == {"type": "message", **stored}
    resp = await client.post(f"/chats/{chat}/messages", headers=alice.headers,
                             json={"text": "from a script", "nonce": "n-1"})
    assert resp.status == 200 and await resp.json() == stored
    await no_frame(ws)


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "text"), ({"text": " "}, "text"), ({"text": 5}, "text"), ({"text": "x" * 5001}, "text"),
     ({"text": "a\u0000"}, "text"), ({"text": "ok", "nonce": ""}, "nonce"),
     ({"text": "ok", "nonce": 7}, "nonce")],
)
async def test_posting_over_http_validates_like_the_websocket(client, register, body, field):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    resp = await client.post(f"/chats/{chat}/messages", json=body, headers=alice.headers)
    assert list((await assert_error(resp, 400))["details"]) == [field]
    resp = await client.post("/chats/999999/messages", json={"text": "x"}, headers=alice.headers)
    await assert_error(resp, 404)


def test_the_readme_example_prints_what_the_readme_says(tmp_path):
    example, printed = readme_blocks("Messages that change", "python")[0], readme_block(
        "Messages that change", "text"
    )
    with ChatServer(bcrypt_rounds=4) as server:
        script = tmp_path / "example.py"
        script.write_text(example.replace("http://127.0.0.1:8080", server.url))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed


async def test_a_change_with_a_revoked_token_version_is_not_stored(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    message = await post(client, alice, chat, "mine")
    database = client.app[DB]
    version = (await db.user_by_id(database, alice["id"]))["token_version"]
    await db.revoke_tokens(database, alice["id"])
    (stored,) = await db.apply_changes(database, [
        db.Change(db.EDIT, chat, message["id"], alice["id"], text="late", token_version=version)
    ])
    assert stored.error == db.REVOKED and stored.message is None
    assert (await db.message_by_id(database, chat, message["id"]))["text"] == "mine"


async def test_a_version_2_database_is_migrated(database, backend):
    from chatapi import postgres, sqlite

    schema = (sqlite if backend == "sqlite" else postgres).schema_sql()
    schema = schema.split("-- Messages that change")[0]
    schema = re.sub(r",\n    -- version 4.*?\n\);", "\n);", schema, flags=re.DOTALL)
    assert "seq        INTEGER" not in schema and "reactions" not in schema
    if backend == "sqlite":
        with sqlite3.connect(database) as conn:
            conn.executescript(schema)
    else:
        await run_sql(database, schema + "SELECT 1;")
    await run_sql(database, "INSERT INTO users (email, username, username_key, password_hash) "
                  "VALUES ('a@example.com', 'a', 'a', 'x')")
    await run_sql(database, "INSERT INTO chats (name, owner_id) VALUES ('old', 1)")
    await run_sql(database, "INSERT INTO messages (chat_id, owner_id, text) VALUES (1, 1, 'kept')")
    for _ in range(2):  # opening again changes nothing
        opened = await db.open_database(database)
        try:
            message = await db.message_by_id(opened, 1, 1)
            assert db.public_message(message)["seq"] >= 1
            changed = await db.apply_changes(opened, [db.Change(db.REACT, 1, 1, 1, emoji="👍")])
            assert changed[0].error is None
            assert [m["seq"] async for m in db.changes_since(opened, 1, 1)] == [
                changed[0].message["seq"]
            ]
        finally:
            await opened.close()


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ({"type": ["edit"]}, "unknown frame type"),
        ({"type": "edit", "chat_id": 1, "message_id": "1", "text": "x"},
         "message_id must be a message id (a positive integer)"),
        ({"type": "edit", "chat_id": 1, "message_id": 1, "text": " "},
         "text must not be empty or only white space"),
        ({"type": "react", "chat_id": 1, "message_id": 1, "emoji": "a b"},
         "emoji must not contain white space, '/' or control characters"),
        ({"type": "unreact", "chat_id": 1, "message_id": 1}, "emoji must be a string of 1 to 32"),
        ({"type": "delete", "chat_id": 1, "message_id": 10**12},
         f"message {10**12} does not exist in chat 1"),
        ({"chat_id": 1, "text": "x", "reply_to": True},
         "reply_to must be a message id (a positive integer)"),
    ],
)
async def test_bad_change_frames_get_an_error_frame(client, register, frame, error):
    alice = await register(client, "alice")
    assert await create_chat(client, alice) == 1
    ws = await connect(client, alice)
    await ws.send_json(frame)
    answer = await next_frame(ws, "error")
    assert answer["error"].startswith(error)
    await ws.send_json({"chat_id": 1, "text": "still works"})
    assert (await next_frame(ws, "message"))["text"] == "still works"


async def test_the_cursor_reset_compares_with_the_newest_seq(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    message = await post(client, alice, chat, "m")
    edited = await change(client, alice, "PATCH", path(chat, message["id"]), text="m2")
    ws = await connect(client, alice)
    # A cursor at the newest change is no cursor beyond the chat.
    assert await replay(ws, chat, edited["seq"]) == []
    await ws.send_json({"type": "join", "chat_id": chat, "since": edited["seq"] + 5})
    assert await next_frame(ws) == {"type": "joined", "chat_id": chat, "cursor_reset": True,
                                    "last_id": edited["seq"]}
