"""Chats, history, service routes and the error shape of the HTTP API."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from conftest import assert_error, connect, create_chat, next_frame, run_sql

from chatapi import chats as chats_module

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_create_chat_answers_201(client, register):
    user = await register(client)
    resp = await client.post("/chats/create", json={"name": "  General  "}, headers=user.headers)
    assert resp.status == 201
    chat = await resp.json()
    assert chat["name"] == "General"
    assert chat["owner_id"] == user["id"]
    assert isinstance(chat["id"], int) and chat["id"] > 0
    assert TIMESTAMP.fullmatch(chat["created_at"])


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 256},
                                  {"name": 7}, {"name": None}])
async def test_create_chat_validates_the_name(client, register, body):
    user = await register(client)
    error = await assert_error(
        await client.post("/chats/create", json=body, headers=user.headers), 400
    )
    assert "name" in error["details"]


async def test_create_chat_needs_a_token(client):
    await assert_error(await client.post("/chats/create", json={"name": "x"}), 401)


async def test_list_chats_in_id_order(client, register):
    user = await register(client)
    first = await create_chat(client, user, "one")
    second = await create_chat(client, user, "two")
    resp = await client.get("/chats/", headers=user.headers)
    assert resp.status == 200
    listed = await resp.json()
    assert [c["id"] for c in listed] == [first, second]
    # The base fields, then what the caller's membership adds (see tests/test_teams.py).
    assert {"id", "name", "owner_id", "created_at"} <= set(listed[0])
    assert listed[0]["kind"] == "public" and listed[0]["is_member"] is True


async def test_messages_are_all_returned_oldest_first(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    for text in ("one", "two", "three"):
        await ws.send_json({"text": text, "chat_id": chat})
        await next_frame(ws, "message")
    resp = await client.get("/chats/messages", params={"id": chat}, headers=alice.headers)
    assert resp.status == 200
    messages = await resp.json()
    assert [m["text"] for m in messages] == ["one", "two", "three"]
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids)
    first = messages[0]
    assert {"id", "text", "owner_id", "chat_id", "created_at"} <= set(first)
    assert first["owner_id"] == alice["id"] and first["chat_id"] == chat
    assert first["username"] == "alice"
    assert TIMESTAMP.fullmatch(first["created_at"])


async def test_messages_of_an_empty_chat_is_an_empty_array(client, register):
    user = await register(client)
    chat = await create_chat(client, user)
    resp = await client.get(f"/chats/messages?id={chat}", headers=user.headers)
    assert resp.status == 200
    assert await resp.json() == []


@pytest.mark.parametrize("query", ["", "?id=", "?id=abc", "?id=1.5", "?id=%201", "?id=1_0",
                                   "?id=%D9%A3"])
async def test_messages_needs_an_integer_id(client, register, query):
    user = await register(client)
    await assert_error(await client.get(f"/chats/messages{query}", headers=user.headers), 400)


@pytest.mark.parametrize("chat_id", ["42", "0", "-3", "99999999999999999999"])
async def test_messages_of_an_unknown_chat_is_404(client, register, chat_id):
    user = await register(client)
    resp = await client.get(f"/chats/messages?id={chat_id}", headers=user.headers)
    await assert_error(resp, 404)


async def test_long_history_does_not_pin_the_read_snapshot(client, register, config):
    """A history read spans many pages; writes made meanwhile are visible to other requests."""
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    await run_sql(
        config.db_path,
        "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
        many=[(chat, alice["id"], f"m{n}") for n in range(3000)],
    )
    resp = await client.get(f"/chats/messages?id={chat}", headers=alice.headers)
    head = await resp.content.readexactly(10)  # the stream has started and is left unread
    bob = await register(client, "bob")  # a write while the history stream is open
    me = await client.get("/users/me", headers=bob.headers)
    assert me.status == 200
    history = json.loads(head + await resp.content.read())
    assert len(history) == 3000 and [m["text"] for m in history[:2]] == ["m0", "m1"]


@pytest.mark.parametrize("body", [
    {"email": "s@example.com", "username": "ab\ud800c", "password": "password1"},
    {"email": "s@example.com", "username": "surrogate", "password": "pass\udfffword"},
])
async def test_lone_surrogates_are_400_not_500(client, body):
    raw = json.dumps(body).encode()  # ASCII, with the surrogate as a \\u escape
    resp = await client.post("/auth/reg", data=raw)
    await assert_error(resp, 400)


async def test_utf16_bodies_are_refused(client):
    body = json.dumps({"email": "u@example.com", "username": "utf16", "password": "password1"})
    await assert_error(await client.post("/auth/reg", data=body.encode("utf-16")), 400)


async def test_health(client):
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_unknown_route_is_404_json(client):
    await assert_error(await client.get("/no/such/route"), 404)


@pytest.mark.parametrize("method, path", [("GET", "/auth/reg"), ("DELETE", "/chats/"),
                                          ("PUT", "/users/me"), ("GET", "/chats/create")])
async def test_wrong_method_is_405_json(client, method, path):
    resp = await client.request(method, path)
    await assert_error(resp, 405)
    assert "Allow" in resp.headers


async def test_oversized_body_is_413(client, config):
    big = b'{"name": "' + b"x" * config.max_body + b'"}'
    resp = await client.post("/auth/reg", data=big, headers={"Content-Type": "application/json"})
    await assert_error(resp, 413)


async def test_a_bug_is_a_bare_500_and_a_logged_traceback(client, register, monkeypatch, caplog):
    user = await register(client)

    async def broken(db, user_id):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(chats_module.db, "chats_of", broken)
    resp = await client.get("/chats/", headers=user.headers)
    assert resp.status == 500
    assert await resp.json() == {"error": "internal error"}
    assert "secret detail" in caplog.text and "Traceback" in caplog.text


@pytest.mark.sqlite_only
async def test_schema_is_versioned(client, config):
    with sqlite3.connect(config.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (6,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(messages)")}
    assert "messages_by_chat" in indexes
