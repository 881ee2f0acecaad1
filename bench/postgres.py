"""Scenario 6, PostgreSQL: ingest and fan-out on PostgreSQL beside SQLite, and across 2 processes.

The in-run baseline is ChatAPI itself on SQLite (one process, the embedded default):
these rows say what moving to PostgreSQL costs, and what a second process adds. PostgreSQL
runs on this machine, unpinned, competing with the server and the generator for the two
cores; its own CPU is not counted in "server CPU". Informational rows: no target.

- Ingest: the 64 senders over 16 chats of scenario 2 (each waits for its ack), against
  one process, then against 2 processes of one database (senders alternate between them).
- Fan-out across processes: 100 subscribers on one process, the sender on another, 50
  messages/s: every frame crosses the database (commit, NOTIFY, read back).
"""

from __future__ import annotations

import asyncio

from . import ingest
from .common import (
    HOST,
    Meter,
    Outcome,
    Row,
    Server,
    chatapi_server,
    create_database,
    postgres_database,
    temp_dir,
    users_for,
)
from .common import token as make_token
from .fanout import Side, best
from .wsclient import abort_all, connect_many

SUBSCRIBERS = 100
RATE = 50.0


async def open_senders(servers: list[Server]) -> list[ingest.Sender]:
    """The 64 senders, alternating between `servers`."""
    senders: list[ingest.Sender] = []
    for k, server in enumerate(servers):
        indexes = list(range(k, ingest.SENDERS, len(servers)))
        paths = [f"/chats/ws?token={make_token(i + 1)}" for i in indexes]
        clients = await connect_many(HOST, server.port, paths, ingest.on_frame)
        for i, client in zip(indexes, clients, strict=True):
            client.tag = ingest.Sender(client, i)
            senders.append(client.tag)
    return senders


async def ingest_windows(servers: list[Server], seconds: float, rounds: int) -> list[dict]:
    senders = await open_senders(servers)
    try:
        await asyncio.sleep(1.2)
        await ingest.drive(senders, 1.0)
        windows = []
        for _ in range(rounds):
            for s in senders:
                s.acked = 0
            meters = [Meter(server) for server in servers]
            await ingest.drive(senders, seconds)
            for meter in meters:
                meter.stop()
            acked = sum(s.acked for s in senders)
            windows.append({
                "acked": acked, "per_s": acked / meters[0].wall,
                "server_util": sum(m.as_dict()["server_util"] for m in meters),
                "generator_util": meters[0].as_dict()["generator_util"],
                "other_load": meters[0].as_dict()["other_load"],
            })
        return windows
    finally:
        abort_all(s.client for s in senders)


async def fanout_windows(side: Side, seconds: float, rounds: int) -> list[dict]:
    try:
        await side.setup(SUBSCRIBERS)
        await side.warm_up()
        await asyncio.sleep(1.0)
        return [await side.window(SUBSCRIBERS, RATE, seconds, f"pg-fanout-{side.kind}-{r}")
                for r in range(rounds)]
    finally:
        abort_all(side.clients)


async def run(quick: bool = False) -> Outcome:
    out = Outcome("postgres")
    seconds, rounds = (1.5, 1) if quick else (2.5, 3)
    users, chats = max(ingest.SENDERS, 1 + users_for(SUBSCRIBERS)), ingest.CHATS
    ingest_runs: dict[str, list[dict]] = {}
    fanout_runs: dict[str, list[dict]] = {}
    with temp_dir("bench-pg-") as d:
        db = str(d / "chat.db")
        create_database(db, users=users, chats=chats).close()
        with chatapi_server(db) as lite:
            ingest_runs["sqlite"] = await ingest_windows([lite], seconds, rounds)
            fanout_runs["sqlite"] = await fanout_windows(Side("sqlite", lite), seconds, rounds)
    async with postgres_database(users, chats) as url:
        with chatapi_server(url) as one:
            ingest_runs["postgres"] = await ingest_windows([one], seconds, rounds)
            fanout_runs["postgres"] = await fanout_windows(Side("postgres", one), seconds, rounds)
    async with postgres_database(users, chats) as url:
        with chatapi_server(url) as first, chatapi_server(url) as second:
            ingest_runs["postgres, 2 processes"] = await ingest_windows(
                [first, second], seconds, rounds
            )
            side = Side("postgres, across 2 processes", first, sender_port=second.port)
            fanout_runs[side.kind] = await fanout_windows(side, seconds, rounds)
    out.raw = {"ingest": ingest_runs, "fanout": fanout_runs}

    lite = max(ingest_runs["sqlite"], key=lambda w: w["per_s"])
    for kind in ("postgres", "postgres, 2 processes"):
        w = max(ingest_runs[kind], key=lambda w: w["per_s"])
        print(f"  ingest {kind}: {w['per_s']:.0f}/s (SQLite {lite['per_s']:.0f}/s)", flush=True)
        out.rows.append(Row(
            f"6. PostgreSQL ingest, 64 senders / 16 chats, {kind}",
            "acknowledged messages per second", w["per_s"], lite["per_s"],
            w["per_s"] / lite["per_s"], "informational", None, unit="/s",
            baseline_name="ChatAPI on SQLite, one process",
            server_util=w["server_util"], generator_util=w["generator_util"],
            other_load=w["other_load"], sensitive=True,
            notes=["server CPU summed over the processes; PostgreSQL's own CPU not counted"],
        ))
    lite = best(fanout_runs["sqlite"], "p99_ms")
    for kind in ("postgres", "postgres, across 2 processes"):
        w = best(fanout_runs[kind], "p99_ms")
        print(f"  fan-out {kind}: p99 {w['p99_ms']:.1f} ms (SQLite {lite['p99_ms']:.1f} ms)",
              flush=True)
        notes = [f"only {w['delivered']} of {w['expected']} frames arrived"
                 for w in fanout_runs[kind] if w["delivered"] < w["expected"]]
        out.rows.append(Row(
            f"6. PostgreSQL fan-out N={SUBSCRIBERS}, {RATE:g} msg/s, {kind}",
            "p99 delivery latency", w["p99_ms"], lite["p99_ms"], w["p99_ms"] / lite["p99_ms"],
            "informational", None, unit="ms", baseline_name="ChatAPI on SQLite, one process",
            server_util=w["server_util"], generator_util=w["generator_util"],
            other_load=w["other_load"], sensitive=True, notes=notes,
        ))
    return out
