"""The storage interface: every call handlers make, its errors and its row shapes.

Each backend implements `Database` in its own module, with every statement of its
dialect there: `sqlite.py` (the embedded default) and `postgres.py` (for several
processes or hosts on one database). Callers use the functions below and never ask
which backend runs. Rows are plain dicts; timestamps are ISO 8601 UTC text
(`2026-01-31T12:34:56.789Z`) on both backends.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

MAX_ID = 2**63 - 1
PAGE = 500
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class NotFound(Exception):
    """The row the caller named does not exist."""


class Conflict(Exception):
    """A unique value is already taken; `field` names it (email, username, or a
    message's nonce)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already taken")
        self.field = field


class LastOwner(Exception):
    """The change would leave a chat without an owner."""


class Unavailable(Exception):
    """The database cannot be reached or refuses us; the message names where, never a password."""


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
    # The API token the sending socket authenticated with: once it is revoked (or
    # a password reset deletes it), the draft is not stored.
    api_token_id: int | None = None
    reply_to: int | None = None  # a message of the same chat


REVOKED = "your tokens were revoked: log in again"

# What a change may do (Change.kind), and why one is refused (Stored.error).
EDIT, DELETE, REACT, UNREACT = "edit", "delete", "react", "unreact"
NO_MESSAGE, FORBIDDEN, GONE, TOO_MANY = "no_message", "forbidden", "deleted", "too_many"
MAX_REACTIONS = 20  # distinct emoji one user may put on one message


@dataclass
class Change:
    """An edit, delete, reaction or its removal, waiting to be stored.

    `moderator`: the user may delete others' messages (an owner of the chat, or an admin).
    """

    kind: str
    chat_id: int
    message_id: int
    user_id: int
    text: str | None = None
    emoji: str | None = None
    moderator: bool = False
    token_version: int | None = None
    api_token_id: int | None = None  # as Draft's


@dataclass
class Stored:
    """The outcome of one draft: the message, or why it was not stored."""

    message: dict[str, Any] | None
    is_new: bool = False  # for a change: it changed the message (a new seq)
    error: str | None = None


def public_message(row: dict[str, Any]) -> dict[str, Any]:
    """A stored message as clients see it: `seq` always, the other fields of
    changes and replies only when set; a deleted message is a tombstone."""
    message = {
        "id": row["id"], "chat_id": row["chat_id"], "owner_id": row["owner_id"],
        "username": row["username"], "text": row["text"], "created_at": row["created_at"],
    }
    if row.get("nonce") is not None:
        message["nonce"] = row["nonce"]
    message["seq"] = row.get("seq") or row["id"]
    for field in ("reply_to", "edited_at"):
        if row.get(field) is not None:
            message[field] = row[field]
    if row.get("deleted_at") is not None:
        message["deleted"] = True
        message["deleted_at"] = row["deleted_at"]
    if row.get("reactions"):
        message["reactions"] = json.loads(row["reactions"])
    return message


class Database(ABC):
    """One open database. `shared` is True when other processes may use it at the same time."""

    shared = False

    def pool_in_use(self) -> int:
        """Connections of a pool in use now (0 without a pool)."""
        return 0

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def get_or_create_secret(self, candidate: str) -> str: ...

    @abstractmethod
    async def create_user(
        self, email: str, username: str, password_hash: str
    ) -> dict[str, Any]: ...

    @abstractmethod
    async def user_by_email(self, email: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def user_by_id(self, user_id: int) -> dict[str, Any] | None: ...

    @abstractmethod
    async def list_users(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def token_versions(self, user_ids: Sequence[int]) -> dict[int, int]: ...

    @abstractmethod
    async def revoke_tokens(self, user_id: int) -> None: ...

    @abstractmethod
    async def set_password(self, email: str, password_hash: str) -> dict[str, Any]: ...

    @abstractmethod
    async def set_online(self, user_id: int, online: bool) -> None: ...

    @abstractmethod
    async def set_everybody_offline(self) -> None: ...

    @abstractmethod
    async def create_chat(self, name: str, owner_id: int) -> dict[str, Any]: ...

    @abstractmethod
    async def list_chats(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def chat_exists(self, chat_id: int) -> bool: ...

    @abstractmethod
    async def last_seq(self, chat_id: int) -> int:
        """The highest seq of the chat (0 when it has no message)."""

    @abstractmethod
    async def newest_seq(self, chat_id: int) -> int | None: ...

    @abstractmethod
    async def changes_after(self, positions: dict[int, int], limit: int) -> list[dict[str, Any]]:
        """Of each chat, the messages whose seq is above its position (new ones and
        changed ones), by chat then seq, at most `limit` in all."""

    @abstractmethod
    async def message_by_id(self, chat_id: int, message_id: int) -> dict[str, Any] | None: ...

    @abstractmethod
    async def apply_changes(self, changes: Sequence[Change]) -> list[Stored]: ...

    @abstractmethod
    async def message_page(
        self, chat_id: int, as_json: bool, after: int, before: int, limit: int, newest: bool
    ) -> list[Any]:
        """One page of a chat's messages above `after` and below `before`, oldest first
        (the newest `limit` of them when `newest`), as dicts or as (id, JSON text) pairs."""

    @abstractmethod
    async def search_messages(
        self, user_id: int, terms: Sequence[str], chat_id: int | None, before: int, limit: int
    ) -> list[str]: ...

    @abstractmethod
    async def insert_messages(self, drafts: Sequence[Draft]) -> list[Stored]: ...

    @abstractmethod
    async def insert_seed(
        self,
        users: Sequence[tuple[str, str, str]],
        chats: Sequence[tuple[str, int]],
        messages: Sequence[tuple[int, int, str, str | None, str | None]],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]: ...

    # Teams: admins, chat kinds, members, read markers, invites

    @abstractmethod
    async def set_admin(self, email: str, admin: bool) -> dict[str, Any]: ...

    @abstractmethod
    async def create_team_chat(
        self, name: str, kind: str, owner_id: int, member_ids: Sequence[int]
    ) -> dict[str, Any]: ...

    @abstractmethod
    async def direct_chat(
        self, user_id: int, other_id: int, name: str
    ) -> tuple[dict[str, Any], bool]: ...

    @abstractmethod
    async def chat_access(self, chat_id: int, user_id: int) -> dict[str, Any] | None: ...

    @abstractmethod
    async def chats_of(self, user_id: int) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def members_of(self, chat_id: int) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def add_member(self, chat_id: int, user_id: int, role: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def remove_member(self, chat_id: int, user_id: int) -> bool: ...

    @abstractmethod
    async def set_role(self, chat_id: int, user_id: int, role: str) -> bool: ...

    @abstractmethod
    async def mark_read(self, chat_id: int, user_id: int, message_id: int) -> int: ...

    @abstractmethod
    async def create_invite(
        self, code: str, created_by: int, expires_at: str, uses: int
    ) -> dict[str, Any]: ...

    @abstractmethod
    async def invite_usable(self, code: str, now: str) -> bool: ...

    @abstractmethod
    async def create_user_with_invite(
        self, email: str, username: str, password_hash: str, code: str, now: str
    ) -> dict[str, Any]: ...

    # API tokens

    @abstractmethod
    async def create_api_token(
        self, user_id: int, name: str, token_hash: str, cap: int
    ) -> dict[str, Any] | None: ...

    @abstractmethod
    async def api_tokens_of(self, user_id: int) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def delete_api_token(self, user_id: int, token_id: int) -> bool: ...

    @abstractmethod
    async def user_by_api_token(self, token_hash: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def touch_api_token(self, token_id: int) -> None: ...

    @abstractmethod
    async def live_api_tokens(self, token_ids: Sequence[int]) -> set[int]: ...

    async def pages(
        self,
        chat_id: int,
        as_json: bool,
        limit: int | None,
        before: int | None,
        after: int | None,
    ) -> AsyncIterator[list[Any]]:
        """A chat's messages, oldest first, a page at a time.

        `limit` without `after` means the newest `limit` (below `before` if given);
        with `after`, the oldest `limit` above it. Each page is fetched whole, so
        no statement stays open while the caller awaits.
        """
        before = MAX_ID if before is None else before
        if limit is not None and after is None:
            rows = await self.message_page(chat_id, as_json, 0, before, limit, True)
            yield [text for _, text in rows] if as_json else rows
            return
        last = 0 if after is None else after
        remaining = -1 if limit is None else limit
        while remaining != 0:
            page = PAGE if remaining < 0 else min(PAGE, remaining)
            rows = await self.message_page(chat_id, as_json, last, before, page, False)
            yield [text for _, text in rows] if as_json else rows
            if len(rows) < page:
                return
            last = rows[-1][0] if as_json else rows[-1]["id"]
            if remaining > 0:
                remaining -= len(rows)


def is_postgres(location: str) -> bool:
    """True when the database setting is a PostgreSQL URL rather than a SQLite path."""
    return location.startswith(POSTGRES_SCHEMES)


async def open_database(location: str) -> Database:
    """Open the database a setting names (a SQLite path or a PostgreSQL URL) and apply its schema."""
    if is_postgres(location):
        from . import postgres

        return await postgres.open_database(location)
    from . import sqlite

    return await sqlite.open_database(location)


# The calls handlers make, one per statement of the backends.


async def ping(db: Database) -> None:
    """Raise unless the database answers."""
    await db.ping()


async def get_or_create_secret(db: Database, candidate: str) -> str:
    """The stored token secret; `candidate` becomes it if none is stored yet."""
    return await db.get_or_create_secret(candidate)


async def create_user(
    db: Database, email: str, username: str, password_hash: str
) -> dict[str, Any]:
    """Insert a user; Conflict('email') or Conflict('username') when taken."""
    return await db.create_user(email, username, password_hash)


async def user_by_email(db: Database, email: str) -> dict[str, Any] | None:
    """The user with this (lower-cased) email, or None."""
    return await db.user_by_email(email)


async def user_by_id(db: Database, user_id: int) -> dict[str, Any] | None:
    """The user with this id, or None."""
    return await db.user_by_id(user_id)


async def list_users(db: Database) -> list[dict[str, Any]]:
    """Every user, by id."""
    return await db.list_users()


async def token_versions(db: Database, user_ids: Sequence[int]) -> dict[int, int]:
    """The current token version of each user that still exists."""
    return await db.token_versions(user_ids)


async def revoke_tokens(db: Database, user_id: int) -> None:
    """Bump the user's token version: every token issued before is refused."""
    await db.revoke_tokens(user_id)


async def set_password(db: Database, email: str, password_hash: str) -> dict[str, Any]:
    """Replace a user's password hash and revoke their tokens; NotFound if no such email."""
    return await db.set_password(email, password_hash)


async def set_online(db: Database, user_id: int, online: bool) -> None:
    """Record that this process holds a socket of the user, or no longer does."""
    await db.set_online(user_id, online)


async def set_everybody_offline(db: Database) -> None:
    """Forget presence this process (or a dead one) left behind."""
    await db.set_everybody_offline()


async def create_chat(db: Database, name: str, owner_id: int) -> dict[str, Any]:
    """Insert a public chat, its owner a member: {id, name, owner_id, created_at, kind}."""
    return await db.create_team_chat(name, "public", owner_id, ())


async def list_chats(db: Database) -> list[dict[str, Any]]:
    """Every chat, by id."""
    return await db.list_chats()


async def chat_exists(db: Database, chat_id: int) -> bool:
    """True when a chat has this id."""
    return await db.chat_exists(chat_id)


async def newest_seq(db: Database, chat_id: int) -> int | None:
    """The chat's highest seq: its newest message or change (0 when it has no message);
    None if no such chat."""
    return await db.newest_seq(chat_id)


async def message_by_id(db: Database, chat_id: int, message_id: int) -> dict[str, Any] | None:
    """One message of a chat (a tombstone if deleted), or None."""
    return await db.message_by_id(chat_id, message_id)


async def changes_since(
    db: Database, chat_id: int, since: int, page: int = PAGE
) -> AsyncIterator[dict[str, Any]]:
    """Every message of a chat whose seq is above `since` (new or changed since), in seq
    order, a page at a time (no statement stays open while the caller awaits)."""
    while True:
        rows = await db.changes_after({chat_id: since}, page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        since = rows[-1]["seq"]


async def apply_changes(db: Database, changes: Sequence[Change]) -> list[Stored]:
    """Store changes in one transaction, in order. Each that changes its message gives
    it a new seq (from the message id allocation, under the chat's lock: within a chat
    seq commits in increasing order) and is_new; one that changes nothing (a reaction
    already there, a delete of a tombstone) gives the message as it is; a refused one
    gives `error` (NO_MESSAGE, FORBIDDEN, GONE, TOO_MANY or REVOKED)."""
    return await db.apply_changes(changes)


async def chat_messages(
    db: Database,
    chat_id: int,
    *,
    limit: int | None = None,
    before: int | None = None,
    after: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Messages of a chat as dicts, oldest first (see Database.pages for the paging)."""
    async for rows in db.pages(chat_id, False, limit, before, after):
        for row in rows:
            yield row


async def chat_messages_json(
    db: Database,
    chat_id: int,
    *,
    limit: int | None = None,
    before: int | None = None,
    after: int | None = None,
) -> AsyncIterator[str]:
    """The same messages, each as its JSON text (built by the database)."""
    async for rows in db.pages(chat_id, True, limit, before, after):
        for text in rows:
            yield text


async def search_messages(
    db: Database,
    user_id: int,
    terms: Sequence[str],
    *,
    chat_id: int | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[str]:
    """Messages containing every term (the last one as a prefix; case and diacritics
    folded), newest first, below `before`, at most `limit`, each as its JSON text.

    Only from `chat_id` when given (the caller checked it may read it); else from
    the chats the user may read: public ones and those they are a member of. Terms
    are plain words, never query syntax; a message whose text was removed never matches.
    """
    return await db.search_messages(
        user_id, terms, chat_id, MAX_ID if before is None else before, limit
    )


async def insert_messages(db: Database, drafts: Sequence[Draft]) -> list[Stored]:
    """Store drafts in one transaction (one fsync for the lot), in order.

    A draft whose nonce its owner already used is not stored again: its
    result is the original message with is_new False. Within a chat, ids
    commit in increasing order, whatever the number of writers.
    """
    return await db.insert_messages(drafts)


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
    return await db.insert_seed(users, chats, messages)

# Teams: admins, chat kinds, members, read markers, invites.
# Roles are 'owner' and 'member'; kinds 'public', 'private' and 'direct'.


async def set_admin(db: Database, email: str, admin: bool) -> dict[str, Any]:
    """Grant or revoke the admin role of the user with this email; NotFound if none."""
    return await db.set_admin(email, admin)


async def create_team_chat(
    db: Database, name: str, kind: str, owner_id: int, member_ids: Sequence[int] = ()
) -> dict[str, Any]:
    """Insert a public or private chat, its creator as owner and `member_ids` as members,
    in one transaction; NotFound when a member id names no user."""
    return await db.create_team_chat(name, kind, owner_id, member_ids)


async def direct_chat(
    db: Database, user_id: int, other_id: int, name: str
) -> tuple[dict[str, Any], bool]:
    """The direct chat of two users, created (both as owners) if they have none:
    (chat, created). Exactly one per pair, however many ask at once; NotFound if
    `other_id` names no user."""
    return await db.direct_chat(user_id, other_id, name)


async def chat_access(db: Database, chat_id: int, user_id: int) -> dict[str, Any] | None:
    """The chat with its kind and the user's `role` in it (None when not a member),
    or None when no chat has this id."""
    return await db.chat_access(chat_id, user_id)


async def chats_of(db: Database, user_id: int) -> list[dict[str, Any]]:
    """Public chats and the user's own, by id: kind, role, last_read_id and, for member
    chats, `unread` (the others' messages after the marker, exact, read from counts kept
    by the storing transaction), and for a direct chat the other user (`other_id`,
    `other_username`)."""
    return await db.chats_of(user_id)


async def members_of(db: Database, chat_id: int) -> list[dict[str, Any]]:
    """{user_id, username, role, last_read_id} of each member, by user id."""
    return await db.members_of(chat_id)


async def add_member(db: Database, chat_id: int, user_id: int, role: str) -> dict[str, Any] | None:
    """Make a user a member: {user_id, username, role}, or None when already one;
    NotFound if no such user."""
    return await db.add_member(chat_id, user_id, role)


async def remove_member(db: Database, chat_id: int, user_id: int) -> bool:
    """Remove a member; False if not one, LastOwner if the chat would have no owner."""
    return await db.remove_member(chat_id, user_id)


async def set_role(db: Database, chat_id: int, user_id: int, role: str) -> bool:
    """Change a member's role; False if not a member, LastOwner if no owner would remain."""
    return await db.set_role(chat_id, user_id, role)


async def mark_read(db: Database, chat_id: int, user_id: int, message_id: int) -> int:
    """Move the member's read marker forward to `message_id` (at most the chat's last
    message); the marker afterwards."""
    return await db.mark_read(chat_id, user_id, message_id)


async def create_invite(
    db: Database, code: str, created_by: int, expires_at: str, uses: int
) -> dict[str, Any]:
    """Store an invite code: {code, expires_at, uses_left, created_at}."""
    return await db.create_invite(code, created_by, expires_at, uses)


async def invite_usable(db: Database, code: str, now: str) -> bool:
    """True when the code exists, has uses left and expires after `now`."""
    return await db.invite_usable(code, now)


async def create_user_with_invite(
    db: Database, email: str, username: str, password_hash: str, code: str, now: str
) -> dict[str, Any]:
    """Spend one use of an invite code and insert the user, in one transaction;
    NotFound('invite') when the code is unusable, Conflict as create_user."""
    return await db.create_user_with_invite(email, username, password_hash, code, now)


# API tokens: only a token's SHA-256 is stored (chatapi/tokens.py makes them)


async def create_api_token(
    db: Database, user_id: int, name: str, token_hash: str, cap: int
) -> dict[str, Any] | None:
    """Store a token's hash for the user: {id, name, created_at, last_used_at}, or None
    when the user already has `cap` tokens (checked in the inserting transaction)."""
    return await db.create_api_token(user_id, name, token_hash, cap)


async def api_tokens_of(db: Database, user_id: int) -> list[dict[str, Any]]:
    """The user's API tokens by id, without their hash."""
    return await db.api_tokens_of(user_id)


async def delete_api_token(db: Database, user_id: int, token_id: int) -> bool:
    """Revoke one of the user's tokens (every process closes its sockets); False if
    the user has no token with this id."""
    return await db.delete_api_token(user_id, token_id)


async def user_by_api_token(db: Database, token_hash: str) -> dict[str, Any] | None:
    """The user (as user_by_id) owning the token with this hash, with `api_token_id`
    and `api_token_used_at`; None for an unknown or revoked token."""
    return await db.user_by_api_token(token_hash)


async def touch_api_token(db: Database, token_id: int) -> None:
    """Record that the token was used now."""
    await db.touch_api_token(token_id)


async def live_api_tokens(db: Database, token_ids: Sequence[int]) -> set[int]:
    """Those of `token_ids` that still exist."""
    return await db.live_api_tokens(token_ids)
