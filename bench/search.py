"""Scenario 9: one-word search over 1,000,000 messages, and what the index costs ingest.

The database is built directly with sqlite3 (the server's schema, so the FTS5 index is
filled by its triggers): 100 chats, the first 50 public, the others private with user 1
a member of half of them, so the caller's read rule has messages to skip. Each message
holds eight words of a 20,000-word vocabulary; the searched word stands in 1 % of them
(10,000 matches, 2,500 of them in chats user 1 may not read).

Search: `GET /search?q=WORD` (the newest 50) on one keep-alive connection, timed from the
request's first byte to the answer's last by a minimal client (KeepAlive), against the
statement the server runs (chatapi.sqlite.search_statement, its parameters set with
`.parameter set`) run by the `sqlite3` command line on the server's core, each statement timed by its
`.timer` (CPU; its wall figure has only millisecond resolution). Medians of
alternating rounds.

Ingest: CPU (this process, SQLite in it) to insert 20,000 messages in batches of 100,
one transaction each, with the index's triggers and without them.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import time
from urllib.parse import urlencode

import aiohttp

from chatapi import db, sqlite
from chatapi.db import MAX_ID

from .common import (
    SERVER_CORE,
    Meter,
    Outcome,
    Row,
    chatapi_server,
    create_database,
    median,
    process_sched,
    temp_dir,
    token,
)

TIMER = re.compile(r"Run Time: real [0-9.]+ user ([0-9.]+) sys ([0-9.]+)")
CHATS = 100
READER = 1
WORD = "cobalt"
RARE = "zircon"  # in 0.01 % of the messages
PAGE = 50
VOCABULARY = 20_000

def vocabulary(size: int) -> list[str]:
    rng = random.Random(1)
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        length = rng.randint(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(length)))
    return sorted(words - {WORD, RARE})


def texts(count: int, seed: int = 2):
    rng = random.Random(seed)
    words = vocabulary(VOCABULARY)
    for n in range(count):
        chosen = rng.choices(words, k=8)
        if n % 100 == 7:
            chosen[3] = WORD
        if n % 10_000 == 4_321:
            chosen[5] = RARE.capitalize()
        yield " ".join(chosen)


async def build(path: str, messages: int) -> None:
    create_database(path, users=4, chats=CHATS).close()
    # The server's own migration adds what schema.sql alone does not (chats.kind).
    await (await db.open_database(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        conn.execute("UPDATE chats SET kind = 'private' WHERE id > ?", (CHATS // 2,))
        conn.executemany(
            "INSERT INTO members (chat_id, user_id, role) VALUES (?, ?, 'member')",
            ((chat, READER) for chat in range(CHATS // 2 + 1, CHATS * 3 // 4 + 1)),
        )
        conn.executemany(
            "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
            ((1 + n % CHATS, 1 + n % 4, text) for n, text in enumerate(texts(messages))),
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


class KeepAlive:
    """One keep-alive HTTP/1.1 connection with as little client work as a request can
    have: the request's bytes prepared once, the answer read to its Content-Length.

    Only the server's part is timed, the way `.timer` times only the statement: aiohttp's
    client adds 0.1-0.6 ms of its own to a request here (building it, reading the
    headers into objects), which is the client's cost, not the search's. Each answer is
    decoded and checked after its time is taken.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host = host
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())

    def get(self, target: str) -> tuple[int, bytes, float]:
        """(status, body, milliseconds from the request's first byte to the answer's last)."""
        request = f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}\r\n".encode()
        t = time.perf_counter()
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += self._recv()
        elapsed = (time.perf_counter() - t) * 1000
        return int(head.split(b" ", 2)[1]), body, elapsed

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def search_times(client: KeepAlive, word: str, rounds: int, pid: int,
                 usage: list[tuple[float, float]] | None = None) -> list[float]:
    """Milliseconds of each request; `usage` gets the server's (CPU, run-queue wait) of each."""
    times = []
    target = "/search?" + urlencode({"q": word})
    for _ in range(rounds):
        s0 = process_sched(pid)
        status, body, elapsed = client.get(target)
        s1 = process_sched(pid)
        times.append(elapsed)
        if usage is not None:
            usage.append(((s1[0] - s0[0]) * 1000, (s1[1] - s0[1]) * 1000))
        found = json.loads(body) if status == 200 else None
        if not found or any(word not in m["text"].lower() for m in found):
            raise RuntimeError(f"bad search answer: {status} {body[:200]!r}")
    return times


async def aiohttp_times(http: aiohttp.ClientSession, url: str, word: str, rounds: int) -> list[float]:
    """Milliseconds of each request through aiohttp's client, decoded (for the notes)."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        async with http.get(url + "/search", params={"q": word}) as resp:
            found = await resp.json()
        times.append((time.perf_counter() - t) * 1000)
        if resp.status != 200 or not found:
            raise RuntimeError(f"bad search answer: {resp.status} {str(found)[:200]}")
    return times


def cli_script(word: str) -> tuple[str, str]:
    """(setup, statement): the server's own search statement and its parameters, for the
    sqlite3 command line (`.parameter set`)."""
    values = {":query": sqlite.fts_query([word]), ":before": MAX_ID, ":limit": PAGE,
              ":user": READER}
    setup = "".join(
        f".parameter set {name} " + (f"""'{value.replace("'", "''")}'""" if isinstance(value, str) else f"{value}") + "\n"
        for name, value in values.items()
    )
    return setup, " ".join(sqlite.search_statement(in_chat=False).split()) + ";\n"


def sqlite3_times(path: str, word: str, statements: int) -> list[float]:
    """Milliseconds of each of `statements` runs of the statement in one sqlite3 command
    line process on the server's core: the CPU its `.timer` reports (user + sys; its wall
    figure has only millisecond resolution, and the warm statement does not wait)."""
    exe = shutil.which("sqlite3")
    if exe is None:
        raise RuntimeError("the sqlite3 command line is missing: apt-get install sqlite3")
    setup, statement = cli_script(word)
    script = setup + ".timer on\n" + (".once /dev/null\n" + statement) * statements
    done = subprocess.run(["taskset", "-c", str(SERVER_CORE), exe, path], input=script.encode(),
                          check=True, capture_output=True)
    times = [float(user) + float(system) for user, system in
             TIMER.findall(done.stdout.decode() + done.stderr.decode())]
    if len(times) != statements:
        raise RuntimeError(f"sqlite3 timed {len(times)} statements, not {statements}: "
                           f"{done.stderr.decode()[:300]}")
    return [1000 * t for t in times]


def check_sqlite3_rows(path: str, word: str, expected: int) -> None:
    setup, statement = cli_script(word)
    done = subprocess.run(["sqlite3", path], input=(setup + statement).encode(),
                          capture_output=True, check=True)
    if done.stdout.count(b'"id":') != expected:
        raise RuntimeError(f"sqlite3 found another number of messages: {done.stderr[:300]!r}")


def ingest_cpu(directory, count: int, batch: int = 100) -> dict[str, float]:
    """CPU microseconds per inserted message, with the search index's triggers and without."""
    result = {}
    rows = [(1 + n % CHATS, 1 + n % 4, text) for n, text in enumerate(texts(count, seed=3))]
    for kind in ("with index", "without index"):
        path = str(directory / f"ingest-{kind.split()[0]}.db")
        conn = create_database(path, users=4, chats=CHATS)
        if kind == "without index":
            for trigger in ("insert", "update", "delete"):
                conn.execute(f"DROP TRIGGER messages_fts_{trigger}")
        conn.isolation_level = None
        c0 = time.process_time()
        for start in range(0, count, batch):
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO messages (chat_id, owner_id, text) VALUES (?, ?, ?)",
                rows[start:start + batch],
            )
            conn.execute("COMMIT")
        result[kind] = (time.process_time() - c0) * 1e6 / count
        conn.close()
    return result


async def run(quick: bool = False) -> Outcome:
    out = Outcome("search")
    messages, rounds, statements, ingest = (1_000_000, 20, 10, 20_000) if not quick else (
        20_000, 3, 10, 1_000)
    if quick:
        out.notes.append(f"quick run: {messages:,} messages")
    with temp_dir("bench-search-") as d:
        path = str(d / "chat.db")
        t = time.perf_counter()
        await build(path, messages)
        out.raw["build_s"] = time.perf_counter() - t
        print(f"  search: built {messages:,} messages in {out.raw['build_s']:.1f} s", flush=True)
        check_sqlite3_rows(path, WORD, PAGE)
        with chatapi_server(path) as server:
            headers = {"Authorization": f"Bearer {token(READER)}"}
            client = KeepAlive(server.url, headers)
            try:
                search_times(client, WORD, 5, server.pid)  # warm up
                sqlite3_times(path, WORD, 5)
                ours: list[float] = []
                theirs: list[float] = []
                usage: list[tuple[float, float]] = []
                meter = Meter(server)
                for _ in range(rounds):  # alternate, so that drift hits both alike
                    ours += search_times(client, WORD, 10, server.pid, usage)
                    theirs += sqlite3_times(path, WORD, statements)
                other_load = meter.stop().as_dict()["other_load"]
                rare = median(search_times(client, RARE, 20, server.pid))
                rare_cli = median(sqlite3_times(path, RARE, statements))
            finally:
                client.close()
            async with aiohttp.ClientSession(headers=headers) as http:
                through_aiohttp = median(await aiohttp_times(http, server.url, WORD, 3 * rounds))
        out.raw["ingest_us"] = ingest_cpu(d, ingest)
    mine, cli = median(ours), median(theirs)
    cpu = median([c for c, _ in usage])
    waited = median([w for _, w in usage])
    out.raw.update(server_ms=ours, sqlite3_ms=theirs, server_cpu_and_wait_ms=usage,
                   rare_ms=rare, rare_sqlite3_ms=rare_cli, other_load=other_load,
                   aiohttp_client_ms=through_aiohttp)
    added = out.raw["ingest_us"]["with index"] - out.raw["ingest_us"]["without index"]
    print(f"  search: {mine:.2f} ms (server CPU {cpu:.2f} ms, waiting for a core {waited:.2f} ms), "
          f"sqlite3 {cli:.2f} ms; rare word {rare:.2f} ms vs {rare_cli:.2f} ms; "
          f"ingest +{added:.1f} µs CPU/message", flush=True)
    scenario = f"9. search, one word in 1 %, {messages:,} messages"
    out.rows.append(Row(
        scenario, "median GET /search time (newest 50)",
        mine, cli, mine / cli, "≤ 2×", mine / cli <= 2, unit="ms", sensitive=True,
        other_load=other_load, baseline_name="the same statement in the sqlite3 command line",
        notes=[(f"the server waited {waited:.2f} ms of a request for its core (median); "
                f"a word in 0.01 %: {rare:.2f} ms against {rare_cli:.2f} ms; "
                f"through aiohttp's client, decoding the answer: {through_aiohttp:.2f} ms")],
    ))
    out.rows.append(Row(
        scenario, "median server CPU per GET /search", cpu, cli, cpu / cli, "≤ 2×", cpu / cli <= 2,
        unit="ms", baseline_name="the sqlite3 command line's CPU for the statement",
        notes=["CPU against CPU: robust to other people's load on this machine"],
    ))
    ingest_us = out.raw["ingest_us"]
    out.rows.append(Row(
        "9. search index, ingest", "CPU per stored message (batches of 100)",
        ingest_us["with index"], ingest_us["without index"],
        ingest_us["with index"] / ingest_us["without index"], "—", None, unit="µs",
        baseline_name="the same inserts without the index's triggers",
        notes=[f"the index adds {added:.1f} µs per message"],
    ))
    return out
