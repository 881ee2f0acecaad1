"""Scenario 7: the chat list with unread counts.

`GET /chats/` for a user who is a member of 200 chats, over a database of 1,000,000
messages with unread messages in every chat (5,000 each, all past the 999 a list shows),
against the same list of the same 200 chats for a user who is a member of none (no counts).
`unread` runs it on SQLite; `unread_postgres` the same on PostgreSQL (run by name).
"""

from __future__ import annotations

import time

import aiohttp

from .common import (
    Outcome,
    Row,
    chatapi_server,
    create_database,
    median,
    postgres_database,
    temp_dir,
    token,
)

CHATS = 200
PER_CHAT = 5_000
READER, POSTER, OUTSIDER = 1, 2, 3


def build(path: str, per_chat: int) -> None:
    """200 chats of `per_chat` messages by the poster; the reader a member of every chat."""
    conn = create_database(path, users=3, chats=CHATS)
    with conn:
        conn.executemany(
            "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
            ((chat, POSTER, f"message {n}") for n in range(per_chat) for chat in range(1, CHATS + 1)),
        )
        conn.executemany(
            "INSERT INTO members (chat_id, user_id, role) VALUES (?, ?, 'member')",
            ((chat, READER) for chat in range(1, CHATS + 1)),
        )
    conn.close()


async def list_times(http: aiohttp.ClientSession, url: str, user: int, rounds: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token(user)}"}
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        async with http.get(url + "/chats/", headers=headers) as resp:
            chats = await resp.json()
        times.append((time.perf_counter() - t) * 1000)
        if len(chats) != CHATS:
            raise RuntimeError(f"the list has {len(chats)} chats, not {CHATS}")
    return times


async def build_postgres(url: str, per_chat: int) -> None:
    """The same database on PostgreSQL: one INSERT of every message (its trigger counts them)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """INSERT INTO messages (chat_id, owner_id, text)
               SELECT 1 + n % $1, $2, 'message ' || n / $1 FROM generate_series(0, $3 - 1) n""",
            CHATS, POSTER, CHATS * per_chat,
        )
        await conn.execute(
            """INSERT INTO members (chat_id, user_id, role)
               SELECT chat, $1, 'member' FROM generate_series(1, $2) chat""",
            READER, CHATS,
        )
        await conn.execute("""ANALYZE""")
    finally:
        await conn.close()


async def run(quick: bool = False, backend: str = "sqlite") -> Outcome:
    out = Outcome("unread" if backend == "sqlite" else "unread_postgres")
    per_chat, rounds = (PER_CHAT, 40) if not quick else (500, 10)
    if quick:
        out.notes.append(f"quick run: {per_chat * CHATS:,} messages")
    with temp_dir("bench-unread-") as d:
        t = time.perf_counter()
        if backend == "sqlite":
            db = str(d / "chat.db")
            build(db, per_chat)
            counted, plain = await _measure(db, per_chat, rounds)
        else:
            async with postgres_database("unread", users=3, chats=CHATS) as db:
                await build_postgres(db, per_chat)
                counted, plain = await _measure(db, per_chat, rounds)
        print(f"  unread: built and measured {per_chat * CHATS:,} messages in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
    ours, theirs = median(counted), median(plain)
    out.raw.update(counted_ms=counted, plain_ms=plain)
    ratio = ours / theirs
    print(f"  unread: {ours:.2f} ms with counts, {theirs:.2f} ms without", flush=True)
    where = "" if backend == "sqlite" else ", PostgreSQL"
    out.rows.append(Row(
        f"7. chat list, 200 chats, 1,000,000 messages{where}",
        "median GET /chats/ time, exact counts (shown up to 999)",
        ours, theirs, ratio, "≤ 2×", ratio <= 2, unit="ms",
        baseline_name="the same 200 chats without counts (a non-member)",
    ))
    return out


async def _measure(db: str, per_chat: int, rounds: int) -> tuple[list[float], list[float]]:
    with chatapi_server(db) as server:
        async with aiohttp.ClientSession() as http:
            await list_times(http, server.url, READER, 3)  # warm up
            await list_times(http, server.url, OUTSIDER, 3)
            listed = await _list(http, server.url)
            if any(c["unread"] != min(per_chat, 999) for c in listed):
                raise RuntimeError("every chat should count its unread messages")
            counted, plain = [], []
            for _ in range(rounds):  # alternate, so that drift hits both alike
                counted += await list_times(http, server.url, READER, 1)
                plain += await list_times(http, server.url, OUTSIDER, 1)
    return counted, plain


async def _list(http: aiohttp.ClientSession, url: str) -> list[dict]:
    async with http.get(url + "/chats/", headers={"Authorization": f"Bearer {token(READER)}"}) as resp:
        return await resp.json()
