"""Run a server under tracemalloc, to see where per-socket memory goes (`--profile`).

    python -m bench.memprobe OUT_PREFIX chatapi --port 0 --db FILE
    python -m bench.memprobe OUT_PREFIX baseline --mode broadcast --port 0

Each SIGUSR1 writes a snapshot to OUT_PREFIX-<n>.snap; the connections scenario takes one
before and one after opening its sockets and prints the difference by allocation site.
The server code is unchanged: this only wraps its entry point.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path


def main() -> None:
    prefix, target, *args = sys.argv[1:]
    tracemalloc.start(8)
    count = 0

    def snapshot(signum: int, frame: object) -> None:
        nonlocal count
        tracemalloc.take_snapshot().dump(f"{prefix}-{count}.snap")
        count += 1
        Path(f"{prefix}-{count - 1}.done").touch()

    signal.signal(signal.SIGUSR1, snapshot)
    sys.argv = [target, *args]
    if target == "chatapi":
        from chatapi.cli import main as run
    else:
        from bench.baseline import main as run
    run()


def diff(before: str, after: str, per: int, top: int = 15) -> str:
    """Growth between two snapshots by allocation site, per socket."""
    old = tracemalloc.Snapshot.load(before)
    new = tracemalloc.Snapshot.load(after)
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old, new = old.filter_traces(filters), new.filter_traces(filters)
    total = sum(s.size_diff for s in new.compare_to(old, "filename"))
    lines = [f"traced Python allocations: +{total / per:.0f} bytes per socket", "",
             "by line (innermost frame):"]
    for stat in new.compare_to(old, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(f"  {stat.size_diff / per:8.0f} B  {stat.count_diff / per:5.1f} blocks  "
                     f"{_short(frame.filename)}:{frame.lineno}")
    lines += ["", "by the nearest frame in chatapi/, aiohttp/ or bench/:"]
    grouped: dict[str, int] = {}
    for stat in new.compare_to(old, "traceback"):
        where = next(
            (f"{_short(f.filename)}:{f.lineno}" for f in reversed(stat.traceback)
             if any(p in f.filename for p in ("/chatapi/", "/bench/", "/aiohttp/"))),
            f"{_short(stat.traceback[-1].filename)}:{stat.traceback[-1].lineno}",
        )
        grouped[where] = grouped.get(where, 0) + stat.size_diff
    for where, size in sorted(grouped.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {size / per:8.0f} B  {where}")
    return "\n".join(lines) + "\n"


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


if __name__ == "__main__":
    main()
