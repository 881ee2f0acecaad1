"""The SQLite backend: every statement of ChatAPI in SQLite's dialect (the embedded default)."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite

from . import db
from .db import REVOKED, Change, Conflict, Database, Draft, LastOwner, NotFound, Stored

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
T = TypeVar("T")


class SQLiteDatabase(Database):
    """A write connection guarded by a lock, a read connection, and a read-only
    connection for point reads on the event loop's thread (`read_now`).

    With WAL, the readers see only committed rows, so a history read never
    shows a message that is still inside the writer's open transaction.
    """

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        local: sqlite3.Connection | None = None,
    ) -> None:
        self.writer = writer
        self.reader = reader
        self.local = local
        self._local_thread = threading.get_ident()
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

    async def read_now(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """A point read (one row by a key) run at once on the event loop's thread.

        Every authenticated request reads its user: 5-10 µs of SQLite, where a trip to
        aiosqlite's thread and back costs 45 µs of CPU and two thread switches
        (BENCHMARKS.md). The loop's connection is read-only and never waits for a lock:
        when SQLite answers busy, or off the thread that opened it, the read takes the
        reader thread like any other. Each read runs to its end, so it holds no snapshot
        and sees every commit made before it, by any connection or process.
        """
        if self.local is not None and threading.get_ident() == self._local_thread:
            try:
                return self.local.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
        return await self.read(sql, params)

    async def run_on_writer(self, batch: Callable[..., Batch[T]], *args: Any) -> T:
        """Run the statements of `batch(*args)` (see `Batch`) on the write connection.

        Only inside transaction(). In one trip to the connection's thread through
        aiosqlite's internals when they are there (`_writer_thread_call`), else one
        trip per statement through its public `execute_fetchall`: the same statements,
        rows and errors either way, at more CPU per message (BENCHMARKS.md).
        """
        call = _writer_thread_call(self.writer)
        if call is not None:
            return await call(_run_batch, batch(*args))
        return await _drive(batch(*args), self.writer.execute_fetchall)

    async def close(self) -> None:
        local, self.local = self.local, None
        try:
            if local is not None:
                local.close()
        finally:
            if self.reader is not self.writer:
                await self.reader.close()
            await self.writer.close()

    async def ping(self) -> None:
        await self.read("SELECT 1")

    async def get_or_create_secret(self, candidate: str) -> str:
        async with self.transaction() as conn:
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

    async def create_user(self, email: str, username: str, password_hash: str) -> dict[str, Any]:
        try:
            async with self.transaction() as conn, conn.execute(
                f"""INSERT INTO users (email, username, username_key, password_hash)
                        VALUES (?, ?, ?, ?)
                        RETURNING {_USER_COLUMNS}""",
                (email, username, username.casefold(), password_hash),
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.IntegrityError as exc:
            raise Conflict("email" if "users.email" in str(exc) else "username") from None
        return dict(row)

    async def user_by_email(self, email: str) -> dict[str, Any] | None:
        rows = await self.read(f"""SELECT {_USER_COLUMNS} FROM users WHERE email = ?""", (email,))
        return dict(rows[0]) if rows else None

    async def user_by_id(self, user_id: int) -> dict[str, Any] | None:
        rows = await self.read_now(f"""SELECT {_USER_COLUMNS} FROM users WHERE id = ?""", (user_id,))
        return dict(rows[0]) if rows else None

    async def list_users(self) -> list[dict[str, Any]]:
        rows = await self.read(f"""SELECT {_USER_COLUMNS} FROM users ORDER BY id""")
        return [dict(row) for row in rows]

    async def token_versions(self, user_ids: Sequence[int]) -> dict[int, int]:
        rows = await self.read(
            """SELECT id, token_version FROM users
               WHERE id IN (SELECT value FROM json_each(?))""",
            (f"[{','.join(str(int(i)) for i in user_ids)}]",),
        )
        return {row[0]: row[1] for row in rows}

    async def revoke_tokens(self, user_id: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                """UPDATE users SET token_version = token_version + 1 WHERE id = ?""",
                (user_id,),
            )

    async def set_password(self, email: str, password_hash: str) -> dict[str, Any]:
        async with self.transaction() as conn:
            rows = await conn.execute_fetchall(
                f"""UPDATE users SET password_hash = ?, token_version = token_version + 1
                        WHERE email = ?
                        RETURNING {_USER_COLUMNS}""",
                (password_hash, email),
            )
            if rows:  # a password reset revokes the API tokens too
                await conn.execute(
                    """DELETE FROM api_tokens WHERE user_id = ?""", (rows[0]["id"],)
                )
        if not rows:
            raise NotFound(f"no user with email {email}")
        return dict(rows[0])

    async def set_online(self, user_id: int, online: bool) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                """UPDATE users SET is_online = ? WHERE id = ?""", (int(online), user_id)
            )

    async def set_everybody_offline(self) -> None:
        # One process owns the file: nobody can be online before its first socket.
        async with self.transaction() as conn:
            await conn.execute("""UPDATE users SET is_online = 0 WHERE is_online != 0""")

    # Chats

    async def create_chat(self, name: str, owner_id: int) -> dict[str, Any]:
        async with self.transaction() as conn, conn.execute(
            """INSERT INTO chats (name, owner_id) VALUES (?, ?)
                   RETURNING id, name, owner_id, created_at""",
            (name, owner_id),
        ) as cursor:
            return dict(await cursor.fetchone())

    async def list_chats(self) -> list[dict[str, Any]]:
        rows = await self.read("""SELECT id, name, owner_id, created_at, kind FROM chats ORDER BY id""")
        return [dict(row) for row in rows]

    async def chat_exists(self, chat_id: int) -> bool:
        return bool(await self.read("""SELECT 1 FROM chats WHERE id = ?""", (chat_id,)))

    # Messages

    async def last_seq(self, chat_id: int) -> int:
        rows = await self.read(f"""SELECT {_LAST_SEQ}""", {"chat": chat_id})
        return rows[0][0]

    async def newest_seq(self, chat_id: int) -> int | None:
        rows = await self.read(
            f"""SELECT {_LAST_SEQ} FROM chats WHERE id = :chat""", {"chat": chat_id}
        )
        return rows[0][0] if rows else None

    async def changes_after(self, positions: dict[int, int], limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for chat_id, after in positions.items():
            if len(rows) >= limit:
                break
            # New messages by id, changed ones by the partial index on seq.
            rows.extend(
                dict(row)
                for row in await self.read(
                    f"""SELECT * FROM (
                            SELECT * FROM (
                                SELECT {_MESSAGE_COLUMNS} FROM messages m
                                JOIN users u ON u.id = m.owner_id
                                WHERE m.chat_id = :chat AND m.id > :after AND m.seq IS NULL
                                ORDER BY m.id LIMIT :limit)
                            UNION ALL
                            SELECT * FROM (
                                SELECT {_MESSAGE_COLUMNS} FROM messages m
                                JOIN users u ON u.id = m.owner_id
                                WHERE m.chat_id = :chat AND m.seq > :after
                                ORDER BY m.seq LIMIT :limit))
                        ORDER BY seq LIMIT :limit""",
                    {"chat": chat_id, "after": after, "limit": limit - len(rows)},
                )
            )
        return rows

    async def message_by_id(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        rows = await self.read(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.owner_id
                WHERE m.id = ? AND m.chat_id = ?""",
            (message_id, chat_id),
        )
        return dict(rows[0]) if rows else None

    async def apply_changes(self, changes: Sequence[Change]) -> list[Stored]:
        async with self.transaction():
            # One writer: seq values are taken and committed in order.
            return await self.run_on_writer(_change_batch, changes)

    async def message_page(
        self, chat_id: int, as_json: bool, after: int, before: int, limit: int, newest: bool
    ) -> list[Any]:
        columns = _MESSAGE_JSON if as_json else _MESSAGE_COLUMNS
        if newest:
            rows = await self.read(
                f"""SELECT * FROM (
                        SELECT {columns} FROM messages m JOIN users u ON u.id = m.owner_id
                        WHERE m.chat_id = ? AND m.id < ?
                        ORDER BY m.id DESC LIMIT ?)
                    ORDER BY id""",
                (chat_id, before, limit),
            )
        else:
            rows = await self.read(
                f"""SELECT {columns} FROM messages m JOIN users u ON u.id = m.owner_id
                    WHERE m.chat_id = ? AND m.id > ? AND m.id < ?
                    ORDER BY m.id LIMIT ?""",
                (chat_id, after, before, limit),
            )
        return [(row[0], row[1]) for row in rows] if as_json else [dict(row) for row in rows]

    async def search_messages(
        self, user_id: int, terms: Sequence[str], chat_id: int | None, before: int, limit: int
    ) -> list[str]:
        rows = await self.read(
            search_statement(in_chat=chat_id is not None),
            {"query": fts_query(terms), "before": before, "limit": limit, "chat": chat_id,
             "user": user_id},
        )
        return [row[1] for row in rows]

    async def insert_messages(self, drafts: Sequence[Draft]) -> list[Stored]:
        async with self.transaction():
            # The whole batch in one trip to the database thread: per-statement
            # trips cost more CPU than the inserts themselves. One writer task
            # inserts, so ids commit in increasing order.
            return await self.run_on_writer(_insert_batch, drafts)

    # Test support

    async def insert_seed(
        self,
        users: Sequence[tuple[str, str, str]],
        chats: Sequence[tuple[str, int]],
        messages: Sequence[tuple[int, int, str, str | None, str | None]],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        async with self.transaction() as conn:
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
                           RETURNING id, name, owner_id, created_at, kind""",
                    (name, stored_users[owner]["id"]),
                ) as cursor:
                    stored_chats.append(dict(await cursor.fetchone()))
                await conn.execute(
                    """INSERT INTO members (chat_id, user_id, role) VALUES (?, ?, 'owner')""",
                    (stored_chats[-1]["id"], stored_users[owner]["id"]),
                )
            stored_messages = []
            for chat, owner, text, nonce, created_at in messages:
                try:
                    cursor = await conn.execute(
                    f"""INSERT INTO messages (chat_id, owner_id, text, nonce, created_at)
                           VALUES (?, ?, ?, ?,
                                   COALESCE(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
                           RETURNING {_RETURNED}""",
                        (stored_chats[chat]["id"], stored_users[owner]["id"], text, nonce,
                         created_at),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict("nonce") from None
                async with cursor:
                    row = dict(await cursor.fetchone())
                stored_messages.append({**row, "username": stored_users[owner]["username"]})
        return stored_users, stored_chats, stored_messages

    # Teams: admins, chat kinds, members, read markers, invites

    async def set_admin(self, email: str, admin: bool) -> dict[str, Any]:
        async with self.transaction() as conn:
            rows = await conn.execute_fetchall("""SELECT id FROM users WHERE email = ?""", (email,))
            if not rows:
                raise NotFound(f"no user with email {email}")
            user_id = rows[0][0]
            if admin:
                await conn.execute(
                    """INSERT OR IGNORE INTO admins (user_id) VALUES (?)""", (user_id,)
                )
            else:
                await conn.execute("""DELETE FROM admins WHERE user_id = ?""", (user_id,))
            (user,) = await conn.execute_fetchall(
                f"""SELECT {_USER_COLUMNS} FROM users WHERE id = ?""", (user_id,)
            )
        return dict(user)

    async def create_team_chat(
        self, name: str, kind: str, owner_id: int, member_ids: Sequence[int]
    ) -> dict[str, Any]:
        try:
            async with self.transaction() as conn:
                (chat,) = await conn.execute_fetchall(
                    """INSERT INTO chats (name, owner_id, kind) VALUES (?, ?, ?)
                       RETURNING id, name, owner_id, created_at, kind""",
                    (name, owner_id, kind),
                )
                await conn.executemany(
                    """INSERT OR IGNORE INTO members (chat_id, user_id, role) VALUES (?, ?, ?)""",
                    [(chat["id"], owner_id, "owner")]
                    + [(chat["id"], user_id, "member") for user_id in member_ids],
                )
        except sqlite3.IntegrityError:
            raise NotFound("a member id names no user") from None
        return dict(chat)

    async def direct_chat(
        self, user_id: int, other_id: int, name: str
    ) -> tuple[dict[str, Any], bool]:
        low, high = sorted((user_id, other_id))
        # One writer at a time: the look-up and the insert cannot interleave.
        async with self.transaction() as conn:
            rows = await conn.execute_fetchall(
                f"""SELECT {_CHAT_COLUMNS} FROM direct_pairs d JOIN chats c ON c.id = d.chat_id
                    WHERE d.low_id = ? AND d.high_id = ?""",
                (low, high),
            )
            if rows:
                return dict(rows[0]), False
            if not await conn.execute_fetchall("""SELECT 1 FROM users WHERE id = ?""", (other_id,)):
                raise NotFound(f"no user with id {other_id}")
            (chat,) = await conn.execute_fetchall(
                """INSERT INTO chats (name, owner_id, kind) VALUES (?, ?, 'direct')
                   RETURNING id, name, owner_id, created_at, kind""",
                (name, user_id),
            )
            await conn.execute(
                """INSERT INTO direct_pairs (low_id, high_id, chat_id) VALUES (?, ?, ?)""",
                (low, high, chat["id"]),
            )
            await conn.executemany(
                """INSERT INTO members (chat_id, user_id, role) VALUES (?, ?, 'owner')""",
                [(chat["id"], low), (chat["id"], high)],
            )
        return dict(chat), True

    async def chat_access(self, chat_id: int, user_id: int) -> dict[str, Any] | None:
        rows = await self.read(
            f"""SELECT {_CHAT_COLUMNS}, m.role FROM chats c
                LEFT JOIN members m ON m.chat_id = c.id AND m.user_id = ?
                WHERE c.id = ?""",
            (user_id, chat_id),
        )
        return dict(rows[0]) if rows else None

    async def chats_of(self, user_id: int) -> list[dict[str, Any]]:
        # One row of each count table per chat, kept by the storing transaction.
        rows = await self.read(
            f"""SELECT {_CHAT_COLUMNS}, m.role, m.last_read_id,
                    CASE WHEN m.user_id IS NULL THEN NULL
                         ELSE coalesce(n.messages, 0) - coalesce(s.messages, 0) - m.others_read
                    END AS unread,
                    o.id AS other_id, o.username AS other_username
                FROM chats c
                LEFT JOIN members m ON m.chat_id = c.id AND m.user_id = :user
                LEFT JOIN chat_counts n ON n.chat_id = c.id AND m.user_id IS NOT NULL
                LEFT JOIN sender_counts s
                    ON s.chat_id = c.id AND s.owner_id = :user AND m.user_id IS NOT NULL
                LEFT JOIN direct_pairs d ON d.chat_id = c.id
                LEFT JOIN users o
                    ON o.id = CASE WHEN d.low_id = :user THEN d.high_id ELSE d.low_id END
                WHERE c.kind = 'public' OR m.user_id IS NOT NULL
                ORDER BY c.id""",
            {"user": user_id},
        )
        return [dict(row) for row in rows]

    async def members_of(self, chat_id: int) -> list[dict[str, Any]]:
        rows = await self.read(
            """SELECT m.user_id, u.username, m.role, m.last_read_id
               FROM members m JOIN users u ON u.id = m.user_id
               WHERE m.chat_id = ? ORDER BY m.user_id""",
            (chat_id,),
        )
        return [dict(row) for row in rows]

    async def add_member(
        self, chat_id: int, user_id: int, role: str
    ) -> dict[str, Any] | None:
        async with self.transaction() as conn:
            user = await conn.execute_fetchall(
                """SELECT username FROM users WHERE id = ?""", (user_id,)
            )
            if not user:
                raise NotFound(f"no user with id {user_id}")
            added = await conn.execute_fetchall(
                """INSERT OR IGNORE INTO members (chat_id, user_id, role) VALUES (?, ?, ?)
                   RETURNING role""",
                (chat_id, user_id, role),
            )
        if not added:
            return None
        return {"user_id": user_id, "username": user[0][0], "role": role}

    async def remove_member(self, chat_id: int, user_id: int) -> bool:
        async with self.transaction() as conn:
            if await _last_owner(conn, chat_id, user_id):
                raise LastOwner()
            cursor = await conn.execute(
                """DELETE FROM members WHERE chat_id = ? AND user_id = ?""", (chat_id, user_id)
            )
            return cursor.rowcount > 0

    async def set_role(self, chat_id: int, user_id: int, role: str) -> bool:
        async with self.transaction() as conn:
            if role != "owner" and await _last_owner(conn, chat_id, user_id):
                raise LastOwner()
            cursor = await conn.execute(
                """UPDATE members SET role = ? WHERE chat_id = ? AND user_id = ?""",
                (role, chat_id, user_id),
            )
            return cursor.rowcount > 0

    async def mark_read(self, chat_id: int, user_id: int, message_id: int) -> int:
        async with self.transaction() as conn:
            rows = await conn.execute_fetchall(
                _MARK_READ, {"chat": chat_id, "user": user_id, "to": message_id}
            )
        if not rows:
            raise NotFound(f"user {user_id} is not a member of chat {chat_id}")
        return rows[0][0]

    async def create_invite(
        self, code: str, created_by: int, expires_at: str, uses: int
    ) -> dict[str, Any]:
        async with self.transaction() as conn:
            (row,) = await conn.execute_fetchall(
                """INSERT INTO invites (code, created_by, expires_at, uses_left)
                   VALUES (?, ?, ?, ?) RETURNING code, expires_at, uses_left, created_at""",
                (code, created_by, expires_at, uses),
            )
        return dict(row)

    async def invite_usable(self, code: str, now: str) -> bool:
        return bool(await self.read(
            """SELECT 1 FROM invites WHERE code = ? AND uses_left > 0 AND expires_at > ?""",
            (code, now),
        ))

    async def create_user_with_invite(
        self, email: str, username: str, password_hash: str, code: str, now: str
    ) -> dict[str, Any]:
        try:
            async with self.transaction() as conn:
                spent = await conn.execute_fetchall(
                    """UPDATE invites SET uses_left = uses_left - 1
                       WHERE code = ? AND uses_left > 0 AND expires_at > ? RETURNING code""",
                    (code, now),
                )
                if not spent:
                    raise NotFound("invite")
                (row,) = await conn.execute_fetchall(
                    f"""INSERT INTO users (email, username, username_key, password_hash)
                            VALUES (?, ?, ?, ?)
                            RETURNING {_USER_COLUMNS}""",
                    (email, username, username.casefold(), password_hash),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict("email" if "users.email" in str(exc) else "username") from None
        return dict(row)

    # API tokens

    async def create_api_token(
        self, user_id: int, name: str, token_hash: str, cap: int
    ) -> dict[str, Any] | None:
        async with self.transaction() as conn:
            rows = await conn.execute_fetchall(
                f"""INSERT INTO api_tokens (user_id, name, hash)
                        SELECT ?1, ?2, ?3
                        WHERE (SELECT count(*) FROM api_tokens WHERE user_id = ?1) < ?4
                        RETURNING {_API_TOKEN_COLUMNS}""",
                (user_id, name, token_hash, cap),
            )
        return dict(rows[0]) if rows else None

    async def api_tokens_of(self, user_id: int) -> list[dict[str, Any]]:
        rows = await self.read(
            f"""SELECT {_API_TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ? ORDER BY id""",
            (user_id,),
        )
        return [dict(row) for row in rows]

    async def delete_api_token(self, user_id: int, token_id: int) -> bool:
        async with self.transaction() as conn:
            rows = await conn.execute_fetchall(
                """DELETE FROM api_tokens WHERE id = ? AND user_id = ? RETURNING id""",
                (token_id, user_id),
            )
        return bool(rows)

    async def user_by_api_token(self, token_hash: str) -> dict[str, Any] | None:
        rows = await self.read_now(
            f"""SELECT {_USER_COLUMNS}, t.api_token_id, t.api_token_used_at
                    FROM (SELECT id AS api_token_id, user_id AS token_user,
                                 last_used_at AS api_token_used_at
                              FROM api_tokens WHERE hash = ?) t
                    JOIN users ON users.id = t.token_user""",
            (token_hash,),
        )
        return dict(rows[0]) if rows else None

    async def touch_api_token(self, token_id: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                """UPDATE api_tokens SET last_used_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                   WHERE id = ?""",
                (token_id,),
            )

    async def live_api_tokens(self, token_ids: Sequence[int]) -> set[int]:
        rows = await self.read(
            """SELECT id FROM api_tokens WHERE id IN (SELECT value FROM json_each(?))""",
            (f"[{','.join(str(int(i)) for i in token_ids)}]",),
        )
        return {row[0] for row in rows}


_API_TOKEN_COLUMNS = "id, name, created_at, last_used_at"
_USER_COLUMNS = """id, email, username, password_hash, token_version, is_online, created_at,
    EXISTS (SELECT 1 FROM admins a WHERE a.user_id = users.id) AS is_admin"""
_MESSAGE_COLUMNS = """m.id, m.chat_id, m.owner_id, u.username, m.text, m.nonce, m.created_at,
    coalesce(m.seq, m.id) AS seq, m.reply_to, m.edited_at, m.deleted_at, m.reactions"""
_RETURNED = """id, chat_id, owner_id, text, nonce, created_at, id AS seq, reply_to,
    edited_at, deleted_at, reactions"""
# The chat's highest seq: its newest message, or a later change.
_LAST_SEQ = """max(coalesce((SELECT max(id) FROM messages WHERE chat_id = :chat), 0),
                  coalesce((SELECT max(seq) FROM messages WHERE chat_id = :chat AND seq > 0), 0))"""

# One message as the JSON text of the history, built by SQLite: serialising in
# Python costs more than the query. The fields of chatapi.db.public_message:
# json_patch onto {} drops the null ones.
_MESSAGE_JSON = """m.id AS id, json_patch('{}', json_object(
    'id', m.id, 'chat_id', m.chat_id, 'owner_id', m.owner_id, 'username', u.username,
    'text', m.text, 'created_at', m.created_at, 'nonce', m.nonce,
    'seq', coalesce(m.seq, m.id), 'reply_to', m.reply_to, 'edited_at', m.edited_at,
    'deleted', CASE WHEN m.deleted_at IS NOT NULL THEN json('true') END,
    'deleted_at', m.deleted_at, 'reactions', json(m.reactions))) AS json"""

# The chats a user may read: public ones and those they are a member of.
_READABLE_CHATS = """m.chat_id IN (SELECT id FROM chats WHERE kind = 'public'
                                UNION ALL SELECT chat_id FROM members WHERE user_id = :user)"""


def fts_query(terms: Sequence[str]) -> str:
    """The FTS5 query of search terms: every term a quoted string (its quotes doubled),
    the last one a prefix. No input is FTS5 syntax, so none can fail to parse."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms) + "*"


def search_statement(in_chat: bool) -> str:
    """The search statement (parameters :query, :before, :limit, and :chat when `in_chat`,
    else :user); the benchmark runs it in the sqlite3 command line too."""
    readable = "m.chat_id = :chat" if in_chat else _READABLE_CHATS
    return f"""SELECT {_MESSAGE_JSON} FROM messages_fts
               JOIN messages m ON m.id = messages_fts.rowid
               JOIN users u ON u.id = m.owner_id
               WHERE messages_fts MATCH :query AND messages_fts.rowid < :before
                 AND m.deleted_at IS NULL AND {readable}
               ORDER BY messages_fts.rowid DESC LIMIT :limit"""


# A batch of writes, written once for both ways of running it: a generator that
# yields each statement as (sql, params), receives the statement's rows (an
# error of the statement is raised where it yields), and returns its result.
Batch = Generator[tuple[str, Any], list[sqlite3.Row], T]


def _writer_thread_call(
    writer: aiosqlite.Connection,
) -> Callable[..., Awaitable[Any]] | None:
    """call(fn, *args) -> fn(sqlite3 connection, *args), run on the connection's thread in
    one step; None when aiosqlite lacks the internals this needs.

    aiosqlite has no public call for this: it takes its internals
    (`_execute`, `_connection`; setup.cfg pins aiosqlite below 0.23). The only use of them.
    """
    execute = getattr(writer, "_execute", None)
    conn = getattr(writer, "_connection", None)
    if execute is None or not isinstance(conn, sqlite3.Connection):
        return None
    return lambda fn, *args: execute(fn, conn, *args)


async def _drive(steps: Batch[T], execute: Callable[[str, Any], Awaitable[Any]]) -> T:
    """Run a batch's statements with `execute(sql, params)` -> rows; its result."""
    try:
        sql, params = next(steps)
        while True:
            try:
                rows = list(await execute(sql, params))
            except (sqlite3.Error, ValueError) as exc:
                sql, params = steps.throw(exc)
            else:
                sql, params = steps.send(rows)
    except StopIteration as done:
        return done.value


def _run_batch(conn: sqlite3.Connection, steps: Batch[T]) -> T:
    """Run a batch on the sqlite3 connection, on its thread: `_drive` with a statement
    that never suspends, so the coroutine finishes on its first step."""

    async def execute(sql: str, params: Any) -> list[sqlite3.Row]:
        return conn.execute(sql, params).fetchall()

    driving = _drive(steps, execute)
    try:
        driving.send(None)
    except StopIteration as done:
        return done.value
    driving.close()
    raise RuntimeError("a batch suspended on the database thread")


def _insert_batch(drafts: Sequence[Draft]) -> Batch[list[Stored]]:
    results = []
    for draft in drafts:
        try:
            # Checked in the statement that inserts, inside the batch's transaction:
            # a revocation committed before it (logout answered) stops the draft.
            rows = yield (
                f"""INSERT INTO messages (chat_id, owner_id, text, nonce, reply_to)
                    SELECT ?1, ?2, ?3, ?4, ?7
                    WHERE (?5 IS NULL OR EXISTS (
                              SELECT 1 FROM users WHERE id = ?2 AND token_version = ?5))
                      AND (?6 IS NULL OR EXISTS (
                              SELECT 1 FROM api_tokens WHERE id = ?6 AND user_id = ?2))
                    ON CONFLICT DO NOTHING
                    RETURNING {_RETURNED}""",
                (draft.chat_id, draft.owner_id, draft.text, draft.nonce, draft.token_version,
                 draft.api_token_id, draft.reply_to),
            )
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
        if not (yield from _still_valid(draft)):
            results.append(Stored(None, error=REVOKED))
            continue
        (original,) = yield (
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.owner_id
                WHERE m.owner_id = ? AND m.nonce = ?""",
            (draft.owner_id, draft.nonce),
        )
        # The unique nonce wins over the foreign key: a repeat sent to a chat
        # that does not exist must still be refused as such.
        if original["chat_id"] != draft.chat_id and not (yield (
            """SELECT 1 FROM chats WHERE id = ?""", (draft.chat_id,)
        )):
            results.append(Stored(None, error=f"chat {draft.chat_id} does not exist"))
            continue
        results.append(Stored(dict(original)))
    return results


_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _change_batch(changes: Sequence[Change]) -> Batch[list[Stored]]:
    results = []
    for change in changes:
        rows = yield (
            """SELECT owner_id, text, deleted_at FROM messages WHERE id = ? AND chat_id = ?""",
            (change.message_id, change.chat_id),
        )
        if not rows:
            results.append(Stored(None, error=db.NO_MESSAGE))
            continue
        if not (yield from _still_valid(change)):
            results.append(Stored(None, error=REVOKED))
            continue
        error = yield from _change_one(change, rows[0])
        (row,) = yield (
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.owner_id
                WHERE m.id = ?""",
            (change.message_id,),
        )
        if error in (None, False):
            results.append(Stored(dict(row), is_new=error is None))
        else:
            results.append(Stored(None, error=error))
    return results


def _change_one(change: Change, row: sqlite3.Row) -> Batch[str | bool | None]:
    """Apply one change: None when it changed the message, False when there was nothing
    to change, or why it is refused."""
    mine = row["owner_id"] == change.user_id
    deleted = row["deleted_at"] is not None
    message_id = change.message_id
    if change.kind == db.EDIT:
        if deleted:
            return db.GONE
        if not mine:
            return db.FORBIDDEN
        yield (
            f"""UPDATE messages SET text = ?, edited_at = {_NOW}, seq = ? WHERE id = ?""",
            (change.text, (yield from _next_seq()), message_id),
        )
    elif change.kind == db.DELETE:
        if not (mine or change.moderator):
            return db.FORBIDDEN
        if deleted:
            return False
        yield ("""DELETE FROM reactions WHERE message_id = ?""", (message_id,))
        yield (
            f"""UPDATE messages SET text = '', reactions = NULL, deleted_at = {_NOW}, seq = ?
                WHERE id = ?""",
            ((yield from _next_seq()), message_id),
        )
    else:
        if change.kind == db.REACT:
            if deleted:
                return db.GONE
            (count, present), = yield (
                """SELECT count(*), coalesce(sum(emoji = ?), 0) FROM reactions
                   WHERE message_id = ? AND user_id = ?""",
                (change.emoji, message_id, change.user_id),
            )
            if present:
                return False
            if count >= db.MAX_REACTIONS:
                return db.TOO_MANY
            yield (
                """INSERT INTO reactions (message_id, user_id, emoji) VALUES (?, ?, ?)""",
                (message_id, change.user_id, change.emoji),
            )
        elif not (yield (
            """DELETE FROM reactions WHERE message_id = ? AND user_id = ? AND emoji = ?
               RETURNING 1""",
            (message_id, change.user_id, change.emoji),
        )):
            return False
        yield (
            """UPDATE messages SET seq = ?2, reactions = (
                   SELECT nullif(json_group_array(json_object('emoji', emoji, 'user_ids', json(ids))), '[]')
                   FROM (SELECT emoji, json_group_array(user_id) AS ids FROM (
                             SELECT emoji, user_id FROM reactions WHERE message_id = ?1
                             ORDER BY emoji, user_id)
                         GROUP BY emoji ORDER BY emoji))
               WHERE id = ?1""",
            (message_id, (yield from _next_seq())),
        )
    return None


def _next_seq() -> Batch[int]:
    """The next value of the message id allocation (AUTOINCREMENT's counter): the next
    message inserted takes the one after it."""
    ((seq,),) = yield (
        """UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = 'messages' RETURNING seq""",
        (),
    )
    return seq


def _still_valid(draft: Draft | Change) -> Batch[bool]:
    """Whether the token the draft (or change) was sent with is still valid (True without one)."""
    owner = draft.owner_id if isinstance(draft, Draft) else draft.user_id
    if draft.token_version is not None:
        return bool((yield (
            """SELECT 1 FROM users WHERE id = ? AND token_version = ?""",
            (owner, draft.token_version),
        )))
    if draft.api_token_id is not None:
        return bool((yield (
            """SELECT 1 FROM api_tokens WHERE id = ? AND user_id = ?""",
            (draft.api_token_id, owner),
        )))
    return True


def schema_sql() -> str:
    """The SQLite schema (schema.sql)."""
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


def _connect_local(path: str) -> sqlite3.Connection:
    """The read-only connection of `read_now`, for the thread that opens it: no busy
    wait (timeout 0), no transaction left open (autocommit)."""
    uri = "file://" + quote(os.fsencode(os.path.abspath(path))) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


async def open_database(path: str) -> SQLiteDatabase:
    """Open (creating if needed) the database file and apply schema.sql."""
    writer = await _connect(path)
    reader = None
    try:
        await writer.execute("PRAGMA journal_mode = WAL")
        async with writer.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"database schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )
        # Were the unread counts kept? Then schema.sql, the migration and the fill of
        # the counts commit as one transaction: a crash in between leaves them all out.
        counted = bool(await writer.execute_fetchall(
            """SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'messages_counted'"""
        ))
        await writer.executescript("BEGIN IMMEDIATE;\n" + schema_sql())
        await _migrate(writer, version, counted)
        await _build_search_index(writer)
        await writer.commit()
        # An in-memory database exists only on its one connection.
        if path == ":memory:":
            return SQLiteDatabase(writer, writer)
        reader = await _connect(path)
        return SQLiteDatabase(writer, reader, _connect_local(path))
    except BaseException:
        if reader is not None:
            await reader.close()
        await writer.close()
        raise


# Teams: admins, chat kinds, members, read markers, invites


async def _migrate(conn: aiosqlite.Connection, version: int, counted: bool) -> None:
    """Bring a database of an older schema version up to this one (after schema.sql, in
    its transaction): what is missing is detected, so running it again changes nothing.
    `counted`: the trigger keeping the unread counts was there before schema.sql ran."""
    columns = {row[1] for row in await conn.execute_fetchall("""PRAGMA table_info(chats)""")}
    if "kind" not in columns:
        await conn.execute(
            """ALTER TABLE chats ADD COLUMN kind TEXT NOT NULL DEFAULT 'public'
                   CHECK (kind IN ('public', 'private', 'direct'))"""
        )
    columns = {row[1] for row in await conn.execute_fetchall("""PRAGMA table_info(messages)""")}
    for column in ("seq INTEGER", "edited_at TEXT", "deleted_at TEXT", "reply_to INTEGER",
                   "reactions TEXT"):
        if column.split()[0] not in columns:
            await conn.execute(f"""ALTER TABLE messages ADD COLUMN {column}""")
    await conn.execute(
        """CREATE INDEX IF NOT EXISTS messages_changed ON messages (chat_id, seq)
           WHERE seq IS NOT NULL"""
    )
    if version == 1:
        # The creators of existing chats become their owners.
        await conn.execute(
            """INSERT OR IGNORE INTO members (chat_id, user_id, role)
               SELECT id, owner_id, 'owner' FROM chats"""
        )
    columns = {row[1] for row in await conn.execute_fetchall("""PRAGMA table_info(members)""")}
    if "others_read" not in columns:
        await conn.execute(
            """ALTER TABLE members ADD COLUMN others_read INTEGER NOT NULL DEFAULT 0"""
        )
    if not counted:
        # The counts were never kept: counted once from the messages; the trigger
        # (schema.sql) keeps them from here on.
        for statement in _FILL_COUNTS:
            await conn.execute(statement)


_FILL_COUNTS = (
    """DELETE FROM chat_counts""",
    """DELETE FROM sender_counts""",
    """INSERT INTO chat_counts (chat_id, messages)
       SELECT chat_id, count(*) FROM messages GROUP BY chat_id""",
    """INSERT INTO sender_counts (chat_id, owner_id, messages)
       SELECT chat_id, owner_id, count(*) FROM messages GROUP BY chat_id, owner_id""",
    """UPDATE members SET others_read = (
           SELECT count(*) FROM messages x
           WHERE x.chat_id = members.chat_id AND x.id <= members.last_read_id
             AND x.owner_id != members.user_id)""",
)

_CHAT_COLUMNS = "c.id, c.name, c.owner_id, c.created_at, c.kind"

# The marker moves forward only, never past the chat's newest message; others_read
# moves with it in the same statement: to the others' total when the marker reaches
# the newest message (two count rows), else by the others' messages between the old
# marker and the new one (a range of the chat's index).
_MARK_READ = """
    UPDATE members SET
        last_read_id = max(last_read_id, min(:to, c.newest)),
        others_read = CASE
            WHEN min(:to, c.newest) <= last_read_id THEN others_read
            WHEN :to >= c.newest THEN c.total - c.own
            ELSE others_read + (SELECT count(*) FROM messages x
                                WHERE x.chat_id = :chat AND x.id > members.last_read_id
                                  AND x.id <= :to AND x.owner_id != :user)
        END
    FROM (SELECT
              (SELECT coalesce(max(id), 0) FROM messages WHERE chat_id = :chat) AS newest,
              coalesce((SELECT messages FROM chat_counts WHERE chat_id = :chat), 0) AS total,
              coalesce((SELECT messages FROM sender_counts
                        WHERE chat_id = :chat AND owner_id = :user), 0) AS own) AS c
    WHERE chat_id = :chat AND user_id = :user
    RETURNING last_read_id"""


async def _last_owner(conn: aiosqlite.Connection, chat_id: int, user_id: int) -> bool:
    """True when the user is the chat's only owner."""
    rows = await conn.execute_fetchall(
        """SELECT count(*), sum(user_id = ?) FROM members WHERE chat_id = ? AND role = 'owner'""",
        (user_id, chat_id),
    )
    return rows[0][0] == 1 and rows[0][1] == 1


async def _build_search_index(conn: aiosqlite.Connection) -> None:
    """Index the messages a database held before it had a search index (once).

    The settings row is written in the transaction that builds the index: a
    start cut short before its commit builds it again on the next.
    """
    built = await conn.execute_fetchall(
        """SELECT 1 FROM settings WHERE key = 'search_index'"""
    )
    if not built:
        log.info("building the search index of the stored messages (once; about 15 s of "
                 "CPU per million messages)")
        await conn.execute("""INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')""")
        await conn.execute(
            """INSERT INTO settings (key, value) VALUES ('search_index', 'built')"""
        )
