"""The durable-commit floor: CPU of storing one message alone, on the server's core.

    python -m bench.floor FILE [COUNT]

Inserts COUNT messages into chat 1 of FILE (a database built by `create_database`)
one transaction each, the way ChatAPI stores a message that arrives alone: WAL,
`synchronous=FULL` (an fsync per commit), the same INSERT ... RETURNING. A short
pause between commits, as between the messages of the fan-out scenario, so the
caches are as cold as the server's. Prints the CPU microseconds per commit
(process CPU: user, system and the fsync's kernel time).
"""

from __future__ import annotations

import sqlite3
import sys
import time

PAUSE = 0.002  # seconds between commits


def measure(path: str, count: int) -> float:
    """CPU seconds per durable commit of one message."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    text = "floor " + "x" * 64
    cpu = 0.0
    for _ in range(count):
        time.sleep(PAUSE)
        t = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            """INSERT INTO messages (chat_id, owner_id, text, nonce) VALUES (1, 1, ?, NULL)
               RETURNING id, chat_id, owner_id, text, nonce, created_at""",
            (text,),
        ).fetchall()
        conn.execute("COMMIT")
        cpu += time.process_time() - t
    conn.close()
    return cpu / count


def main() -> None:
    path = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    print(f"{1e6 * measure(path, count):.1f}", flush=True)


if __name__ == "__main__":
    main()
