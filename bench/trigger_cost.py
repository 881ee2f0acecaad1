"""What the unread-count trigger adds to storing messages: `python -m bench.trigger_cost`.

`insert_messages` (the writer's one call per batch: one transaction, one commit) timed on
two databases of the same schema, one with the trigger that keeps the unread counts and
one without it (dropped), alternating batch by batch so that drift hits both alike; on
SQLite (a file, `synchronous = FULL` as served) and, with `--postgres`, on PostgreSQL
(CHATAPI_BENCH_POSTGRES_URL). Also SQLite in memory: no disk, so the difference is the
trigger's CPU alone. Batches of 1 (a lone message) and of 64 (the ingest scenario's 64
senders over 16 chats, one message each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from chatapi import db
from chatapi.db import Draft

from .common import create_database, median, postgres_database, temp_dir

USERS, CHATS = 64, 16


def drafts(size: int, n: int) -> list[Draft]:
    return [
        Draft(chat_id=1 + (n + i) % CHATS, owner_id=1 + i % USERS, username=f"user{1 + i % USERS}",
              text=f"message {n + i}")
        for i in range(size)
    ]


@contextlib.asynccontextmanager
async def sqlite_pair() -> AsyncIterator[tuple[db.Database, db.Database]]:
    with temp_dir("bench-trigger-") as d:
        paths = [str(d / f"{name}.db") for name in ("counted", "plain")]
        for path in paths:
            create_database(path, users=USERS, chats=CHATS).close()
        async with _sqlite_opened(paths, seeded=True) as pair:
            yield pair


@contextlib.asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[db.Database, db.Database]]:
    async with _sqlite_opened([":memory:", ":memory:"], seeded=False) as pair:
        yield pair


@contextlib.asynccontextmanager
async def _sqlite_opened(
    paths: list[str], seeded: bool
) -> AsyncIterator[tuple[db.Database, db.Database]]:
    """Both SQLite databases open (given users and chats unless `seeded`), the second
    without the trigger."""
    opened = []
    try:
        for path in paths:
            opened.append(await db.open_database(path))
            if not seeded:
                await db.insert_seed(
                    opened[-1],
                    [(f"user{n}@example.com", f"user{n}", "x") for n in range(1, USERS + 1)],
                    [(f"chat {n}", 0) for n in range(1, CHATS + 1)],
                    [],
                )
        async with opened[1].transaction() as conn:
            await conn.execute("""DROP TRIGGER messages_counted""")
        yield opened[0], opened[1]
    finally:
        for database in opened:
            await database.close()


@contextlib.asynccontextmanager
async def postgres_pair() -> AsyncIterator[tuple[db.Database, db.Database]]:
    async with postgres_database("counted", USERS, CHATS) as first, postgres_database(
        "plain", USERS, CHATS
    ) as second:
        counted, plain = await db.open_database(first), await db.open_database(second)
        try:
            await plain.pool.execute("""DROP TRIGGER messages_counted ON messages""")
            yield counted, plain
        finally:
            await counted.close()
            await plain.close()


async def measure(pair: tuple[db.Database, db.Database], size: int, batches: int) -> list[float]:
    """Median µs per message: with the trigger, without it."""
    times: list[list[float]] = [[], []]
    for n in range(batches):
        for k, database in enumerate(pair):
            batch = drafts(size, n * size)
            t = time.perf_counter()
            await db.insert_messages(database, batch)
            times[k].append((time.perf_counter() - t) * 1e6 / size)
    return [median(t) for t in times]


async def main(postgres: bool, batches: int) -> None:
    backends = [("SQLite", sqlite_pair), ("SQLite in memory", memory_pair)]
    backends += [("PostgreSQL", postgres_pair)] if postgres else []
    for name, pair_of in backends:
        async with pair_of() as pair:
            await measure(pair, 64, 5)  # warm up
            for size in (1, 64):
                counted, plain = await measure(pair, size, batches)
                print(f"{name}, batches of {size}: {counted:.1f} µs a message with the trigger, "
                      f"{plain:.1f} µs without: {counted - plain:+.1f} µs "
                      f"({counted / plain:.2f}×)", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.trigger_cost", description=__doc__)
    p.add_argument("--postgres", action="store_true", help="PostgreSQL too")
    p.add_argument("--batches", type=int, default=300, help="batches of each size and variant")
    args = p.parse_args()
    asyncio.run(main(args.postgres, args.batches))
