"""Scenario 8: catching up on changes against catching up on new messages.

A client that was away joins with `since`. In one chat 10,000 messages were posted
after its cursor (10,000 `message` frames); in the other, of the same size, 10,000 older
messages were each edited once after it (10,000 `update` frames, read through the
partial index of changed messages). Time from the `join` frame to `joined`.
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

CHANGES = 10_000
NEW, CHANGED = 1, 2  # the two chats
READER = 2


def build(path: str, count: int) -> tuple[int, int]:
    """Two chats of 2 × `count` messages, interleaved; in chat NEW the last `count` come
    after the cursor, in chat CHANGED every other message is edited after it. Returns
    the two cursors."""
    conn = create_database(path, users=2, chats=2)
    with conn:
        conn.executemany(
            "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, 1, ?)",
            ((chat, f"message {n}") for n in range(2 * count) for chat in (NEW, CHANGED)),
        )
        (new_cursor,) = conn.execute(
            "SELECT id FROM messages WHERE chat_id = ? ORDER BY id LIMIT 1 OFFSET ?",
            (NEW, count - 1),
        ).fetchone()
        (top,) = conn.execute("SELECT max(id) FROM messages").fetchone()
        # Each edit takes the next value of the id allocation, as the server does.
        edited = [row[0] for row in conn.execute(
            "SELECT id FROM messages WHERE chat_id = ? ORDER BY id", (CHANGED,)
        )][::2]
        conn.executemany(
            """UPDATE messages SET text = text || ' (edited)', seq = ?,
                   edited_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
               WHERE id = ?""",
            ((top + n, message_id) for n, message_id in enumerate(edited, 1)),
        )
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'messages'",
                     (top + len(edited),))
    conn.close()
    return new_cursor, top


async def catch_up(http: aiohttp.ClientSession, url: str, chat: int, since: int, kind: str,
                   count: int) -> float:
    """Milliseconds from `join` to `joined`; checks that exactly `count` frames of `kind` came."""
    async with http.ws_connect(url.replace("http", "ws", 1) + "/chats/ws",
                               params={"token": token(READER)}, max_msg_size=0) as ws:
        t = time.perf_counter()
        await ws.send_json({"type": "join", "chat_id": chat, "since": since})
        frames = 0
        async for msg in ws:
            frame = msg.json()
            if frame["type"] == "joined":
                break
            if frame["type"] == kind:
                frames += 1
        elapsed = (time.perf_counter() - t) * 1000
    if frames != count:
        raise RuntimeError(f"{frames} {kind} frames, not {count}")
    return elapsed


async def run(quick: bool = False, count: int | None = None, rounds: int | None = None) -> Outcome:
    out = Outcome("changes")
    count = count or (CHANGES if not quick else 1_000)
    rounds = rounds or (9 if not quick else 3)
    if count != CHANGES:
        out.notes.append(f"small run: {count:,} changes")
    with temp_dir("bench-changes-") as d:
        db = str(d / "chat.db")
        new_cursor, changed_cursor = build(db, count)
        with chatapi_server(db) as server:
            async with aiohttp.ClientSession() as http:
                await catch_up(http, server.url, NEW, new_cursor, "message", count)  # warm up
                await catch_up(http, server.url, CHANGED, changed_cursor, "update", count)
                changed, new = [], []
                for _ in range(rounds):  # alternate, so that drift hits both alike
                    changed.append(await catch_up(
                        http, server.url, CHANGED, changed_cursor, "update", count))
                    new.append(await catch_up(http, server.url, NEW, new_cursor, "message", count))
    ours, theirs = median(changed), median(new)
    out.raw.update(changes_ms=changed, new_ms=new)
    ratio = ours / theirs
    print(f"  changes: {ours:.1f} ms for {count:,} changes, {theirs:.1f} ms for {count:,} new",
          flush=True)
    out.rows.append(Row(
        f"8. catch-up of {count:,} changes", "median time from join to joined",
        ours, theirs, ratio, "≤ 1.5×", ratio <= 1.5, unit="ms",
        baseline_name=f"catch-up of {count:,} new messages, same chat size",
    ))
    return out
