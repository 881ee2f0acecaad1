"""Scenario 7: the chat list with unread counts.

`GET /chats/` for a user who is a member of 200 chats, over a database of 1,000,000
messages with unread messages in every chat (5,000 each, all past the cap), against
the same list of the same 200 chats for a user who is a member of none (no counts).
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


async def run(quick: bool = False) -> Outcome:
    out = Outcome("unread")
    per_chat, rounds = (PER_CHAT, 40) if not quick else (500, 10)
    if quick:
        out.notes.append(f"quick run: {per_chat * CHATS:,} messages")
    with temp_dir("bench-unread-") as d:
        db = str(d / "chat.db")
        t = time.perf_counter()
        build(db, per_chat)
        print(f"  unread: built {per_chat * CHATS:,} messages in {time.perf_counter() - t:.1f} s",
              flush=True)
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
    ours, theirs = median(counted), median(plain)
    out.raw.update(counted_ms=counted, plain_ms=plain)
    ratio = ours / theirs
    print(f"  unread: {ours:.2f} ms with counts, {theirs:.2f} ms without", flush=True)
    out.rows.append(Row(
        "7. chat list, 200 chats, 1,000,000 messages", "median GET /chats/ time, counts capped at 999",
        ours, theirs, ratio, "≤ 2×", ratio <= 2, unit="ms",
        baseline_name="the same 200 chats without counts (a non-member)",
    ))
    return out


async def _list(http: aiohttp.ClientSession, url: str) -> list[dict]:
    async with http.get(url + "/chats/", headers={"Authorization": f"Bearer {token(READER)}"}) as resp:
        return await resp.json()
