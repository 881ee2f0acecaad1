"""Search: GET /search on both backends, through the real server.

Edits and deletes are made with direct SQL (the statements an edit or a delete
runs: a new text, a text removed, a row deleted): the index must follow each at once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from conftest import (
    assert_error,
    chatapi_process,
    connect,
    create_chat,
    next_frame,
    readme_block,
    run_sql,
)

from chatapi import create_app, db, postgres, sqlite
from chatapi.client import ChatClient


async def post(ws, chat_id, text) -> dict:
    await ws.send_json({"chat_id": chat_id, "text": text})
    return await next_frame(ws, "message")


async def search(client, user, q, status=200, **params) -> list[dict]:
    resp = await client.get("/search", params={"q": q, **params}, headers=user.headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def texts(client, user, q, **params) -> list[str]:
    return [m["text"] for m in await search(client, user, q, **params)]


async def alice_in_a_chat(client, register):
    """Alice, a public chat of hers, and her socket."""
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    return alice, chat, await connect(client, alice)


async def private_chat(client, owner, members=(), name="secret") -> int:
    body = {"name": name, "kind": "private", "members": list(members)}
    resp = await client.post("/chats/create", json=body, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def test_search_answers_the_history_objects_newest_first(client, register):
    alice, chat, ws = await alice_in_a_chat(client, register)
    await post(ws, chat, "the first apple")
    await post(ws, chat, "no fruit here")
    await post(ws, chat, "a second apple")
    found = await search(client, alice, "apple")
    assert [m["text"] for m in found] == ["a second apple", "the first apple"]
    history = await (await client.get(f"/chats/messages?id={chat}", headers=alice.headers)).json()
    by_id = {m["id"]: m for m in history}
    assert found == [by_id[m["id"]] for m in found]
    assert found[0]["chat_id"] == chat


async def test_every_word_must_match_and_the_last_is_a_prefix(client, register):
    alice, chat, ws = await alice_in_a_chat(client, register)
    await post(ws, chat, "deploy the release tonight")
    await post(ws, chat, "release notes are ready")
    assert await texts(client, alice, "release deploy") == ["deploy the release tonight"]
    assert await texts(client, alice, "rel") == ["release notes are ready",
                                                  "deploy the release tonight"]
    assert await texts(client, alice, "r") == ["release notes are ready",
                                                "deploy the release tonight"]
    assert await texts(client, alice, "notes rea") == ["release notes are ready"]
    # Only the last word is a prefix.
    assert await texts(client, alice, "rel notes") == []


async def test_case_and_diacritics_are_folded(client, register):
    alice, chat, ws = await alice_in_a_chat(client, register)
    await post(ws, chat, "Crème Brûlée at the CAFÉ in Zürich")
    await post(ws, chat, "ΑΘΗΝΑ и Москва")
    for q in ("creme", "BRULEE", "café", "Cafe", "zurich", "ZÜRICH", "crème brûlée", "brû"):
        assert await texts(client, alice, q) == ["Crème Brûlée at the CAFÉ in Zürich"], q
    for q in ("αθηνα", "москва", "МОСК"):
        assert await texts(client, alice, q) == ["ΑΘΗΝΑ и Москва"], q


async def test_an_edited_word_is_found_and_the_old_one_is_not(client, register, config):
    alice, chat, ws = await alice_in_a_chat(client, register)
    message = await post(ws, chat, "meet at the harbour")
    await run_sql(config.db_path, "UPDATE messages SET text = ? WHERE id = ?",
                  "meet at the station", message["id"])
    found = await search(client, alice, "station")
    assert [(m["id"], m["text"]) for m in found] == [(message["id"], "meet at the station")]
    assert await search(client, alice, "harbour") == []
    assert await search(client, alice, "harb") == []


async def test_a_deleted_message_is_never_found(client, register, config):
    alice, chat, ws = await alice_in_a_chat(client, register)
    tombstone = await post(ws, chat, "password is hunter2")
    removed = await post(ws, chat, "hunter2 again")
    kept = await post(ws, chat, "hunter2 stays")
    # A tombstone: the text removed, the row kept.
    await run_sql(config.db_path, "UPDATE messages SET text = '' WHERE id = ?", tombstone["id"])
    await run_sql(config.db_path, "DELETE FROM messages WHERE id = ?", removed["id"])
    assert [m["id"] for m in await search(client, alice, "hunter2")] == [kept["id"]]
    assert [m["id"] for m in await search(client, alice, "password")] == []



async def test_search_asks_for_deleted_at_not_an_empty_text(client, register, config):
    """A row marked deleted is never found, whatever its text still says; a delete over
    HTTP takes its message out of the results at once."""
    alice, chat, ws = await alice_in_a_chat(client, register)
    marked = await post(ws, chat, "launch code 0000")
    deleted = await post(ws, chat, "launch at noon")
    kept = await post(ws, chat, "launch later")
    await run_sql(config.db_path, "UPDATE messages SET deleted_at = ? WHERE id = ?",
                  "2026-01-01T00:00:00.000Z", marked["id"])
    resp = await client.delete(f"/chats/{chat}/messages/{deleted['id']}", headers=alice.headers)
    assert resp.status == 200, await resp.text()
    assert [m["id"] for m in await search(client, alice, "launch")] == [kept["id"]]
    assert await search(client, alice, "code", chat_id=chat) == []

async def test_private_and_direct_chats_of_others_never_match(client, register):
    alice, bob, eve = [await register(client, n) for n in ("alice", "bob", "eve")]
    public = await create_chat(client, alice, "open")
    secret = await private_chat(client, alice, [bob["id"]])
    resp = await client.post("/chats/create", json={"kind": "direct", "user_id": bob["id"]},
                             headers=alice.headers)
    direct = (await resp.json())["id"]
    ws = await connect(client, alice)
    for chat in (public, secret, direct):
        await post(ws, chat, f"treasure in chat {chat}")
    mine = {m["chat_id"] for m in await search(client, bob, "treasure")}
    assert mine == {public, secret, direct}
    assert [m["chat_id"] for m in await search(client, eve, "treasure")] == [public]
    # Naming the chat answers exactly as an unknown chat does.
    for chat_id in (secret, direct):
        resp = await client.get("/search", params={"q": "treasure", "chat_id": chat_id},
                                headers=eve.headers)
        unknown = await client.get("/search", params={"q": "treasure", "chat_id": 10**6},
                                   headers=eve.headers)
        assert resp.status == unknown.status == 404
        assert (await resp.text()).replace(str(chat_id), "N") == (
            await unknown.text()).replace(str(10**6), "N")
    # A removed member no longer finds the chat's messages.
    resp = await client.delete(f"/chats/{secret}/members/{bob['id']}", headers=alice.headers)
    assert resp.status in (200, 204), await resp.text()
    assert {m["chat_id"] for m in await search(client, bob, "treasure")} == {public, direct}
    await search(client, bob, "treasure", status=404, chat_id=secret)


async def test_chat_id_limits_the_search_to_one_chat(client, register):
    alice = await register(client, "alice")
    first, second = await create_chat(client, alice, "one"), await create_chat(client, alice, "two")
    ws = await connect(client, alice)
    await post(ws, first, "lunch at noon")
    await post(ws, second, "lunch at one")
    assert await texts(client, alice, "lunch", chat_id=second) == ["lunch at one"]
    assert await texts(client, alice, "lunch", chat_id=first) == ["lunch at noon"]
    await search(client, alice, "lunch", status=400, chat_id="two")
    await search(client, alice, "lunch", status=404, chat_id=0)


SYNTAX = ['"', "*", "AND", "(", ")", "NEAR", "-", "OR", "NOT", '"unclosed', "a OR b",
          "NEAR(a b)", "text:word", "^start", "'", "\\", ":*", "!", "&", "|", "<->", "a & !b",
          "{a b}", "+", "col:*", "''", '""', "a*b", "\u00e9*", "x" * 1000, "🙂", "#tag", "@user"]


@pytest.mark.parametrize("q", SYNTAX)
async def test_no_input_is_query_syntax(client, register, q):
    alice, chat, ws = await alice_in_a_chat(client, register)
    await post(ws, chat, 'say "hi" AND (maybe) NEAR - * OR NOT done')
    found = await search(client, alice, q)
    assert isinstance(found, list)


async def test_operators_are_searched_as_words(client, register):
    alice, chat, ws = await alice_in_a_chat(client, register)
    await post(ws, chat, "cats AND dogs")
    await post(ws, chat, "cats OR birds")
    await post(ws, chat, "NOT now")
    assert await texts(client, alice, "cats AND") == ["cats AND dogs"]
    assert await texts(client, alice, "OR") == ["cats OR birds"]
    assert await texts(client, alice, "cats -dogs") == ["cats AND dogs"]
    assert await texts(client, alice, '"NOT"') == ["NOT now"]
    assert await texts(client, alice, "NEAR(cats") == []


@pytest.mark.parametrize("q", ["", " ", "   \t\n ", "\u3000"])
async def test_an_empty_query_is_a_400(client, register, q):
    alice = await register(client, "alice")
    error = await assert_error(
        await client.get("/search", params={"q": q}, headers=alice.headers), 400)
    assert "q" in error["details"]


@pytest.mark.parametrize("params", [{}, {"q": "x" * 1001}, {"q": "a\x00b"}])
async def test_a_missing_or_bad_query_is_a_400(client, register, params):
    alice = await register(client, "alice")
    error = await assert_error(await client.get("/search", params=params, headers=alice.headers), 400)
    assert "q" in error["details"]


async def test_search_needs_a_token(client):
    await assert_error(await client.get("/search", params={"q": "x"}), 401)


async def test_paging_with_before(client, register):
    alice, chat, ws = await alice_in_a_chat(client, register)
    ids = []
    for n in range(8):
        ids.append((await post(ws, chat, f"page {n}"))["id"])
        await post(ws, chat, "noise")
    seen, before = [], None
    while True:
        params = {"limit": 3} if before is None else {"limit": 3, "before": before}
        page = [m["id"] for m in await search(client, alice, "page", **params)]
        seen += page
        if len(page) < 3:
            break
        before = page[-1]
    assert seen == ids[::-1]


async def test_limit_bounds(client, register, config):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    await run_sql(config.db_path, "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
                  many=[(chat, alice["id"], f"bulk {n}") for n in range(1005)])
    assert len(await search(client, alice, "bulk")) == 50
    assert len(await search(client, alice, "bulk", limit=1)) == 1
    assert len(await search(client, alice, "bulk", limit=1000)) == 1000
    for limit in (0, -1, 1001, "ten"):
        error = await assert_error(await client.get(
            "/search", params={"q": "bulk", "limit": limit}, headers=alice.headers), 400)
        assert "limit" in error["details"]
    await search(client, alice, "bulk", status=400, before=0)


async def test_a_message_stored_by_another_process_is_found(aiohttp_client, client, config,
                                                           register):
    other = client if config.db_path.endswith(".db") else await aiohttp_client(create_app(config))
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(other, alice)
    message = await post(ws, chat, "written elsewhere")
    assert [m["id"] for m in await search(client, alice, "elsewhere")] == [message["id"]]


# An existing database gets its index


async def test_an_older_database_gets_the_index_of_its_messages(database, backend):
    schema = (sqlite if backend == "sqlite" else postgres).schema_sql().split("\n-- Search")[0]
    if backend == "sqlite":
        await asyncio.to_thread(_sqlite_script, database, schema)
    else:
        await run_sql(database, schema + "\nSELECT 1;")
    await run_sql(database, "INSERT INTO users (email, username, username_key, password_hash) "
                  "VALUES ('a@example.com', 'a', 'a', 'x')")
    await run_sql(database, "INSERT INTO chats (name, owner_id) VALUES ('old', 1)")
    await run_sql(database, "INSERT INTO messages (chat_id, owner_id, text) VALUES (1, 1, ?)",
                  many=[("an old Café message",), ("another",)])
    for _ in range(2):  # opening again changes nothing
        opened = await db.open_database(database)
        try:
            found = await db.search_messages(opened, 1, ["cafe"])
            assert [m.count("old Café") for m in found] == [1]
            stored = await db.insert_messages(opened, [db.Draft(1, 1, "a", "new cafe")])
            assert stored[0].is_new
            assert len(await db.search_messages(opened, 1, ["cafe"])) == 2
            await run_sql(database, "DELETE FROM messages WHERE text = 'new cafe'")
        finally:
            await opened.close()


def _sqlite_script(path, script):
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.executescript(script)


# The README's Search section, run as written against a real server process


async def test_the_readme_search_section_runs_as_written(tmp_path, database):
    async with chatapi_process(tmp_path, database=database) as (url, _):
        async with ChatClient(url) as api:
            await api.register("alice@example.com", "alice", "correct horse")
            chat = await api.create_chat("general")
            async with api.connect() as session:
                hello = await session.send(chat["id"], "hello, world")
                await session.send(chat["id"], "hello again")
        address = url.removeprefix("http://")
        sh_block = readme_block("Search", "sh").replace("localhost:8080", address)
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", sh_block], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        first, end = json.JSONDecoder().raw_decode(done.stdout)
        second = json.loads(done.stdout[end:])
        assert [m["id"] for m in first] == [hello["id"]]
        assert [m["text"] for m in second] == ["hello again", "hello, world"]
        python_block = readme_block("Search", "python").replace("localhost:8080", address)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", python_block], capture_output=True, text=True,
            timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"{hello['id'] + 1} {chat['id']} hello again", f"{hello['id']} {chat['id']} hello, world"]
