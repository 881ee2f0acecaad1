"""Every SQL statement of ChatAPI, as small async functions over a Database."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
T = TypeVar("T")
MAX_ID = 2**63 - 1


class NotFound(Exception):
    """The row the caller named does not exist."""


class Conflict(Exception):
    """A unique value is already taken; `field` names it."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already taken")
        self.field = field


class Database:
    """A write connection guarded by a lock, and a read connection.

    With WAL, the reader sees only committed rows, so a history read never
    shows a message that is still inside the writer's open transaction.
    """

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.writer = writer
        self.reader = reader
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time: commit on success, roll back on error."""
        async with self._write_lock:
            try:
                yield self.writer
            except BaseException:
                await self.writer.rollback()
                raise
            await self.writer.commit()

    async def read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Run a query on the read connection and fetch every row in one step.

        A statement left open between awaits would hold the read connection's
        snapshot for every other query on it; under load one always is, and
        reads would keep seeing an old database.
        """
        return list(await self.reader.execute_fetchall(sql, params))

    async def run_on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(sqlite3 connection, *args) on the write connection's thread, in one step.

        Only inside transaction(). aiosqlite has no public call for this:
        `_execute` and `_conn` are its internals (setup.cfg pins aiosqlite
        below 0.23 for that reason; tests/test_ws.py exercises this path).
        """
        return await self.writer._execute(fn, self.writer._conn, *args)

    async def close(self) -> None:
        if self.reader is not self.writer:
            await self.reader.close()
        await self.writer.close()


def schema_sql() -> str:
    return resources.files("chatapi").joinpath("schema.sql").read_text("utf-8")


async def _connect(path: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        # FULL: an acknowledged message survives power loss, not only a crash.
        await conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        # An unclosed connection's thread would keep the process alive forever.
        await conn.close()
        raise
    return conn


async def open_database(path: str) -> Database:
    """Open (creating if needed) the database file and apply schema.sql."""
    writer = await _connect(path)
    try:
        await writer.execute("PRAGMA journal_mode = WAL")
        async with writer.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"database schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )
        await writer.executescript(schema_sql())
        await writer.commit()
        # An in-memory database exists only on its one connection.
        reader = writer if path == ":memory:" else await _connect(path)
    except BaseException:
        await writer.close()
        raise
    return Database(writer, reader)


async def ping(db: Database) -> None:
    await db.read("SELECT 1")


async def get_or_create_secret(db: Database, candidate: str) -> str:
    """The stored token secret; `candidate` becomes it if none is stored yet."""
    async with db.transaction() as conn:
        await conn.execute(
            """INSERT OR IGNORE INTO settings (key, value) VALUES ('token_secret', ?)""",
            (candidate,),
        )
        async with conn.execute(
            """SELECT value FROM settings WHERE key = 'token_secret'"""
        ) as cursor:
            (secret,) = await cursor.fetchone()
    return secret


# Users

_USER_COLUMNS = "id, email, username, password_hash, token_version, is_online, created_at"


async def create_user(
    db: Database, email: str, username: str, password_hash: str
) -> dict[str, Any]:
    """Insert a user; Conflict('email') or Conflict('username') when taken."""
    try:
        async with db.transaction() as conn, conn.execute(
            f"""INSERT INTO users (email, username, username_key, password_hash)
                    VALUES (?, ?, ?, ?)
                    RETURNING {_USER_COLUMNS}""",
            (email, username, username.casefold(), password_hash),
        ) as cursor:
            row = await cursor.fetchone()
    except sqlite3.IntegrityError as exc:
        raise Conflict("email" if "users.email" in str(exc) else "username") from None
    return dict(row)


async def user_by_email(db: Database, email: str) -> dict[str, Any] | None:
    rows = await db.read(f"""SELECT {_USER_COLUMNS} FROM users WHERE email = ?""", (email,))
    return dict(rows[0]) if rows else None


async def user_by_id(db: Database, user_id: int) -> dict[str, Any] | None:
    rows = await db.read(f"""SELECT {_USER_COLUMNS} FROM users WHERE id = ?""", (user_id,))
    return dict(rows[0]) if rows else None


async def list_users(db: Database) -> list[dict[str, Any]]:
    return [dict(row) for row in await db.read(f"""SELECT {_USER_COLUMNS} FROM users ORDER BY id""")]


async def revoke_tokens(db: Database, user_id: int) -> None:
    """Bump the user's token version: every token issued before is refused."""
    async with db.transaction() as conn:
        await conn.execute(
            """UPDATE users SET token_version = token_version + 1 WHERE id = ?""",
            (user_id,),
        )


async def set_password(db: Database, email: str, password_hash: str) -> dict[str, Any]:
    """Replace a user's password hash and revoke their tokens; NotFound if no such email."""
    async with db.transaction() as conn, conn.execute(
        f"""UPDATE users SET password_hash = ?, token_version = token_version + 1
                WHERE email = ?
                RETURNING {_USER_COLUMNS}""",
        (password_hash, email),
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        raise NotFound(f"no user with email {email}")
    return dict(row)


async def set_online(db: Database, user_id: int, online: bool) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            """UPDATE users SET is_online = ? WHERE id = ?""", (int(online), user_id)
        )


async def set_everybody_offline(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute("""UPDATE users SET is_online = 0 WHERE is_online != 0""")


# Chats


async def create_chat(db: Database, name: str, owner_id: int) -> dict[str, Any]:
    async with db.transaction() as conn, conn.execute(
        """INSERT INTO chats (name, owner_id) VALUES (?, ?)
               RETURNING id, name, owner_id, created_at""",
        (name, owner_id),
    ) as cursor:
        return dict(await cursor.fetchone())


async def list_chats(db: Database) -> list[dict[str, Any]]:
    rows = await db.read("""SELECT id, name, owner_id, created_at FROM chats ORDER BY id""")
    return [dict(row) for row in rows]


async def chat_exists(db: Database, chat_id: int) -> bool:
    return bool(await db.read("""SELECT 1 FROM chats WHERE id = ?""", (chat_id,)))


async def newest_message_id(db: Database, chat_id: int) -> int | None:
    """The id of the chat's newest message (0 when it has none); None if no such chat."""
    rows = await db.read(
        """SELECT (SELECT coalesce(max(id), 0) FROM messages WHERE chat_id = chats.id)
               FROM chats WHERE id = ?""",
        (chat_id,),
    )
    return rows[0][0] if rows else None


# Messages

_MESSAGE_COLUMNS = "m.id, m.chat_id, m.owner_id, u.username, m.text, m.nonce, m.created_at"


PAGE = 500


# One message as the JSON text of the history, built by SQLite: serialising in
# Python costs more than the query (`nonce` only when the sender gave one).
_MESSAGE_JSON = """m.id AS id, CASE WHEN m.nonce IS NULL
    THEN json_object('id', m.id, 'chat_id', m.chat_id, 'owner_id', m.owner_id,
                     'username', u.username, 'text', m.text, 'created_at', m.created_at)
    ELSE json_object('id', m.id, 'chat_id', m.chat_id, 'owner_id', m.owner_id,
                     'username', u.username, 'text', m.text, 'nonce', m.nonce,
                     'created_at', m.created_at)
    END AS json"""


async def chat_messages(
    db: Database,
    chat_id: int,
    *,
    limit: int | None = None,
    before: int | None = None,
    after: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Messages of a chat as dicts, oldest first (see _message_pages for the paging)."""
    async for rows in _message_pages(db, chat_id, _MESSAGE_COLUMNS, limit, before, after):
        for row in rows:
            yield dict(row)


async def chat_messages_json(
    db: Database,
    chat_id: int,
    *,
    limit: int | None = None,
    before: int | None = None,
    after: int | None = None,
) -> AsyncIterator[str]:
    """The same messages, each as its JSON text."""
    async for rows in _message_pages(db, chat_id, _MESSAGE_JSON, limit, before, after):
        for row in rows:
            yield row["json"]


async def _message_pages(
    db: Database,
    chat_id: int,
    columns: str,
    limit: int | None,
    before: int | None,
    after: int | None,
) -> AsyncIterator[list[sqlite3.Row]]:
    """Rows of a chat's messages, oldest first, a page at a time.

    `limit` without `after` means the newest `limit` (below `before` if given);
    with `after`, the oldest `limit` above it. Each page is fetched whole, so
    no statement stays open while the caller awaits.
    """
    before = MAX_ID if before is None else before
    if limit is not None and after is None:
        yield await db.read(
            f"""SELECT * FROM (
                    SELECT {columns} FROM messages m JOIN users u ON u.id = m.owner_id
                    WHERE m.chat_id = ? AND m.id < ?
                    ORDER BY m.id DESC LIMIT ?)
                ORDER BY id""",
            (chat_id, before, limit),
        )
        return
    last = 0 if after is None else after
    remaining = -1 if limit is None else limit
    while remaining != 0:
        page = PAGE if remaining < 0 else min(PAGE, remaining)
        rows = await db.read(
            f"""SELECT {columns} FROM messages m JOIN users u ON u.id = m.owner_id
                WHERE m.chat_id = ? AND m.id > ? AND m.id < ?
                ORDER BY m.id LIMIT ?""",
            (chat_id, last, before, page),
        )
        yield rows
        if len(rows) < page:
            return
        last = rows[-1]["id"]
        if remaining > 0:
            remaining -= len(rows)


@dataclass
class Draft:
    """A message waiting to be stored."""

    chat_id: int
    owner_id: int
    username: str
    text: str
    nonce: str | None = None
    # The token version the sending socket authenticated with: once the user's
    # tokens are revoked (logout, a password reset), the draft is not stored.
    token_version: int | None = None


REVOKED = "your tokens were revoked: log in again"


@dataclass
class Stored:
    """The outcome of one draft: the message, or why it was not stored."""

    message: dict[str, Any] | None
    is_new: bool = False
    error: str | None = None


async def insert_messages(db: Database, drafts: Sequence[Draft]) -> list[Stored]:
    """Store drafts in one transaction (one fsync for the lot), in order.

    A draft whose nonce its owner already used is not stored again: its
    result is the original message with is_new False.
    """
    async with db.transaction():
        # The whole batch in one trip to the database thread: per-statement
        # trips cost more CPU than the inserts themselves.
        return await db.run_on_writer(_insert_batch, drafts)


def _insert_batch(conn: sqlite3.Connection, drafts: Sequence[Draft]) -> list[Stored]:
    results = []
    for draft in drafts:
        try:
            # Checked in the statement that inserts, inside the batch's transaction:
            # a revocation committed before it (logout answered) stops the draft.
            rows = conn.execute(
                """INSERT INTO messages (chat_id, owner_id, text, nonce)
                   SELECT ?1, ?2, ?3, ?4
                   WHERE ?5 IS NULL OR EXISTS (
                       SELECT 1 FROM users WHERE id = ?2 AND token_version = ?5)
                   ON CONFLICT DO NOTHING
                   RETURNING id, chat_id, owner_id, text, nonce, created_at""",
                (draft.chat_id, draft.owner_id, draft.text, draft.nonce, draft.token_version),
            ).fetchall()
        except sqlite3.IntegrityError:
            results.append(Stored(None, error=f"chat {draft.chat_id} does not exist"))
            continue
        except (sqlite3.InterfaceError, ValueError):
            # Input validation should make this unreachable; one bad draft
            # must still not fail the others in its batch.
            log.exception("message from user %d could not be stored", draft.owner_id)
            results.append(Stored(None, error="message could not be stored"))
            continue
        if rows:
            results.append(Stored({**dict(rows[0]), "username": draft.username}, is_new=True))
            continue
        if draft.token_version is not None and not _still_valid(conn, draft):
            results.append(Stored(None, error=REVOKED))
            continue
        (original,) = conn.execute(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.owner_id
                WHERE m.owner_id = ? AND m.nonce = ?""",
            (draft.owner_id, draft.nonce),
        ).fetchall()
        # The unique nonce wins over the foreign key: a repeat sent to a chat
        # that does not exist must still be refused as such.
        if original["chat_id"] != draft.chat_id and not conn.execute(
            """SELECT 1 FROM chats WHERE id = ?""", (draft.chat_id,)
        ).fetchall():
            results.append(Stored(None, error=f"chat {draft.chat_id} does not exist"))
            continue
        results.append(Stored(dict(original)))
    return results


# Test support


async def insert_seed(
    db: Database,
    users: Sequence[tuple[str, str, str]],
    chats: Sequence[tuple[str, int]],
    messages: Sequence[tuple[int, int, str, str | None, str | None]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Store test data in one transaction: all of it, or nothing (Conflict when a user is taken).

    users: (email, username, password_hash); chats: (name, index of the owner in users);
    messages: (index in chats, index in users, text, nonce, created_at or None for now).
    Returns the stored users, chats and messages (with username), in the order given.
    """
    async with db.transaction() as conn:
        stored_users = []
        for email, username, password_hash in users:
            try:
                async with conn.execute(
                    f"""INSERT INTO users (email, username, username_key, password_hash)
                            VALUES (?, ?, ?, ?)
                            RETURNING {_USER_COLUMNS}""",
                    (email, username, username.casefold(), password_hash),
                ) as cursor:
                    stored_users.append(dict(await cursor.fetchone()))
            except sqlite3.IntegrityError as exc:
                raise Conflict("email" if "users.email" in str(exc) else "username") from None
        stored_chats = []
        for name, owner in chats:
            async with conn.execute(
                """INSERT INTO chats (name, owner_id) VALUES (?, ?)
                       RETURNING id, name, owner_id, created_at""",
                (name, stored_users[owner]["id"]),
            ) as cursor:
                stored_chats.append(dict(await cursor.fetchone()))
        stored_messages = []
        for chat, owner, text, nonce, created_at in messages:
            async with conn.execute(
                """INSERT INTO messages (chat_id, owner_id, text, nonce, created_at)
                       VALUES (?, ?, ?, ?, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
                       RETURNING id, chat_id, owner_id, text, nonce, created_at""",
                (stored_chats[chat]["id"], stored_users[owner]["id"], text, nonce, created_at),
            ) as cursor:
                row = dict(await cursor.fetchone())
            stored_messages.append({**row, "username": stored_users[owner]["username"]})
    return stored_users, stored_chats, stored_messages


def _still_valid(conn: sqlite3.Connection, draft: Draft) -> bool:
    rows = conn.execute(
        """SELECT 1 FROM users WHERE id = ? AND token_version = ?""",
        (draft.owner_id, draft.token_version),
    ).fetchall()
    return bool(rows)


# Revocation


async def token_versions(db: Database, user_ids: Sequence[int]) -> dict[int, int]:
    """The current token version of each of `user_ids` (absent: no such user any more)."""
    rows = await db.read(
        """SELECT id, token_version FROM users
           WHERE id IN (SELECT value FROM json_each(?))""",
        (json.dumps(list(user_ids)),),
    )
    return {row["id"]: row["token_version"] for row in rows}
