"""The CPU of SQLite's two ways of running a write batch: `python -m bench.writer_paths`.

`insert_messages` on one database file (`synchronous = FULL` as served), alternating batch
by batch between the one trip to aiosqlite's thread (its internals, as served) and the
public fallback (one trip per statement, `chatapi.sqlite._writer_thread_call` answering
None). The figure is process CPU (every thread: the event loop and aiosqlite's) per
message, so the fsync's wait counts for nothing. Batches of 1 (a lone message) and of 64
(the ingest scenario's 64 senders over 16 chats, one message each).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from chatapi import db, sqlite

from .common import create_database, median, temp_dir
from .trigger_cost import CHATS, USERS, drafts

PATHS = {"one trip (private)": sqlite._writer_thread_call, "public": lambda writer: None}


async def measure(database: db.Database, size: int, batches: int) -> dict[str, float]:
    """Median µs of process CPU per message, by path."""
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    try:
        for n in range(batches):
            for k, (name, lookup) in enumerate(PATHS.items()):
                sqlite._writer_thread_call = lookup
                batch = drafts(size, (2 * n + k) * size)
                t = time.process_time()
                await db.insert_messages(database, batch)
                times[name].append((time.process_time() - t) * 1e6 / size)
    finally:
        sqlite._writer_thread_call = PATHS["one trip (private)"]
    return {name: median(t) for name, t in times.items()}


async def main(batches: int) -> None:
    with temp_dir("bench-writer-") as d:
        path = str(d / "chat.db")
        create_database(path, users=USERS, chats=CHATS).close()
        database = await db.open_database(path)
        try:
            await measure(database, 64, 5)  # warm up
            for size in (1, 64):
                cpu = await measure(database, size, batches)
                private, public = cpu.values()
                print(f"batches of {size}: {private:.1f} µs of CPU a message in one trip, "
                      f"{public:.1f} µs through the public API ({public / private:.2f}×)",
                      flush=True)
        finally:
            await database.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.writer_paths", description=__doc__)
    p.add_argument("--batches", type=int, default=200, help="batches of each size and path")
    args = p.parse_args()
    asyncio.run(main(args.batches))
