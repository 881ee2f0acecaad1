"""Scenario 6, PostgreSQL: ingest and fan-out against the same bare baselines as 1 and 2.

ChatAPI on PostgreSQL in one process, and in two (`chatapi --workers 2`: one port,
SO_REUSEPORT spreads the sockets over the workers, the database and its
notifications join them), side by side with the bare broadcast, windows alternating:

- Ingest: the 64 senders over 16 chats of scenario 2 against the bare broadcast with
  the same 16 chats × 4 sockets. Targets as scenario 2: ≥ 0.6× its acknowledged
  messages per second and per server CPU-second.
- Fan-out: one chat, N subscribers and the sender, against the bare broadcast at the
  same N. Targets as scenario 1: ≤ 1.15× its server CPU per delivered frame, p99
  delivery latency ≤ 1.2×. With 2 processes the subscribers are on both, so about
  half of the frames cross the database (commit, NOTIFY, read back).
- What the second process changes: the 2-process figures against the 1-process ones
  of the same run (acknowledged messages per second, p99 delivery latency).

Server CPU is ChatAPI's processes (the supervisor and its workers) plus the PostgreSQL
backends serving their connections (found in /proc: the backends whose client port is a
socket of those processes). Both ChatAPI processes share the server core, as one
does; PostgreSQL runs unpinned on this machine, competing with everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from . import common, fanout, ingest
from .common import (
    HOST,
    Outcome,
    Row,
    Server,
    Target,
    baseline_server,
    chatapi_settings,
    drop_postgres_schemas,
    launch,
    postgres_schema,
    temp_dir,
    users_for,
)
from .fanout import Side, best

T = TypeVar("T")
PLAN = [(100, 50.0, 3.0), (1000, 10.0, 3.0)]
QUICK_PLAN = [(100, 50.0, 1.5)]
PROCESSES = (1, 2)


def processes_name(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes (--workers {count})"


# Finding the PostgreSQL backends of a server, from /proc alone (no query in a window).


def descendants(pid: int) -> list[int]:
    """`pid`'s children, theirs, ... (Linux /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError), open(
                    f"/proc/{parent}/task/{task}/children"
                ) as f:
                    children = [int(c) for c in f.read().split()]
                    found += children
                    todo += children
    return found


def client_ports(pids: Sequence[int], server_port: int) -> set[int]:
    """Local ports of the TCP connections that `pids` hold to `server_port`."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes and \
                        int(fields[2].rsplit(":", 1)[1], 16) == server_port:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


_CLIENT = re.compile(rb"\((\d+)\)")


def postgres_backends(ports: set[int]) -> list[int]:
    """The PostgreSQL backends whose client is at one of `ports` of this host: their
    process title is `postgres: ... user database 127.0.0.1(port) state`."""
    found = []
    if not ports:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read()
        except OSError:
            continue
        if title.startswith(b"postgres: "):
            m = _CLIENT.search(title)
            if m and int(m.group(1)) in ports:
                found.append(int(entry))
    return found


class PostgresServer(Server):
    """A ChatAPI on PostgreSQL: its CPU is its processes' and their backends'."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str | None],
                 database_port: int) -> None:
        super().__init__(name, argv, env)
        self.database_port = database_port

    def parts(self) -> dict[int, str]:
        pids = [self.pid, *descendants(self.pid)]
        parts = dict.fromkeys(pids, "server")
        for pid in postgres_backends(client_ports(pids, self.database_port)):
            parts[pid] = "database"
        return parts


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a loop of its own in another thread (from sync code under a loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class PostgresTarget(Target):
    """ChatAPI on a fresh schema of the database at CHATAPI_BENCH_POSTGRES_URL, in
    `workers` processes; `close()` drops the schemas it made."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.name = f"PostgreSQL, {processes_name(workers)}"
        self.schemas: list[str] = []

    def database(self, directory: Path, users: int, chats: int) -> str:
        schema = f"bench{os.getpid()}_{len(self.schemas)}_{self.workers}"
        self.schemas.append(schema)
        return in_thread(postgres_schema(schema, users, chats))

    def server(self, database: str, **env: str) -> Server:
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        return PostgresServer(
            f"chatapi on PostgreSQL, {processes_name(self.workers)}",
            launch("chatapi", "--host", HOST, "--port", "0", "--db", database, *workers),
            chatapi_settings(**env),
            urlsplit(common.POSTGRES_URL).port or 5432,
        )

    def close(self) -> None:
        in_thread(drop_postgres_schemas(self.schemas))
        self.schemas = []


# The scenario


def database_note(w: dict, per: str, count: float) -> str:
    ours = 1e6 * w["server_cpu_s"] / count
    db = 1e6 * w["server_database_cpu_s"] / count
    return (f"server CPU {ours:.0f} µs per {per}: ChatAPI {ours - db:.0f} µs (event loop "
            f"{1e6 * w['server_loop_cpu_s'] / count:.0f} µs), PostgreSQL backends {db:.0f} µs")


def change_row(label: str, metric: str, windows: dict[str, list[dict]], one: str, two: str,
               key: str, unit: str, higher_better: bool) -> Row:
    """The 2-process figure against the 1-process one of the same run (informational)."""
    pick = max if higher_better else min
    a = pick(windows[one], key=lambda w: w[key])
    b = pick(windows[two], key=lambda w: w[key])
    return Row(
        label, metric, b[key], a[key], b[key] / a[key], "—", None, unit=unit,
        baseline_name=f"ChatAPI on PostgreSQL, {one}",
        server_util=b["server_util"], generator_util=b["generator_util"],
        baseline_server_util=a["server_util"], baseline_generator_util=a["generator_util"],
        other_load=max(a["other_load"], b["other_load"]), sensitive=True,
    )


async def run_ingest(targets: dict[str, PostgresTarget], warmup: float, seconds: float,
                     rounds: int) -> tuple[dict[str, list[dict]], list[Row]]:
    with temp_dir("bench-pg-ingest-") as d, contextlib.ExitStack() as stack:
        servers = {"bare": stack.enter_context(baseline_server("broadcast"))}
        for kind, target in targets.items():
            url = target.database(d, users=ingest.SENDERS, chats=ingest.CHATS)
            servers[kind] = stack.enter_context(target.server(url))
        windows = await ingest.alternate(servers, warmup, seconds, rounds)
    rows = []
    for kind in targets:
        label = f"6. PostgreSQL ingest, 64 senders / 16 chats, {kind}"
        for row in ingest.ingest_rows(label, {"chatapi": windows[kind], "bare": windows["bare"]},
                                      "bare", "≥ 0.6×", 0.6):
            if row.metric.endswith("CPU-second"):
                w = max(windows[kind], key=ingest.per_cpu_s)
                row.notes = [database_note(w, "message", w["acked"]),
                             f"{1e6 / row.baseline:.0f} µs for the bare broadcast"]
            rows.append(row)
    kinds = list(targets)
    for later in kinds[1:]:
        rows.append(change_row(
            f"6. PostgreSQL ingest, 64 senders / 16 chats, {later} against {kinds[0]}",
            "acknowledged messages per second", windows, kinds[0], later, "per_s", "/s", True,
        ))
    return windows, rows


async def run_fanout(targets: dict[str, PostgresTarget], n: int, rate: float, seconds: float,
                     rounds: int) -> tuple[dict[str, list[dict]], list[Row]]:
    with temp_dir("bench-pg-fanout-") as d, contextlib.ExitStack() as stack:
        sides = [Side("bare", stack.enter_context(baseline_server("broadcast")), chatapi=False)]
        for kind, target in targets.items():
            url = target.database(d, users=1 + users_for(n), chats=1)
            sides.append(Side(kind, stack.enter_context(target.server(url))))
        windows = await fanout.alternate(sides, n, rate, seconds, rounds)
    rows = []
    label = f"6. PostgreSQL fan-out N={n}, {rate:g} msg/s"
    for kind in targets:
        for row in fanout.rows_for(f"{label}, {kind}", n,
                                   {"chatapi": windows[kind], "bare": windows["bare"]}, math.nan):
            if row.metric == "server CPU per delivered frame":
                w, bare = best(windows[kind], "cpu_per_frame_us"), best(windows["bare"], "cpu_per_frame_us")
                row.notes.append(
                    database_note(w, "message", w["messages"]) + f"; the bare broadcast "
                    f"{1e6 * bare['server_cpu_s'] / bare['messages']:.0f} µs"
                )
            rows.append(row)
    kinds = list(targets)
    for later in kinds[1:]:
        rows.append(change_row(f"{label}, {later} against {kinds[0]}", "p99 delivery latency",
                               windows, kinds[0], later, "p99_ms", "ms", False))
    return windows, rows


async def run(
    quick: bool = False, plan: list[tuple[int, float, float]] | None = None,
    seconds: float | None = None, rounds: int | None = None,
    processes: Sequence[int] = PROCESSES,
) -> Outcome:
    out = Outcome("postgres")
    warmup, ingest_s = (0.5, 1.5) if quick else (1.0, 2.5)
    ingest_s = seconds or ingest_s
    rounds = rounds or (1 if quick else 3)
    plan = plan or (QUICK_PLAN if quick else PLAN)
    targets = {processes_name(k): PostgresTarget(k) for k in processes}
    try:
        out.raw["ingest"], rows = await run_ingest(targets, warmup, ingest_s, rounds)
        out.rows += rows
        for n, rate, window_s in plan:
            out.raw[f"n{n}"], rows = await run_fanout(targets, n, rate, window_s, rounds)
            out.rows += rows
    finally:
        for target in targets.values():
            target.close()
    found = [w["server_database_cpu_s"] > 0 for kind in targets for w in out.raw["ingest"][kind]]
    if not any(found):
        out.notes.append("no PostgreSQL backend of the servers was found on this host: "
                         "server CPU is ChatAPI's alone")
    out.notes.append(
        "server CPU includes the PostgreSQL backends serving ChatAPI's connections; ChatAPI's "
        "processes are pinned to the server core, PostgreSQL is not (it competes with the "
        "generator's core too); 2 processes share the one server core"
    )
    return out
