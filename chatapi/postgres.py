"""The PostgreSQL backend: every statement of ChatAPI in PostgreSQL's dialect.

A pool serves the queries; the bus between processes gets its own connection
for LISTEN (`listen`), never a pooled one: returning a connection to the pool
runs `UNLISTEN *`. Notifications are doorbells only (ids, never text): the
rows are read from the tables.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from . import db
from .db import (
    REVOKED,
    Change,
    Conflict,
    Database,
    Draft,
    LastOwner,
    NotFound,
    Stored,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 6
LEASE_SECONDS = 10.0  # a process that stops renewing is gone after this long
CONNECT_TIMEOUT = 10.0
QUERY_TIMEOUT = 10.0
# Applying the schema may migrate every message (version 5 computes each one's search
# vector and builds its index: minutes for millions); a process starting meanwhile waits.
MIGRATION_TIMEOUT = 3600.0
IDLE_IN_TRANSACTION = "30s"  # PostgreSQL ends a session left this long inside a transaction
MAX_PAYLOAD = 7900  # NOTIFY payloads must stay below 8000 bytes
CATCH_UP_ROWS = 5000  # rows read per doorbell; more are read by the next round

# What a call raises while the database is away (down, restarting, unreachable).
AWAY = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    # The driver losing track of a connection while the server restarts (a
    # ProtocolError, TargetServerAttributeNotMatched when no attempt left an error).
    asyncpg.exceptions.InternalClientError,
)
# What background work (bus, leases) rides out and retries.
DOWN = (*AWAY, asyncpg.PostgresError, Unavailable)

# Notification kinds: "m:<chat id>,..." new messages in these chats,
# "u:<user id>" tokens revoked, "p:<user id>,..." presence changed,
# "e:<node>:<json>" an event frame for every socket, "t:<node>:<json>" an event
# of a chat or of some users (chatapi.hub.Hub.route).
MESSAGES, TOKENS, PRESENCE, EVENT, ROUTED = "m", "u", "p", "e", "t"
# "k:<token id>" an API token revoked, "y:<node>:<json>" a batch of typing events.
API_TOKENS, TYPING = "k", "y"

_ONLINE = """(EXISTS (SELECT 1 FROM presence p JOIN nodes n ON n.id = p.node_id
                   WHERE p.user_id = users.id AND n.lease_until > now()))::int AS is_online"""
_USER_COLUMNS = f"""id, email, username, password_hash, token_version, {_ONLINE}, created_at,
    EXISTS (SELECT 1 FROM admins a WHERE a.user_id = users.id) AS is_admin"""
_API_TOKEN_COLUMNS = "id, name, created_at, last_used_at"
_MESSAGE_COLUMNS = """m.id, m.chat_id, m.owner_id, u.username, m.text, m.nonce, m.created_at,
    coalesce(m.seq, m.id) AS seq, m.reply_to, m.edited_at, m.deleted_at, m.reactions"""
_RETURNED = """id, chat_id, owner_id, text, nonce, created_at, id AS seq, reply_to,
    edited_at, deleted_at, reactions"""
# One message as the JSON text of the history, built by PostgreSQL: the fields of
# chatapi.db.public_message, the null ones stripped.
_MESSAGE_JSON = """m.id AS id, json_strip_nulls(json_build_object(
    'id', m.id, 'chat_id', m.chat_id, 'owner_id', m.owner_id, 'username', u.username,
    'text', m.text, 'created_at', m.created_at, 'nonce', m.nonce,
    'seq', coalesce(m.seq, m.id), 'reply_to', m.reply_to, 'edited_at', m.edited_at,
    'deleted', CASE WHEN m.deleted_at IS NOT NULL THEN true END,
    'deleted_at', m.deleted_at, 'reactions', m.reactions::json))::text AS json"""
# The chat's highest seq: its newest message, or a later change.
_LAST_SEQ = """greatest(
    (SELECT coalesce(max(id), 0) FROM messages WHERE chat_id = $1),
    (SELECT coalesce(max(seq), 0) FROM messages WHERE chat_id = $1 AND seq > 0))"""
# The terms ($1) as a tsquery: each term's lexemes, made by the same parser and
# folding as the indexed texts, quoted (so no input is tsquery syntax) and ANDed,
# those of the last term as prefixes; NULL (matching nothing) when no term has any.
_SEARCH_QUERY = r"""SELECT nullif(string_agg(
        '''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''''
            || CASE WHEN t.n = cardinality($1::text[]) THEN ':*' ELSE '' END,
        ' & '), '')::tsquery
    FROM unnest($1::text[]) WITH ORDINALITY AS t (term, n),
        unnest(tsvector_to_array(to_tsvector('simple', search_fold(t.term)))) AS lexeme"""
# The chats a user ($4) may read: public ones and those they are a member of.
_READABLE_CHATS = """m.chat_id IN (SELECT id FROM chats WHERE kind = 'public'
                                UNION ALL SELECT chat_id FROM members WHERE user_id = $4)"""
_INSERT_USER = f"""INSERT INTO users (email, username, username_key, password_hash)
                       VALUES ($1, $2, $3, $4)
                       RETURNING {_USER_COLUMNS}"""


def _user_conflict(exc: asyncpg.UniqueViolationError) -> Conflict:
    """The Conflict naming the taken field of a failed user insert."""
    return Conflict("email" if "email" in (exc.constraint_name or "") else "username")


def describe(url: str) -> str:
    """Where a URL points (user@host:port/dbname), without its password."""
    try:
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
        return f"{parts.username}@{where}" if parts.username else where
    except ValueError:
        return "the given URL"


def _without_secret(text: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def schema_sql() -> str:
    """The PostgreSQL schema (schema_postgres.sql)."""
    return resources.files("chatapi").joinpath("schema_postgres.sql").read_text("utf-8")


def _unavailable_when_away(cls: type[T]) -> type[T]:
    """Every query method raises db.Unavailable (not a driver error) while PostgreSQL is away."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or name in ("close", "listen") or not inspect.iscoroutinefunction(method):
            continue
        setattr(cls, name, _guarded(method))
    return cls


def _guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except AWAY as exc:
            raise Unavailable(f"PostgreSQL is unavailable ({type(exc).__name__})") from exc

    return call


@_unavailable_when_away
class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database, shared with other processes."""

    shared = True

    def __init__(self, url: str, pool: asyncpg.Pool, schema: str) -> None:
        self.url = url
        self.pool = pool
        # One notification channel per schema: databases (or test schemas) never mix.
        self.channel = "chatapi" if schema == "public" else f"chatapi_{schema}"[:63]
        self.node_id = 0  # this process's lease, taken with its first socket
        self._lease_lock = asyncio.Lock()

    async def close(self) -> None:
        try:
            if self.node_id:
                await self.pool.execute("""DELETE FROM nodes WHERE id = $1""", self.node_id)
        except DOWN:
            log.warning("could not remove this process's lease (it expires by itself)")
        try:
            await asyncio.wait_for(self.pool.close(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("database connections still busy at close: cut")
            self.pool.terminate()

    async def ping(self) -> None:
        await self.pool.fetchval("""SELECT 1""", timeout=QUERY_TIMEOUT)

    async def get_or_create_secret(self, candidate: str) -> str:
        # Two statements, two snapshots: when another process inserts its secret at
        # the same moment, ours waits for it, and the read then sees the winner.
        await self.pool.execute(
            """INSERT INTO settings (key, value) VALUES ('token_secret', $1)
               ON CONFLICT DO NOTHING""",
            candidate,
        )
        return await self.pool.fetchval("""SELECT value FROM settings WHERE key = 'token_secret'""")

    # Users

    async def create_user(self, email: str, username: str, password_hash: str) -> dict[str, Any]:
        try:
            row = await self.pool.fetchrow(
                _INSERT_USER, email, username, username.casefold(), password_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _user_conflict(exc) from None
        return dict(row)

    async def user_by_email(self, email: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            f"""SELECT {_USER_COLUMNS} FROM users WHERE email = $1""", _text(email)
        )
        return dict(row) if row else None

    async def user_by_id(self, user_id: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(f"""SELECT {_USER_COLUMNS} FROM users WHERE id = $1""", user_id)
        return dict(row) if row else None

    async def list_users(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(f"""SELECT {_USER_COLUMNS} FROM users ORDER BY id""")
        return [dict(row) for row in rows]

    async def token_versions(self, user_ids: Sequence[int]) -> dict[int, int]:
        rows = await self.pool.fetch(
            """SELECT id, token_version FROM users WHERE id = ANY($1::bigint[])""", list(user_ids)
        )
        return {row["id"]: row["token_version"] for row in rows}

    async def revoke_tokens(self, user_id: int) -> None:
        # The notification reaches this user's sockets on every process.
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE users SET token_version = token_version + 1 WHERE id = $1""", user_id
            )
            await self._notify(conn, f"{TOKENS}:{user_id}")

    async def set_password(self, email: str, password_hash: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""UPDATE users SET password_hash = $1, token_version = token_version + 1
                        WHERE email = $2
                        RETURNING {_USER_COLUMNS}""",
                password_hash, _text(email),
            )
            if row is not None:
                # A password reset revokes the API tokens too.
                await conn.execute("""DELETE FROM api_tokens WHERE user_id = $1""", row["id"])
                await self._notify(conn, f"{TOKENS}:{row['id']}")
        if row is None:
            raise NotFound(f"no user with email {email}")
        return dict(row)

    # Presence: leases of processes, and which users each one holds sockets of

    async def register_node(self) -> None:
        """Take a lease for this process (a new one if it lapsed)."""
        self.node_id = await self.pool.fetchval(
            """INSERT INTO nodes (lease_until) VALUES (now() + $1 * interval '1 second')
               RETURNING id""",
            LEASE_SECONDS,
        )

    async def renew_lease(self, sockets: dict[int, int]) -> bool:
        """Extend this process's lease and record its socket count per user; False if the
        lease had lapsed (a new one is taken and its users are recorded again)."""
        renewed = await self.pool.fetchval(
            """UPDATE nodes SET lease_until = now() + $2 * interval '1 second'
               WHERE id = $1 RETURNING id""",
            self.node_id, LEASE_SECONDS,
        )
        if not renewed:
            await self.register_node()
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    """INSERT INTO presence (node_id, user_id)
                       SELECT $1, id FROM users WHERE id = ANY($2::bigint[])
                       ON CONFLICT DO NOTHING""",
                    self.node_id, list(sockets),
                )
                # Others took these users offline with the lapsed lease.
                await self._notify_ids(conn, PRESENCE, list(sockets))
        # Only rows that exist: a socket count never brings a user online.
        await self.pool.execute(
            """UPDATE presence p SET sockets = c.sockets
               FROM unnest($2::bigint[], $3::int[]) AS c (user_id, sockets)
               WHERE p.node_id = $1 AND p.user_id = c.user_id AND p.sockets <> c.sockets""",
            self.node_id, list(sockets), list(sockets.values()),
        )
        return bool(renewed)

    async def sockets_elsewhere(self, user_id: int) -> int:
        """The user's open sockets on the other live processes (as of their last renewal)."""
        return await self.pool.fetchval(
            """SELECT coalesce(sum(p.sockets), 0) FROM presence p JOIN nodes n ON n.id = p.node_id
               WHERE p.user_id = $1 AND p.node_id <> $2 AND n.lease_until > now()""",
            user_id, self.node_id,
        )

    async def reap_nodes(self) -> list[dict[str, Any]]:
        """Remove lapsed leases; the users who thereby went offline everywhere."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """WITH gone AS (
                       DELETE FROM nodes WHERE lease_until < now() AND id <> $1 RETURNING id),
                   left_users AS (
                       SELECT DISTINCT p.user_id FROM presence p JOIN gone ON gone.id = p.node_id)
                   SELECT u.id, u.username FROM users u JOIN left_users l ON l.user_id = u.id
                   WHERE NOT EXISTS (
                       SELECT 1 FROM presence p JOIN nodes n ON n.id = p.node_id
                       WHERE p.user_id = u.id AND n.lease_until > now()
                         AND n.id NOT IN (SELECT id FROM gone))""",
                self.node_id,
            )
            await self._notify_ids(conn, PRESENCE, [row["id"] for row in rows])
        return [dict(row) for row in rows]

    async def set_online(self, user_id: int, online: bool) -> None:
        if online and not self.node_id:
            async with self._lease_lock:
                if not self.node_id:
                    await self.register_node()
        async with self.pool.acquire() as conn, conn.transaction():
            if online:
                await conn.execute(
                    """INSERT INTO presence (node_id, user_id) VALUES ($1, $2)
                       ON CONFLICT DO NOTHING""",
                    self.node_id, user_id,
                )
            else:
                await conn.execute(
                    """DELETE FROM presence WHERE node_id = $1 AND user_id = $2""",
                    self.node_id, user_id,
                )
            await self._notify(conn, f"{PRESENCE}:{user_id}")

    async def set_everybody_offline(self) -> None:
        # Other processes' users stay online: only this process's sockets and
        # lapsed leases are forgotten.
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """DELETE FROM presence WHERE node_id = $1 RETURNING user_id""", self.node_id
            )
            await self._notify_ids(conn, PRESENCE, [row[0] for row in rows])
        await self.reap_nodes()

    async def presence_of(self, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        """{user_id, username, is_online} of these users, as every process sees them."""
        rows = await self.pool.fetch(
            f"""SELECT id AS user_id, username, {_ONLINE} FROM users
                WHERE id = ANY($1::bigint[]) ORDER BY id""",
            list(user_ids),
        )
        return [{**dict(row), "is_online": bool(row["is_online"])} for row in rows]

    # Login attempts, shared by every process: counted before the password is checked

    async def reserve_login_attempt(
        self, limits: dict[str, int], window: float
    ) -> tuple[list[float], list[int]]:
        """Count an attempt against each key unless one is at its limit within `window` seconds.

        Returns (seconds until each key at its limit is not, []) when refused, else
        ([], the ids of the rows counted). Check and count are one transaction, with
        the keys locked: attempts on several processes at once meet the same limit.
        """
        keys = sorted(_text(key) for key in limits)
        limit_of = {_text(key): limit for key, limit in limits.items()}
        async with self.pool.acquire() as conn, conn.transaction():
            for key in keys:  # in order: two attempts never deadlock
                await conn.execute("""SELECT pg_advisory_xact_lock(hashtext('login ' || $1))""", key)
            await conn.execute(
                """DELETE FROM login_failures WHERE key = ANY($1::text[])
                   AND failed_at <= now() - $2 * interval '1 second'""",
                keys, window,
            )
            rows = await conn.fetch(
                """SELECT key, count(*) AS attempts,
                          extract(epoch FROM min(failed_at) + $2 * interval '1 second' - now())
                              AS wait
                   FROM login_failures WHERE key = ANY($1::text[]) GROUP BY key""",
                keys, window,
            )
            waits = [float(row["wait"]) for row in rows if row["attempts"] >= limit_of[row["key"]]]
            if waits:
                return waits, []
            ids = await conn.fetch(
                """INSERT INTO login_failures (key) SELECT unnest($1::text[]) RETURNING id""", keys
            )
        return [], [row["id"] for row in ids]

    async def release_login_attempt(self, ids: Sequence[int]) -> None:
        """Take back the rows of one attempt (it succeeded), and no other."""
        await self.pool.execute("""DELETE FROM login_failures WHERE id = ANY($1::bigint[])""", list(ids))

    async def prune_login_failures(self, window: float) -> None:
        """Forget failures older than the window, whatever their key."""
        await self.pool.execute(
            """DELETE FROM login_failures WHERE failed_at <= now() - $1 * interval '1 second'""",
            window,
        )

    # Chats

    async def create_chat(self, name: str, owner_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            """INSERT INTO chats (name, owner_id) VALUES ($1, $2)
               RETURNING id, name, owner_id, created_at""",
            name, owner_id,
        )
        return dict(row)

    async def list_chats(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT id, name, owner_id, created_at, kind FROM chats ORDER BY id"""
        )
        return [dict(row) for row in rows]

    async def chat_exists(self, chat_id: int) -> bool:
        return bool(await self.pool.fetchval("""SELECT 1 FROM chats WHERE id = $1""", chat_id))

    # Messages

    async def last_seq(self, chat_id: int) -> int:
        return await self.pool.fetchval(f"""SELECT {_LAST_SEQ}""", chat_id)

    async def newest_seq(self, chat_id: int) -> int | None:
        row = await self.pool.fetchrow(f"""SELECT {_LAST_SEQ} FROM chats WHERE id = $1""", chat_id)
        return row[0] if row else None

    async def changes_after(self, positions: dict[int, int], limit: int) -> list[dict[str, Any]]:
        # Each chat's rows are read on their own, from its position on: new messages
        # from messages_by_chat, changed ones from the partial index on (chat_id, seq).
        # A join of all chats at once got a merge join that read every message of those
        # chats (366,000 rows for 3,000 new ones), and `chat_id = c AND id > a` the
        # primary key from `a` on, every chat's messages since; the row comparison (with
        # `chat_id <= c`) leaves the planner only the index range.
        rows = await self.pool.fetch(
            f"""SELECT {_MESSAGE_COLUMNS}
                FROM unnest($1::bigint[], $2::bigint[]) AS p (chat_id, after)
                CROSS JOIN LATERAL (
                    (SELECT * FROM messages x
                     WHERE (x.chat_id, x.id) > (p.chat_id, p.after) AND x.chat_id <= p.chat_id
                       AND x.seq IS NULL
                     ORDER BY x.chat_id, x.id LIMIT $3)
                    UNION ALL
                    (SELECT * FROM messages x
                     WHERE (x.chat_id, x.seq) > (p.chat_id, p.after) AND x.chat_id <= p.chat_id
                       AND x.seq IS NOT NULL
                     ORDER BY x.chat_id, x.seq LIMIT $3)) AS m
                JOIN users u ON u.id = m.owner_id
                ORDER BY m.chat_id, coalesce(m.seq, m.id) LIMIT $3""",
            list(positions), list(positions.values()), limit,
        )
        return [dict(row) for row in rows]

    async def message_by_id(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.owner_id
                WHERE m.id = $1 AND m.chat_id = $2""",
            message_id, chat_id,
        )
        return dict(row) if row else None

    async def apply_changes(self, changes: Sequence[Change]) -> list[Stored]:
        async with self.pool.acquire() as conn, conn.transaction():
            # As insert_messages: the chats locked in ascending order, seq values
            # taken under the lock commit in order.
            await conn.execute(
                """SELECT id FROM chats WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE""",
                sorted({change.chat_id for change in changes}),
            )
            results = [await _change(conn, change) for change in changes]
            touched = sorted({s.message["chat_id"] for s in results if s.is_new and s.message})
            await self._notify_ids(conn, MESSAGES, touched)
        return results

    async def message_page(
        self, chat_id: int, as_json: bool, after: int, before: int, limit: int, newest: bool
    ) -> list[Any]:
        columns = _MESSAGE_JSON if as_json else _MESSAGE_COLUMNS
        if newest:
            rows = await self.pool.fetch(
                f"""SELECT * FROM (
                        SELECT {columns} FROM messages m JOIN users u ON u.id = m.owner_id
                        WHERE m.chat_id = $1 AND m.id < $2
                        ORDER BY m.id DESC LIMIT $3) AS page
                    ORDER BY id""",
                chat_id, before, limit,
            )
        else:
            rows = await self.pool.fetch(
                f"""SELECT {columns} FROM messages m JOIN users u ON u.id = m.owner_id
                    WHERE m.chat_id = $1 AND m.id > $2 AND m.id < $3
                    ORDER BY m.id LIMIT $4""",
                chat_id, after, before, limit,
            )
        return [(row[0], row[1]) for row in rows] if as_json else [dict(row) for row in rows]

    async def search_messages(
        self, user_id: int, terms: Sequence[str], chat_id: int | None, before: int, limit: int
    ) -> list[str]:
        readable = "m.chat_id = $4" if chat_id is not None else _READABLE_CHATS
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            # The statement below is planned for these words, never by a cached generic
            # plan: newest first along the primary key suits a frequent word, the GIN
            # index a rare one, and the wrong choice costs a scan of every message.
            query = await conn.fetchval(
                f"""SELECT ({_SEARCH_QUERY})
                    FROM set_config('plan_cache_mode', 'force_custom_plan', true)""",
                list(terms),
            )
            if query is None:
                return []
            rows = await conn.fetch(
                f"""SELECT {_MESSAGE_JSON} FROM messages m JOIN users u ON u.id = m.owner_id
                    WHERE m.search @@ $1::tsquery AND m.id < $2 AND m.deleted_at IS NULL
                      AND {readable}
                    ORDER BY m.id DESC LIMIT $3""",
                query, before, limit, user_id if chat_id is None else chat_id,
            )
        return [row[1] for row in rows]

    async def insert_messages(self, drafts: Sequence[Draft]) -> list[Stored]:
        async with self.pool.acquire() as conn, conn.transaction():
            # Lock the batch's chats in ascending id order (two batches never
            # deadlock); ids taken while holding a chat's lock commit in order.
            chat_ids = sorted({draft.chat_id for draft in drafts})
            existing = {
                row["id"]
                for row in await conn.fetch(
                    """SELECT id FROM chats WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE""",
                    chat_ids,
                )
            }
            results = await _insert_batch(conn, drafts, existing)
            touched = sorted({s.message["chat_id"] for s in results if s.is_new and s.message})
            await self._notify_ids(conn, MESSAGES, touched)
        return results

    # Test support

    async def insert_seed(
        self,
        users: Sequence[tuple[str, str, str]],
        chats: Sequence[tuple[str, int]],
        messages: Sequence[tuple[int, int, str, str | None, str | None]],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        async with self.pool.acquire() as conn, conn.transaction():
            stored_users = []
            for email, username, password_hash in users:
                try:
                    # A savepoint: a conflict is raised as Conflict, the outer transaction rolls back.
                    async with conn.transaction():
                        row = await conn.fetchrow(
                            _INSERT_USER, email, username, username.casefold(), password_hash,
                        )
                except asyncpg.UniqueViolationError as exc:
                    raise _user_conflict(exc) from None
                stored_users.append(dict(row))
            stored_chats = []
            for name, owner in chats:
                row = await conn.fetchrow(
                    """INSERT INTO chats (name, owner_id) VALUES ($1, $2)
                       RETURNING id, name, owner_id, created_at, kind""",
                    name, stored_users[owner]["id"],
                )
                stored_chats.append(dict(row))
                await conn.execute(
                    """INSERT INTO members (chat_id, user_id, role) VALUES ($1, $2, 'owner')""",
                    row["id"], stored_users[owner]["id"],
                )
            stored_messages = []
            for chat, owner, text, nonce, created_at in messages:
                try:
                    row = await conn.fetchrow(
                        f"""INSERT INTO messages (chat_id, owner_id, text, nonce, created_at)
                           VALUES ($1, $2, $3, $4, COALESCE($5, to_char(
                               now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))
                           RETURNING {_RETURNED}""",
                        stored_chats[chat]["id"], stored_users[owner]["id"], text, nonce,
                        created_at,
                    )
                except asyncpg.UniqueViolationError:
                    raise Conflict("nonce") from None
                stored_messages.append({**dict(row), "username": stored_users[owner]["username"]})
        return stored_users, stored_chats, stored_messages

    # The bus between processes

    async def _notify(self, conn: asyncpg.Connection, payload: str) -> None:
        await conn.execute("""SELECT pg_notify($1, $2)""", self.channel, payload)

    async def _notify_ids(self, conn: asyncpg.Connection, kind: str, ids: Sequence[int]) -> None:
        """`kind:id,id,...` notifications, as many as the payload limit needs."""
        chunk: list[str] = []
        size = len(kind) + 1
        for text in map(str, ids):
            if chunk and size + len(text) + 1 >= MAX_PAYLOAD:
                await self._notify(conn, f"{kind}:" + ",".join(chunk))
                chunk, size = [], len(kind) + 1
            chunk.append(text)
            size += len(text) + 1
        if chunk:
            await self._notify(conn, f"{kind}:" + ",".join(chunk))

    async def notify(self, payload: str) -> None:
        """Send a notification on this database's channel (delivered after commit)."""
        await self.pool.execute("""SELECT pg_notify($1, $2)""", self.channel, payload)

    async def listen(
        self, on_payload: Callable[[str], None], on_lost: Callable[[], None]
    ) -> asyncpg.Connection:
        """A dedicated connection (not pooled) that LISTENs on the channel."""
        conn = await asyncpg.connect(
            self.url,
            timeout=CONNECT_TIMEOUT,
            # The process id in its name: an operator (or a test) can tell listeners apart.
            server_settings={"application_name": f"chatapi-listener-{os.getpid()}"},
        )
        try:
            await conn.add_listener(self.channel, lambda *args: on_payload(args[-1]))
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(lambda _conn: on_lost())
        return conn

    def pool_in_use(self) -> int:
        """Connections of the pool in use now."""
        return self.pool.get_size() - self.pool.get_idle_size()

    # Teams: admins, chat kinds, members, read markers, invites

    async def set_admin(self, email: str, admin: bool) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval("""SELECT id FROM users WHERE email = $1""", _text(email))
            if user_id is None:
                raise NotFound(f"no user with email {email}")
            if admin:
                await conn.execute(
                    """INSERT INTO admins (user_id) VALUES ($1) ON CONFLICT DO NOTHING""", user_id
                )
            else:
                await conn.execute("""DELETE FROM admins WHERE user_id = $1""", user_id)
            user = await conn.fetchrow(f"""SELECT {_USER_COLUMNS} FROM users WHERE id = $1""", user_id)
        return dict(user)

    async def create_team_chat(
        self, name: str, kind: str, owner_id: int, member_ids: Sequence[int]
    ) -> dict[str, Any]:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                chat = await conn.fetchrow(
                    f"""INSERT INTO chats (name, owner_id, kind) VALUES ($1, $2, $3)
                        RETURNING {_CHAT_COLUMNS}""",
                    name, owner_id, kind,
                )
                await conn.execute(
                    """INSERT INTO members (chat_id, user_id, role)
                       SELECT $1, u, CASE WHEN u = $2 THEN 'owner' ELSE 'member' END
                       FROM unnest($3::bigint[]) AS u
                       ON CONFLICT DO NOTHING""",
                    chat["id"], owner_id, [owner_id, *member_ids],
                )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("a member id names no user") from None
        return dict(chat)

    async def direct_chat(
        self, user_id: int, other_id: int, name: str
    ) -> tuple[dict[str, Any], bool]:
        low, high = sorted((user_id, other_id))
        async with self.pool.acquire() as conn, conn.transaction():
            # Two processes creating the same pair at once: the second waits here,
            # then finds the first one's chat (each statement sees the latest commits).
            await conn.execute(
                """SELECT pg_advisory_xact_lock(hashtext('chatapi direct ' || current_schema()),
                                                hashtext($1::text))""",
                f"{low}:{high}",
            )
            row = await conn.fetchrow(
                """SELECT c.id, c.name, c.owner_id, c.created_at, c.kind
                   FROM direct_pairs d JOIN chats c ON c.id = d.chat_id
                   WHERE d.low_id = $1 AND d.high_id = $2""",
                low, high,
            )
            if row is not None:
                return dict(row), False
            if not await conn.fetchval("""SELECT 1 FROM users WHERE id = $1""", other_id):
                raise NotFound(f"no user with id {other_id}")
            chat = await conn.fetchrow(
                f"""INSERT INTO chats (name, owner_id, kind) VALUES ($1, $2, 'direct')
                    RETURNING {_CHAT_COLUMNS}""",
                name, user_id,
            )
            await conn.execute(
                """INSERT INTO direct_pairs (low_id, high_id, chat_id) VALUES ($1, $2, $3)""",
                low, high, chat["id"],
            )
            await conn.execute(
                """INSERT INTO members (chat_id, user_id, role)
                   VALUES ($1, $2, 'owner'), ($1, $3, 'owner')""",
                chat["id"], low, high,
            )
        return dict(chat), True

    async def chat_access(self, chat_id: int, user_id: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT c.id, c.name, c.owner_id, c.created_at, c.kind, m.role FROM chats c
               LEFT JOIN members m ON m.chat_id = c.id AND m.user_id = $2
               WHERE c.id = $1""",
            chat_id, user_id,
        )
        return dict(row) if row else None

    async def chats_of(self, user_id: int) -> list[dict[str, Any]]:
        # One row of each count table per chat, kept by the storing transaction.
        rows = await self.pool.fetch(
            """SELECT c.id, c.name, c.owner_id, c.created_at, c.kind, m.role, m.last_read_id,
                      CASE WHEN m.user_id IS NULL THEN NULL
                           ELSE coalesce(n.messages, 0) - coalesce(s.messages, 0) - m.others_read
                      END AS unread,
                      o.id AS other_id, o.username AS other_username
               FROM chats c
               LEFT JOIN members m ON m.chat_id = c.id AND m.user_id = $1
               LEFT JOIN chat_counts n ON n.chat_id = c.id AND m.user_id IS NOT NULL
               LEFT JOIN sender_counts s
                   ON s.chat_id = c.id AND s.owner_id = $1 AND m.user_id IS NOT NULL
               LEFT JOIN direct_pairs d ON d.chat_id = c.id
               LEFT JOIN users o
                   ON o.id = CASE WHEN d.low_id = $1 THEN d.high_id ELSE d.low_id END
               WHERE c.kind = 'public' OR m.user_id IS NOT NULL
               ORDER BY c.id""",
            user_id,
        )
        return [dict(row) for row in rows]

    async def members_of(self, chat_id: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT m.user_id, u.username, m.role, m.last_read_id
               FROM members m JOIN users u ON u.id = m.user_id
               WHERE m.chat_id = $1 ORDER BY m.user_id""",
            chat_id,
        )
        return [dict(row) for row in rows]

    async def add_member(self, chat_id: int, user_id: int, role: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn, conn.transaction():
            username = await conn.fetchval("""SELECT username FROM users WHERE id = $1""", user_id)
            if username is None:
                raise NotFound(f"no user with id {user_id}")
            added = await conn.fetchval(
                """INSERT INTO members (chat_id, user_id, role) VALUES ($1, $2, $3)
                   ON CONFLICT DO NOTHING RETURNING role""",
                chat_id, user_id, role,
            )
        if added is None:
            return None
        return {"user_id": user_id, "username": username, "role": role}

    async def remove_member(self, chat_id: int, user_id: int) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            if await _last_owner(conn, chat_id, user_id):
                raise LastOwner()
            status = await conn.execute(
                """DELETE FROM members WHERE chat_id = $1 AND user_id = $2""", chat_id, user_id
            )
        return status != "DELETE 0"

    async def set_role(self, chat_id: int, user_id: int, role: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            if role != "owner" and await _last_owner(conn, chat_id, user_id):
                raise LastOwner()
            status = await conn.execute(
                """UPDATE members SET role = $3 WHERE chat_id = $1 AND user_id = $2""",
                chat_id, user_id, role,
            )
        return status != "UPDATE 0"

    async def mark_read(self, chat_id: int, user_id: int, message_id: int) -> int:
        # The marker moves forward only, never past the chat's newest message;
        # others_read moves with it in this statement: to the others' total when the
        # marker reaches the newest message (two count rows), else by the others'
        # messages between the old marker and the new one (a range of the chat's index).
        # One snapshot reads the newest id and the counts: the transaction that stored
        # a message also counted it, and a chat's ids commit in order (its row lock).
        marker = await self.pool.fetchval(
            """UPDATE members SET
                   last_read_id = greatest(last_read_id, least($3::bigint, c.newest)),
                   others_read = CASE
                       WHEN least($3::bigint, c.newest) <= last_read_id THEN others_read
                       WHEN $3::bigint >= c.newest THEN c.total - c.own
                       ELSE others_read + (SELECT count(*) FROM messages x
                                           WHERE x.chat_id = $1 AND x.id > members.last_read_id
                                             AND x.id <= $3::bigint AND x.owner_id <> $2)
                   END
               FROM (SELECT
                         (SELECT coalesce(max(id), 0) FROM messages WHERE chat_id = $1) AS newest,
                         coalesce((SELECT messages FROM chat_counts WHERE chat_id = $1), 0)
                             AS total,
                         coalesce((SELECT messages FROM sender_counts
                                   WHERE chat_id = $1 AND owner_id = $2), 0) AS own) AS c
               WHERE chat_id = $1 AND user_id = $2
               RETURNING last_read_id""",
            chat_id, user_id, message_id,
        )
        if marker is None:
            raise NotFound(f"user {user_id} is not a member of chat {chat_id}")
        return marker

    async def create_invite(
        self, code: str, created_by: int, expires_at: str, uses: int
    ) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            """INSERT INTO invites (code, created_by, expires_at, uses_left)
               VALUES ($1, $2, $3, $4) RETURNING code, expires_at, uses_left, created_at""",
            code, created_by, expires_at, uses,
        )
        return dict(row)

    async def invite_usable(self, code: str, now: str) -> bool:
        return bool(await self.pool.fetchval(
            """SELECT 1 FROM invites WHERE code = $1 AND uses_left > 0 AND expires_at > $2""",
            _text(code), now,
        ))

    async def create_user_with_invite(
        self, email: str, username: str, password_hash: str, code: str, now: str
    ) -> dict[str, Any]:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                spent = await conn.fetchval(
                    """UPDATE invites SET uses_left = uses_left - 1
                       WHERE code = $1 AND uses_left > 0 AND expires_at > $2 RETURNING code""",
                    _text(code), now,
                )
                if spent is None:
                    raise NotFound("invite")
                row = await conn.fetchrow(
                    _INSERT_USER, email, username, username.casefold(), password_hash,
                )
        except asyncpg.UniqueViolationError as exc:
            raise _user_conflict(exc) from None
        return dict(row)

    # API tokens

    async def create_api_token(
        self, user_id: int, name: str, token_hash: str, cap: int
    ) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn, conn.transaction():
            # The user's row locked: two creations at once cannot both pass the cap.
            await conn.execute("""SELECT 1 FROM users WHERE id = $1 FOR UPDATE""", user_id)
            row = await conn.fetchrow(
                f"""INSERT INTO api_tokens (user_id, name, hash)
                        SELECT $1, $2, $3
                        WHERE (SELECT count(*) FROM api_tokens WHERE user_id = $1) < $4
                        RETURNING {_API_TOKEN_COLUMNS}""",
                user_id, _text(name), token_hash, cap,
            )
        return dict(row) if row else None

    async def api_tokens_of(self, user_id: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"""SELECT {_API_TOKEN_COLUMNS} FROM api_tokens WHERE user_id = $1 ORDER BY id""",
            user_id,
        )
        return [dict(row) for row in rows]

    async def delete_api_token(self, user_id: int, token_id: int) -> bool:
        # The notification closes the token's sockets on every process.
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                """DELETE FROM api_tokens WHERE id = $1 AND user_id = $2 RETURNING id""",
                token_id, user_id,
            )
            if deleted is not None:
                await self._notify(conn, f"{API_TOKENS}:{token_id}")
        return deleted is not None

    async def user_by_api_token(self, token_hash: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            f"""SELECT {_USER_COLUMNS}, t.api_token_id, t.api_token_used_at
                    FROM (SELECT id AS api_token_id, user_id AS token_user,
                                 last_used_at AS api_token_used_at
                              FROM api_tokens WHERE hash = $1) t
                    JOIN users ON users.id = t.token_user""",
            token_hash,
        )
        return dict(row) if row else None

    async def touch_api_token(self, token_id: int) -> None:
        await self.pool.execute(
            """UPDATE api_tokens
                   SET last_used_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                   WHERE id = $1""",
            token_id,
        )

    async def live_api_tokens(self, token_ids: Sequence[int]) -> set[int]:
        rows = await self.pool.fetch(
            """SELECT id FROM api_tokens WHERE id = ANY($1::bigint[])""", list(token_ids)
        )
        return {row["id"] for row in rows}


def event_payload(origin: str, frame: dict[str, Any]) -> str:
    """The notification carrying an event frame (from the process called `origin`)."""
    return f"{EVENT}:{origin}:" + json.dumps(frame, ensure_ascii=False)


def routed_payload(origin: str, event: dict[str, Any]) -> str:
    """The notification carrying a routed event (from the process called `origin`)."""
    return f"{ROUTED}:{origin}:" + json.dumps(event, ensure_ascii=False)


def typing_payloads(origin: str, events: Sequence[dict[str, Any]]) -> list[str]:
    """The notifications carrying a batch of typing events: `y:<origin>:` and a JSON
    list of [chat id, user id, username], split to stay below the payload limit."""
    head = f"{TYPING}:{origin}:"
    payloads: list[str] = []
    chunk: list[str] = []
    size = len(head) + 2
    for event in events:
        item = json.dumps([event["chat_id"], event["user_id"], event["username"]],
                          ensure_ascii=False)
        length = len(item.encode()) + 1
        if chunk and size + length >= MAX_PAYLOAD:
            payloads.append(head + "[" + ",".join(chunk) + "]")
            chunk, size = [], len(head) + 2
        chunk.append(item)
        size += length
    if chunk:
        payloads.append(head + "[" + ",".join(chunk) + "]")
    return payloads


def _text(value: str) -> str:
    # PostgreSQL text cannot hold U+0000: such a value can match nothing.
    return value.replace("\x00", "\ufffd")


def _revoked(draft: Draft, versions: dict[int, int], live: set[int]) -> bool:
    """Whether the token the draft was sent with was revoked (read in the batch)."""
    if draft.token_version is not None:
        return versions.get(draft.owner_id) != draft.token_version
    return draft.api_token_id is not None and draft.api_token_id not in live


async def _insert_batch(
    conn: asyncpg.Connection, drafts: Sequence[Draft], chats: set[int]
) -> list[Stored]:
    """Insert the drafts of existing chats in one statement, ids taken in draft order."""
    # The token versions are read inside the batch's transaction under a row lock
    # (FOR SHARE): a revocation committed before it (logout answered) stops the
    # user's drafts, and a later one waits for this batch to commit, so nothing of
    # an old token is committed after the revocation has answered.
    checked = sorted(
        {d.owner_id for d in drafts if d.token_version is not None and d.chat_id in chats}
    )
    versions: dict[int, int] = {}
    if checked:
        versions = {
            row["id"]: row["token_version"]
            for row in await conn.fetch(
                """SELECT id, token_version FROM users WHERE id = ANY($1::bigint[])
                   ORDER BY id FOR SHARE""",
                checked,
            )
        }
    # API tokens likewise: revoking one (a DELETE) waits for the batch.
    tokens = sorted(
        {d.api_token_id for d in drafts if d.api_token_id is not None and d.chat_id in chats}
    )
    live: set[int] = set()
    if tokens:
        live = {
            row["id"]
            for row in await conn.fetch(
                """SELECT id FROM api_tokens WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE""",
                tokens,
            )
        }
    errors: list[str | None] = []
    for draft in drafts:
        if draft.chat_id not in chats:
            errors.append(f"chat {draft.chat_id} does not exist")
        elif _revoked(draft, versions, live):
            errors.append(REVOKED)
        else:
            errors.append(None)
    valid = [n for n, error in enumerate(errors) if error is None]
    rows = await conn.fetch(
        f"""INSERT INTO messages (chat_id, owner_id, text, nonce, reply_to)
            SELECT chat_id, owner_id, text, nonce, reply_to
            FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
                 WITH ORDINALITY AS d (chat_id, owner_id, text, nonce, reply_to, n)
            ORDER BY n
            ON CONFLICT (owner_id, nonce) WHERE nonce IS NOT NULL DO NOTHING
            RETURNING {_RETURNED}""",
        [drafts[n].chat_id for n in valid], [drafts[n].owner_id for n in valid],
        [drafts[n].text for n in valid], [drafts[n].nonce for n in valid],
        [drafts[n].reply_to for n in valid],
    )
    # Ids grow in draft order; a draft without a nonce is always inserted, so the
    # rows without one pair with those drafts in order; the others go by nonce.
    rows = sorted(rows, key=lambda row: row["id"])
    plain = iter(row for row in rows if row["nonce"] is None)
    by_nonce = {(row["owner_id"], row["nonce"]): row for row in rows if row["nonce"] is not None}
    results: list[Stored | None] = [None] * len(drafts)
    repeated: list[int] = []
    for n, draft in enumerate(drafts):
        error = errors[n]
        if error is not None:
            results[n] = Stored(None, error=error)
            continue
        row = next(plain) if draft.nonce is None else by_nonce.pop((draft.owner_id, draft.nonce), None)
        if row is None:
            repeated.append(n)  # the nonce was used before (or earlier in this batch)
        else:
            results[n] = Stored({**dict(row), "username": draft.username}, is_new=True)
    if repeated:
        # A statement of its own sees the originals, committed or from this batch.
        originals = {
            (row["owner_id"], row["nonce"]): dict(row)
            for row in await conn.fetch(
                f"""SELECT {_MESSAGE_COLUMNS}
                    FROM unnest($1::bigint[], $2::text[]) AS r (owner_id, nonce)
                    JOIN messages m ON m.owner_id = r.owner_id AND m.nonce = r.nonce
                    JOIN users u ON u.id = m.owner_id""",
                [drafts[n].owner_id for n in repeated], [drafts[n].nonce for n in repeated],
            )
        }
        for n in repeated:
            results[n] = Stored(originals[(drafts[n].owner_id, drafts[n].nonce)])
    return results  # type: ignore[return-value]


_NOW = """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
_NEXT_SEQ = """nextval(pg_get_serial_sequence('messages', 'id'))"""


async def _change(conn: asyncpg.Connection, change: Change) -> Stored:
    """Apply one change (its chat locked by the caller): the message and whether it
    changed, or why it is refused."""
    row = await conn.fetchrow(
        """SELECT m.owner_id, m.deleted_at, u.token_version FROM messages m, users u
           WHERE m.id = $1 AND m.chat_id = $2 AND u.id = $3 FOR SHARE OF u""",
        change.message_id, change.chat_id, change.user_id,
    )
    if row is None:
        return Stored(None, error=db.NO_MESSAGE)
    if change.token_version is not None and row["token_version"] != change.token_version:
        return Stored(None, error=REVOKED)
    if change.api_token_id is not None and not await conn.fetchval(
        """SELECT 1 FROM api_tokens WHERE id = $1 AND user_id = $2 FOR SHARE""",
        change.api_token_id, change.user_id,
    ):
        return Stored(None, error=REVOKED)
    error = await _change_one(conn, change, row["owner_id"] == change.user_id, row["deleted_at"])
    if error not in (None, False):
        return Stored(None, error=error)
    message = await conn.fetchrow(
        f"""SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.owner_id
            WHERE m.id = $1""",
        change.message_id,
    )
    return Stored(dict(message), is_new=error is None)


async def _change_one(
    conn: asyncpg.Connection, change: Change, mine: bool, deleted_at: str | None
) -> str | bool | None:
    """None when the change changed the message, False when there was nothing to change,
    or why it is refused."""
    message_id = change.message_id
    if change.kind == db.EDIT:
        if deleted_at is not None:
            return db.GONE
        if not mine:
            return db.FORBIDDEN
        await conn.execute(
            f"""UPDATE messages SET text = $2, edited_at = {_NOW}, seq = {_NEXT_SEQ}
                WHERE id = $1""",
            message_id, change.text,
        )
    elif change.kind == db.DELETE:
        if not (mine or change.moderator):
            return db.FORBIDDEN
        if deleted_at is not None:
            return False
        await conn.execute("""DELETE FROM reactions WHERE message_id = $1""", message_id)
        await conn.execute(
            f"""UPDATE messages SET text = '', reactions = NULL, deleted_at = {_NOW},
                    seq = {_NEXT_SEQ}
                WHERE id = $1""",
            message_id,
        )
    else:
        if change.kind == db.REACT:
            if deleted_at is not None:
                return db.GONE
            count, present = await conn.fetchrow(
                """SELECT count(*), count(*) FILTER (WHERE emoji = $3) FROM reactions
                   WHERE message_id = $1 AND user_id = $2""",
                message_id, change.user_id, change.emoji,
            )
            if present:
                return False
            if count >= db.MAX_REACTIONS:
                return db.TOO_MANY
            await conn.execute(
                """INSERT INTO reactions (message_id, user_id, emoji) VALUES ($1, $2, $3)""",
                message_id, change.user_id, change.emoji,
            )
        elif await conn.execute(
            """DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3""",
            message_id, change.user_id, change.emoji,
        ) == "DELETE 0":
            return False
        await conn.execute(
            f"""UPDATE messages SET seq = {_NEXT_SEQ}, reactions = (
                    SELECT json_agg(json_build_object('emoji', emoji, 'user_ids', ids)
                                    ORDER BY emoji)::text
                    FROM (SELECT emoji, array_agg(user_id ORDER BY user_id) AS ids
                          FROM reactions WHERE message_id = $1 GROUP BY emoji) AS r)
                WHERE id = $1""",
            message_id,
        )
    return None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back to the pool as it is: it holds no session state
    to undo (no SET, no LISTEN: `listen` has a connection of its own; advisory locks
    are transaction-scoped; cursors live in transactions), and asyncpg's default reset
    (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) is one more round
    trip per pool use: a quarter of the event loop's busy time at 50 messages/s (an
    open transaction is still rolled back by asyncpg before this is called)."""


async def open_database(url: str, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
    """Connect a pool and apply the schema under an advisory lock."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=QUERY_TIMEOUT,
            reset=_keep_session,
            server_settings={
                "application_name": "chatapi",
                # A process stalled inside a transaction (frozen, or its loop gone)
                # would hold its row locks, a chat's included, for every process.
                "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION,
            },
        )
    except (ValueError, *DOWN) as exc:
        reason = _without_secret(str(exc) or type(exc).__name__, url)
        raise Unavailable(f"cannot connect to PostgreSQL at {describe(url)}: {reason}") from None
    try:
        schema = await _apply_schema(pool)
        database = PostgresDatabase(url, pool, schema)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        await pool.close()
        raise Unavailable(f"PostgreSQL at {describe(url)} refused the schema: {exc}") from None
    except BaseException:
        await pool.close()
        raise
    return database


async def _apply_schema(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn, conn.transaction():
        # Two processes starting at once on an empty database would race to
        # create the same tables: one waits here for the other.
        await conn.execute(
            """SELECT pg_advisory_xact_lock(hashtext('chatapi schema ' || current_schema()))""",
            timeout=MIGRATION_TIMEOUT,
        )
        if await conn.fetchval("""SELECT to_regclass('settings') IS NOT NULL"""):
            version = await conn.fetchval(
                """SELECT value::int FROM settings WHERE key = 'schema_version'"""
            )
            if version is not None and version > SCHEMA_VERSION:
                raise Unavailable(
                    f"database schema version {version} is newer than this server's {SCHEMA_VERSION}"
                )
        await conn.execute(schema_sql(), timeout=MIGRATION_TIMEOUT)
        return await conn.fetchval("""SELECT current_schema()""")


# Teams

_CHAT_COLUMNS = "id, name, owner_id, created_at, kind"


async def _last_owner(conn: asyncpg.Connection, chat_id: int, user_id: int) -> bool:
    """True when the user is the chat's only owner (the chat's owner rows locked meanwhile)."""
    owners = await conn.fetch(
        """SELECT user_id FROM members WHERE chat_id = $1 AND role = 'owner' FOR UPDATE""", chat_id
    )
    return [row["user_id"] for row in owners] == [user_id]
