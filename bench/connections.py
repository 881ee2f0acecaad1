"""Scenario 4, connections: 10,000 idle authenticated sockets; server memory per socket.

For each server: connect one socket (first-use costs paid), wait, read VmRSS; open
the other sockets (128 handshakes in flight), wait for the server to settle, read
VmRSS again. Per socket = growth / sockets. ChatAPI's sockets belong to users of 32
sockets each (its per-user limit: 313 users for 10,000 sockets) and authenticate with
`?token=`; the bare broadcast server takes any socket.

With --profile the servers run under tracemalloc (bench.memprobe) and the growth is
broken down by allocation site (bench/results/memory-*.txt); their RSS figures then
include tracemalloc's own cost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from . import memprobe, profiler
from .common import (
    HOST,
    RESULTS,
    SOCKETS_PER_USER,
    Outcome,
    Row,
    Server,
    baseline_server,
    chatapi_server,
    create_database,
    file_limit,
    process_sched,
    temp_dir,
    token,
    users_for,
)
from .wsclient import abort_all, connect, connect_many

KB = 1024


async def settle(server: Server, quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until the server stops using CPU (presence flushes, handshake tails)."""
    deadline = time.perf_counter() + limit
    last = process_sched(server.pid)[0]
    while time.perf_counter() < deadline:
        await asyncio.sleep(quiet)
        now = process_sched(server.pid)[0]
        if now - last < 0.02 * quiet:
            return
        last = now


def traced(server: Server, prefix: str) -> Server:
    """The same server under bench.memprobe (tracemalloc): --profile only."""
    module_at = server.argv.index("-m") + 1
    end = module_at + 1
    if server.argv[module_at] == "bench.launch":  # memprobe runs it on asyncio's loop
        end += 1
    target = "chatapi" if server.argv[end - 1] == "chatapi" else "baseline"
    server.argv[module_at:end] = ["bench.memprobe", prefix, target]
    return server


async def snapshot(server: Server, prefix: str, n: int) -> str:
    done = Path(f"{prefix}-{n}.done")
    os.kill(server.pid, signal.SIGUSR1)
    for _ in range(600):
        if done.exists():
            return f"{prefix}-{n}.snap"
        await asyncio.sleep(0.1)
    raise RuntimeError("no tracemalloc snapshot")


async def measure(server: Server, paths: list[str], prefix: str | None = None) -> dict:
    sockets = len(paths)
    first = await connect(HOST, server.port, paths[0])
    clients = [first]
    try:
        await asyncio.sleep(1.2)
        await settle(server)
        if prefix:
            before = await snapshot(server, prefix, 0)
        rss0 = server.rss()
        c0 = process_sched(server.pid)[0]
        t0 = time.perf_counter()
        with profiler.profile(server.pid, f"connections-{server.name.replace(' ', '-')}"):
            clients += await connect_many(HOST, server.port, paths[1:])
        ramp = time.perf_counter() - t0
        ramp_cpu = process_sched(server.pid)[0] - c0
        await asyncio.sleep(1.2)
        await settle(server)
        rss1 = server.rss()
        if prefix:
            after = await snapshot(server, prefix, 1)
            text = memprobe.diff(before, after, sockets - 1)
            Path(f"{prefix}.txt").write_text(text)
            print(text, flush=True)
        still_open = sum(1 for c in clients if c.close_code is None and not c.closed.done())
        return {
            "sockets": sockets,
            "still_open": still_open,
            "rss_before_mb": rss0 / KB / KB,
            "rss_after_mb": rss1 / KB / KB,
            "per_socket_kb": (rss1 - rss0) / (sockets - 1) / KB,
            "handshakes_per_s": (sockets - 1) / ramp,
            "cpu_per_handshake_ms": 1e3 * ramp_cpu / (sockets - 1),
        }
    finally:
        abort_all(clients)


async def run(quick: bool = False) -> Outcome:
    out = Outcome("connections")
    sockets = 2_000 if quick else 10_000
    if quick:
        out.notes.append("quick run: 2,000 sockets")
    # each socket is one descriptor here and one in the server (both raised to the hard limit)
    if file_limit() < sockets + 100:
        sockets = file_limit() - 200
        out.notes.append(f"open-file limit {file_limit()}: only {sockets} sockets")
    figures = {}
    with temp_dir("bench-connections-") as d:
        db = str(d / "chat.db")
        create_database(db, users=users_for(sockets), chats=1).close()
        for kind in ("bare", "chatapi"):
            if kind == "bare":
                server, paths = baseline_server("broadcast"), ["/ws"] * sockets
            else:
                server = chatapi_server(db)
                paths = [
                    f"/chats/ws?token={token(1 + i // SOCKETS_PER_USER)}" for i in range(sockets)
                ]
            prefix = None
            if profiler.ENABLED:
                RESULTS.mkdir(parents=True, exist_ok=True)
                prefix = str(RESULTS / f"memory-{kind}")
                server = traced(server, prefix)
            with server:
                figures[kind] = f = await measure(server, paths, prefix)
            print(
                f"  connections {kind:7s}: {f['per_socket_kb']:.1f} KB/socket "
                f"({f['rss_before_mb']:.0f} -> {f['rss_after_mb']:.0f} MB), "
                f"{f['handshakes_per_s']:.0f} handshakes/s, {f['still_open']} open",
                flush=True,
            )
    out.raw = figures
    ours, bare = figures["chatapi"], figures["bare"]
    ratio = ours["per_socket_kb"] / bare["per_socket_kb"]
    notes = [
        (
            f"handshakes: {ours['cpu_per_handshake_ms']:.2f} ms CPU each vs "
            f"{bare['cpu_per_handshake_ms']:.2f} ms (bare)"
        )
    ]
    for kind, f in figures.items():
        if f["still_open"] < f["sockets"]:
            notes.append(f"{kind}: only {f['still_open']} of {f['sockets']} sockets stayed open")
    out.rows.append(Row(
        f"4. {sockets:,} idle authenticated sockets", "server memory per socket",
        ours["per_socket_kb"], bare["per_socket_kb"], ratio, "≤ 1.3×", ratio <= 1.3, unit="KB",
        baseline_name="bare broadcast", notes=notes,
    ))
    return out
