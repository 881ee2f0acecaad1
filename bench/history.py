"""Scenario 3, history: paging cost against chat size, and the full unpaged export.

The database is built directly with sqlite3 before the server starts: chat 1 holds
1,000 messages, chat 2 1,000,000 and chat 3 100,000 (ids in three blocks).

Paging: `GET /chats/messages?id=C&limit=50&before=B` with B drawn at random inside
the chat, alternating between the small and the big chat on one keep-alive
connection; the figure is the median request time (server CPU per page as well).

Export: `GET /chats/messages?id=3` read to the end, against the `sqlite3` command line
printing the same rows as JSON (`sqlite3 -json FILE 'SELECT ...'`, same columns as
the server's), both on the server's core, alternating, best of five each. Memory:
the server's peak RSS (VmHWM, reset through /proc/<pid>/clear_refs before each
export) minus its RSS before the request.
"""

from __future__ import annotations

import random
import resource
import shutil
import subprocess
import time

import aiohttp

from . import profiler
from .common import (
    SERVER_CORE,
    Meter,
    Outcome,
    Row,
    Server,
    chatapi_server,
    create_database,
    median,
    process_sched,
    temp_dir,
    token,
)

SMALL, BIG, EXPORT = 1, 2, 3
PAGE = 50
MB = 1024 * 1024

EXPORT_SQL = (
    "SELECT m.id, m.chat_id, m.owner_id, u.username, m.text, m.nonce, m.created_at "
    "FROM messages m JOIN users u ON u.id = m.owner_id WHERE m.chat_id = {chat} ORDER BY m.id"
)


def build(path: str, sizes: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Fill the chats with messages; returns chat -> (first id, last id)."""
    conn = create_database(path, users=4, chats=len(sizes))
    conn.execute("PRAGMA synchronous = OFF")
    ranges = {}
    for chat, size in sizes.items():
        (start,) = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        conn.execute(
            """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
               INSERT INTO messages (chat_id, owner_id, text, created_at)
               SELECT ?, 1 + i % 4,
                      'message ' || i || ' of the benchmark history, about seventy chars',
                      strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i, 'unixepoch')
               FROM n""",
            (size, chat),
        )
        ranges[chat] = (start + 1, start + size)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return ranges


async def page_times(
    http: aiohttp.ClientSession, server: Server, ranges: dict[int, tuple[int, int]], count: int
) -> dict[int, dict[str, float]]:
    rng = random.Random(7)
    times: dict[int, list[float]] = {SMALL: [], BIG: []}
    cpu: dict[int, float] = {SMALL: 0.0, BIG: 0.0}
    for i in range(count * 2 + 40):
        chat = SMALL if i % 2 == 0 else BIG
        first, last = ranges[chat]
        before = rng.randint(first + PAGE, last + 1)
        url = f"{server.url}/chats/messages?id={chat}&limit={PAGE}&before={before}"
        c0 = process_sched(server.pid)[0]
        t0 = time.perf_counter()
        async with http.get(url) as resp:
            body = await resp.read()
        elapsed = time.perf_counter() - t0
        c1 = process_sched(server.pid)[0]
        if resp.status != 200 or body.count(b'"id"') != PAGE:
            raise RuntimeError(f"bad page: {resp.status} {body[:200]!r}")
        if i >= 40:  # the first 20 of each are warm-up
            times[chat].append(elapsed)
            cpu[chat] += c1 - c0
    return {
        chat: {
            "median_ms": 1e3 * median(times[chat]),
            "cpu_per_page_ms": 1e3 * cpu[chat] / len(times[chat]),
            "pages": len(times[chat]),
        }
        for chat in times
    }


async def server_export(http: aiohttp.ClientSession, server: Server, rows: int) -> dict:
    server.reset_peak_rss()
    rss0 = server.rss()
    c0 = process_sched(server.pid)[0]
    t0 = time.perf_counter()
    size = 0
    async with http.get(f"{server.url}/chats/messages?id={EXPORT}") as resp:
        tail = b""
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            tail = (tail + chunk)[-16:]
    elapsed = time.perf_counter() - t0
    cpu = process_sched(server.pid)[0] - c0
    if resp.status != 200 or not tail.endswith(b"}]"):
        raise RuntimeError(f"export failed: {resp.status}")
    return {
        "seconds": elapsed,
        "server_cpu_s": cpu,
        "bytes": size,
        "rss_before_mb": rss0 / MB,
        "growth_mb": (server.peak_rss() - rss0) / MB,
    }


def sqlite_export(path: str, rows: int) -> dict:
    exe = shutil.which("sqlite3")
    if exe is None:
        raise RuntimeError("the sqlite3 command line is missing: apt-get install sqlite3")
    t0 = time.perf_counter()
    done = subprocess.run(
        ["taskset", "-c", str(SERVER_CORE), exe, "-json", path, EXPORT_SQL.format(chat=EXPORT)],
        capture_output=True,
        check=True,
    )
    elapsed = time.perf_counter() - t0
    if done.stdout.count(b'"id":') != rows:
        raise RuntimeError("sqlite3 exported a different number of rows")
    return {"seconds": elapsed, "bytes": len(done.stdout)}


async def run(quick: bool = False) -> Outcome:
    out = Outcome("history")
    sizes = {SMALL: 1_000, BIG: 1_000_000, EXPORT: 100_000}
    pages, exports = (150, 5) if not quick else (60, 1)
    if quick:
        sizes[BIG] = 200_000
        out.notes.append("quick run: the big chat holds 200,000 messages")
    with temp_dir("bench-history-") as d:
        db = str(d / "chat.db")
        t = time.perf_counter()
        ranges = build(db, sizes)
        out.raw["build_s"] = time.perf_counter() - t
        print(f"  history: built {sum(sizes.values()):,} messages in {out.raw['build_s']:.1f} s",
              flush=True)
        with chatapi_server(db) as server:
            headers = {"Authorization": f"Bearer {token(1)}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                with profiler.profile(server.pid, "history-pages"):
                    meter = Meter(server)
                    paging = await page_times(http, server, ranges, pages)
                    out.raw["paging_other_load"] = meter.stop().as_dict()["other_load"]
                out.raw["paging"] = paging
                print(
                    f"  history pages: {paging[SMALL]['median_ms']:.2f} ms on 1,000, "
                    f"{paging[BIG]['median_ms']:.2f} ms on {sizes[BIG]:,}",
                    flush=True,
                )
                # warm both paths (page cache, first use), then alternate; the memory
                # figure counts from before the first export the server ever made
                rss_start = server.rss()
                sqlite_export(db, sizes[EXPORT])
                first = await server_export(http, server, sizes[EXPORT])
                print(f"  history export (warm-up): server {first['seconds']:.2f} s "
                      f"(+{first['growth_mb']:.1f} MB)", flush=True)
                ours, theirs = [], []
                meter = Meter(server)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                for _ in range(exports):
                    theirs.append(sqlite_export(db, sizes[EXPORT]))
                    with profiler.profile(server.pid, "history-export"):
                        ours.append(await server_export(http, server, sizes[EXPORT]))
                    print(
                        f"  history export: server {ours[-1]['seconds']:.2f} s "
                        f"(+{ours[-1]['growth_mb']:.1f} MB), sqlite3 {theirs[-1]['seconds']:.2f} s",
                        flush=True,
                    )
                meter.stop()
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                sqlite_cpu = (after.ru_utime + after.ru_stime) - (
                    children.ru_utime + children.ru_stime
                )
                out.raw["export_other_load"] = max(0.0, meter.others - sqlite_cpu) / meter.wall
                out.raw["export"] = {"chatapi": ours, "sqlite3": theirs, "warm_up": first}
                peaks = [r["rss_before_mb"] + r["growth_mb"] for r in [first, *ours]]
                growth = max(peaks) - rss_start / MB
                out.raw["export_rss_start_mb"] = rss_start / MB
    small, big = paging[SMALL]["median_ms"], paging[BIG]["median_ms"]
    ratio = big / small
    out.rows.append(Row(
        "3. history page of 50 (before=)", f"median request time, {sizes[BIG]:,} vs 1,000 messages",
        big, small, ratio, "≤ 1.2×", ratio <= 1.2, unit="ms", sensitive=True,
        other_load=out.raw["paging_other_load"],
        baseline_name="same page on a 1,000-message chat",
        notes=[(f"server CPU per page: {paging[BIG]['cpu_per_page_ms']:.2f} ms vs "
                f"{paging[SMALL]['cpu_per_page_ms']:.2f} ms")],
    ))
    best_ours = min(ours, key=lambda r: r["seconds"])
    best_theirs = min(theirs, key=lambda r: r["seconds"])
    ratio = best_ours["seconds"] / best_theirs["seconds"]
    out.rows.append(Row(
        "3. history export, 100,000 messages", "time to the last byte",
        best_ours["seconds"], best_theirs["seconds"], ratio, "≤ 3×", ratio <= 3, unit="s",
        sensitive=True, other_load=out.raw["export_other_load"],
        baseline_name="sqlite3 -json, same rows",
        notes=[(f"server CPU {best_ours['server_cpu_s']:.2f} s; "
                f"JSON {best_ours['bytes'] / MB:.1f} MB (sqlite3's {best_theirs['bytes'] / MB:.1f} MB)")],
    ))
    out.rows.append(Row(
        "3. history export, 100,000 messages", "server memory growth (peak RSS − RSS before)",
        growth, 30.0, growth / 30.0, "≤ 30 MB", growth <= 30, unit="MB",
        baseline_name="the 30 MB limit",
        notes=[f"RSS {out.raw['export_rss_start_mb']:.0f} MB before the first export"],
    ))
    return out
