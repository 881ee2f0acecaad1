"""The public-API fallbacks of ChatAPI's two uses of library internals, run as users use them.

- SQLite's write batches (messages, and the edits, deletes and reactions that change them)
  run in one trip to aiosqlite's thread through its internals; `chatapi.sqlite.
  _writer_thread_call` finds them, and without them the same batch runs statement by
  statement through aiosqlite's public API.
- A close (logout, revocation) sends aiohttp's close frame alone through its internals;
  `chatapi.hub._close_frame_sender` finds them, and without them `ws.close` is called.
- Each HTTP connection gets ChatAPI's handler (JSON parser errors, the mask check, the
  connection count) built with the settings aiohttp's Server keeps privately;
  `chatapi.runner._handler_settings` finds them, and without them the connection gets
  aiohttp's own handler.

Every other test runs the private paths (test_ws.py::test_the_server_waits_for_the_
clients_close_reply runs both closes). Here the websocket tests imported below run again
with both lookups answering None (the public paths), on both backends (the writer's
fallback is SQLite's; PostgreSQL runs the close fallback), and a write batch of every kind
of outcome runs through both paths on two databases, which must end up the same.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from aiohttp import web
from test_catchup import (  # noqa: F401  (collected here again, on the public paths)
    test_a_repeated_nonce_stores_nothing_and_returns_the_original,
    test_logout_revokes_every_token_and_closes_sockets_with_4001,
    test_reconnecting_with_since_misses_nothing_while_another_client_posts,
)
from test_messages import (  # noqa: F401
    test_changes_reach_subscribers_live_as_update_frames,
    test_offline_client_catches_up_with_one_update_per_message_in_its_final_state,
    test_reactions_one_per_emoji_per_user_and_capped,
    test_who_may_change_what,
)
from test_revocation import (  # noqa: F401
    test_nothing_from_old_sockets_is_stored_once_logout_has_answered,
)
from test_ws import (  # noqa: F401
    test_a_reused_nonce_sent_to_a_missing_chat_is_refused,
    test_concurrent_senders_give_increasing_ids_to_every_subscriber,
    test_the_character_u0000_is_refused_in_everything_stored,
)

from chatapi import db, hub, runner, sqlite
from chatapi.db import Change, Draft
from chatapi.testing import ChatServer

PRIVATE_WRITER_CALL = sqlite._writer_thread_call


@pytest.fixture(autouse=True)
def public_paths(monkeypatch) -> None:
    """Both lookups of library internals answer None, as they would without them."""
    monkeypatch.setattr(sqlite, "_writer_thread_call", lambda writer: None)
    monkeypatch.setattr(hub, "_close_frame_sender", lambda ws: None)


@pytest.mark.sqlite_only
async def test_the_pinned_aiosqlite_has_the_internals_of_the_one_trip_batch(database):
    store = await db.open_database(database)
    try:
        assert PRIVATE_WRITER_CALL(store.writer) is not None
    finally:
        await store.close()


# Every outcome of a batch: new, repeated nonce (same chat, another chat, a chat that
# does not exist), a missing chat, a revoked token, a bad value; edits, deletes and
# reactions allowed, refused and with nothing to change.
DRAFTS = [
    Draft(1, 1, "alice", "one", nonce="n1", token_version=0),
    Draft(1, 2, "bob", "two", nonce="n2"),
    Draft(1, 1, "alice", "one again", nonce="n1", token_version=0),
    Draft(2, 1, "alice", "one elsewhere", nonce="n1"),
    Draft(99, 1, "alice", "one nowhere", nonce="n1"),
    Draft(99, 1, "alice", "to a missing chat"),
    Draft(1, 2, "bob", "revoked", nonce="n3", token_version=7),
    Draft(1, 2, "bob", "revoked again", nonce="n2", token_version=7),
    Draft(1, 2, "bob", "\udc80"),  # a lone surrogate: no UTF-8
    Draft(2, 2, "bob", "three", reply_to=None),
]
CHANGES = [
    Change(db.EDIT, 1, 1, 1, text="one, edited", token_version=0),
    Change(db.EDIT, 1, 1, 2, text="not bob's"),
    Change(db.REACT, 1, 1, 2, emoji="👍"),
    Change(db.REACT, 1, 1, 2, emoji="👍"),
    Change(db.REACT, 1, 1, 1, emoji="🎉"),
    Change(db.UNREACT, 1, 1, 1, emoji="🎉"),
    Change(db.UNREACT, 1, 1, 1, emoji="🎉"),
    Change(db.DELETE, 1, 2, 1),
    Change(db.DELETE, 1, 2, 1, moderator=True),
    Change(db.DELETE, 1, 2, 2),
    Change(db.EDIT, 1, 2, 2, text="gone"),
    Change(db.REACT, 1, 99, 2, emoji="👍"),
    Change(db.EDIT, 1, 1, 1, text="revoked", token_version=7),
]


async def run_batches(location: str) -> tuple[list, list, list]:
    """Seed two users and two chats, run DRAFTS then CHANGES; the outcomes and every row."""
    store = await db.open_database(location)
    try:
        await store.insert_seed(
            [("alice@example.com", "alice", "x"), ("bob@example.com", "bob", "x")],
            [("general", 0), ("random", 1)],
            [],
        )
        stored = await db.insert_messages(store, DRAFTS)
        changed = await db.apply_changes(store, CHANGES)
    finally:
        await store.close()
    with sqlite3.connect(location) as conn:
        rows = conn.execute(
            """SELECT id, chat_id, owner_id, text, nonce, seq, reply_to, reactions,
                      edited_at IS NULL, deleted_at IS NULL FROM messages ORDER BY id"""
        ).fetchall()
        rows += conn.execute("SELECT * FROM reactions ORDER BY 1, 2, 3").fetchall()
        rows += conn.execute("SELECT * FROM sqlite_sequence ORDER BY name").fetchall()
    return stored, changed, rows


def timeless(outcomes: list[db.Stored]) -> list[tuple]:
    """Outcomes without the times they were stored at."""
    return [
        (o.is_new, o.error, o.message and {
            k: v for k, v in o.message.items() if k not in ("created_at", "edited_at", "deleted_at")
        })
        for o in outcomes
    ]


@pytest.mark.sqlite_only
async def test_a_batch_gives_the_same_ids_seqs_rows_and_errors_on_both_paths(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(sqlite, "_writer_thread_call", PRIVATE_WRITER_CALL)
    private = await run_batches(str(tmp_path / "private.db"))
    monkeypatch.setattr(sqlite, "_writer_thread_call", lambda writer: None)
    public = await run_batches(str(tmp_path / "public.db"))

    assert timeless(private[0]) == timeless(public[0])
    assert timeless(private[1]) == timeless(public[1])
    assert private[2] == public[2]
    assert [o.error for o in private[0]] == [
        None, None, None, None, "chat 99 does not exist", "chat 99 does not exist",
        db.REVOKED, db.REVOKED, "message could not be stored", None,
    ]
    assert [o.error for o in private[1]] == [
        None, db.FORBIDDEN, None, None, None, None, None, db.FORBIDDEN, None, None, db.GONE,
        db.NO_MESSAGE, db.REVOKED,
    ]
    seqs = [o.message["seq"] for o in private[1] if o.is_new]
    assert len(seqs) == 5 and seqs == sorted(set(seqs)) and seqs[0] > private[0][-1].message["id"]



@pytest.mark.parametrize("handler", ["ChatAPI's", "aiohttp's own"])
async def test_http_connections_are_served_by_either_handler(monkeypatch, database, handler):
    """The production server (ChatServer runs the same site) serves, registers and answers
    a malformed request with a 400 through either handler; only ChatAPI's words it in JSON."""
    from test_security import raw_request

    if handler == "aiohttp's own":
        monkeypatch.setattr(runner, "_handler_settings", lambda server: None)
    else:
        assert runner._handler_settings(web.Server(lambda request: None)) is not None
    async with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        health = await raw_request(
            server.url, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert health.startswith(b"HTTP/1.1 200") and health.endswith(b'{"status": "ok"}')
        user = await asyncio.to_thread(server.register, "alice")
        me = await raw_request(
            server.url,
            f"GET /users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user['token']}\r\n"
            "Connection: close\r\n\r\n",
        )
        assert me.startswith(b"HTTP/1.1 200") and b'"username": "alice"' in me
        bad = await raw_request(server.url, "GET /health HTTP/1.1 junk\r\nHost: x\r\n\r\n")
        assert b" 400 " in bad.split(b"\r\n")[0]
        json_answer = b"application/json" in bad.split(b"\r\n\r\n")[0]
        assert json_answer == (handler == "ChatAPI's")
