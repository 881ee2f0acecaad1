"""Proposed server changes, measured without changing chatapi/ (`--experiment NAME`).

`bench.launch` applies the named patch in the ChatAPI process before it starts
(BENCH_EXPERIMENT); the baselines are not patched. A run with an experiment says so
in its notes; its figures show what the change would give, and BENCHMARKS.md quotes
them next to the proposal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence


def one_trip_commit() -> None:
    """Store a batch and commit it in one call on the database thread (one hand-off
    to aiosqlite's thread and one wake-up of the event loop per batch instead of two)."""
    from chatapi import db, sqlite

    def insert_and_commit(conn: sqlite3.Connection, drafts: Sequence[db.Draft]) -> list[db.Stored]:
        try:
            results = sqlite._run_batch(conn, sqlite._insert_batch(drafts))
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return results

    async def insert_messages(
        database: sqlite.SQLiteDatabase, drafts: Sequence[db.Draft]
    ) -> list[db.Stored]:
        call = sqlite._writer_thread_call(database.writer)
        assert call is not None, "the experiment needs aiosqlite's internals"
        async with database._write_lock:
            return await call(insert_and_commit, drafts)

    sqlite.SQLiteDatabase.insert_messages = insert_messages  # type: ignore[method-assign]

def orjson_frames() -> None:
    """Serialise message frames with orjson instead of the standard json module."""
    import orjson

    from chatapi import db, hub, realtime

    def message_frame(message: dict, kind: str = "message") -> str:
        return orjson.dumps({"type": kind, **db.public_message(message)}).decode()

    hub.message_frame = message_frame
    realtime.message_frame = message_frame


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "one-trip-commit": one_trip_commit,
    "orjson-frames": orjson_frames,
}


def apply(name: str) -> None:
    """Apply the experiment `name` (one of EXPERIMENTS) in this process."""
    EXPERIMENTS[name]()
