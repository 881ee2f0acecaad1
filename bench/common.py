"""Shared machinery: core pinning, server processes, CPU and memory readings, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import jwt

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema.sql"
PG_SCHEMA = ROOT / "schema_postgres.sql"
RESULTS = Path(__file__).resolve().parent / "results"

SERVER_CORE = 0
GENERATOR_CORE = 1
# Known to both sides, so the generator mints tokens instead of logging in 10,000 times.
SECRET = "b" * 64
# One generator process at or above this share of its core is treated as the bottleneck.
GENERATOR_BOUND = 0.90
# Other processes using this much of our two cores (in cores) make throughput and
# latency figures unreliable (CPU per operation much less so).
CONTENDED = 0.25
HOST = "127.0.0.1"
# ChatAPI refuses more open sockets per user than its limit (CHATAPI_MAX_SOCKETS_PER_USER,
# 32 by default): the many-socket scenarios spread their sockets over users of 32 each.
SOCKETS_PER_USER = 32


def users_for(sockets: int) -> int:
    return -(-sockets // SOCKETS_PER_USER)


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_generator() -> str:
    """Pin this process (the load generator) to its core and raise its file limit."""
    available = cores()
    note = ""
    if GENERATOR_CORE in available and SERVER_CORE in available:
        os.sched_setaffinity(0, {GENERATOR_CORE})
    else:
        note = f"only cores {available} available: server and generator share them"
    raise_file_limit()
    return note


def raise_file_limit() -> None:
    """Raise this process's open-file limit to its hard limit (not the system's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _server_child_setup() -> None:
    # Runs in the child between fork and exec: the server gets its own core.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {SERVER_CORE})
    raise_file_limit()


def file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_sched(pid: int | str) -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a CPU) of every thread so far.

    From /proc/<pid>/task/*/schedstat (nanoseconds). The wait is how much other
    processes on the same core (other people's tests on this shared machine) held it up.
    """
    run = wait = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                fields = f.read().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9


def thread_cpu(pid: int | str, tid: int | str) -> float:
    """CPU seconds of one thread so far (for a server's event loop: tid = pid)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def cores_busy() -> float:
    """Busy seconds so far of the server's and the generator's cores (/proc/stat), steal included."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name in (f"cpu{SERVER_CORE}", f"cpu{GENERATOR_CORE}"):
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
                busy += user + nice + system + irq + softirq + steal
    return busy / tick


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by every thread of a process."""
    return process_sched(pid)[0]


def proc_status(pid: int, key: str) -> int:
    """A kB figure of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class Server:
    """A server subprocess pinned to the server core; the first stdout line is its URL."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str | None] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        # The caller's CHATAPI_* settings must not leak into a measurement.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPI_")}
        for key, value in (env or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())

    def start(self, timeout: float = 60.0) -> Self:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self.env,
            preexec_fn=_server_child_setup,  # noqa: PLW1509 (affinity and rlimit only)
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""  # type: ignore[union-attr]
        if not line.startswith("http"):
            tail = self.stderr_tail()  # before stop() closes the file
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {tail}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def parts(self) -> dict[int, str]:
        """The processes whose CPU is this server's: pid -> "server" (its own code, whose
        main thread is an event loop) or "database" (a database server process working
        for it). A plain server is its one process."""
        return {self.pid: "server"}

    def cpu(self) -> float:
        return process_cpu(self.pid)

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    def stop(self, graceful: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# `python -m bench --experiment NAME`: fan-out and ingest add a ChatAPI with that
# patch (bench/experiments.py) next to the one as committed, and compare the two.
EXPERIMENT: str | None = None
CHATAPI_KINDS = ("chatapi", "experiment")


def launch(module: str, *args: str) -> list[str]:
    """The command line that runs a server module on the run's event loop (bench.launch)."""
    return [sys.executable, "-m", "bench.launch", module, *args]


def chatapi_server(db_path: str, bcrypt_rounds: int | None = 4, **env: str) -> Server:
    """`python -m chatapi --port 0 --db FILE`, access log off, known token secret."""
    return Server(
        "chatapi",
        launch("chatapi", "--host", HOST, "--port", "0", "--db", db_path),
        chatapi_settings(bcrypt_rounds, **env),
    )


def chatapi_settings(bcrypt_rounds: int | None = 4, **env: str) -> dict[str, str | None]:
    """The environment of a ChatAPI under test (chatapi_server)."""
    return {
        "CHATAPI_ACCESS_LOG": "false",
        "CHATAPI_SECRET": SECRET,
        "CHATAPI_MAX_SOCKETS_PER_USER": str(SOCKETS_PER_USER),
        # The per-socket frame budget (20/s by default) would make the ingest senders and
        # the fan-out sender measure the limiter, not the server: lifted for the bench.
        "CHATAPI_FRAMES_PER_SECOND": "100000",
        # None: the server's default cost (12), the point of the login storm.
        "CHATAPI_BCRYPT_ROUNDS": None if bcrypt_rounds is None else str(bcrypt_rounds),
        "PYTHONPATH": str(ROOT),
        **env,
    }


def baseline_server(mode: str) -> Server:
    return Server(
        f"bare {mode}",
        launch("bench.baseline", "--mode", mode, "--host", HOST, "--port", "0"),
        {"PYTHONPATH": str(ROOT)},
    )


def peer_server() -> Server:
    """The FastAPI/Starlette broadcast on uvicorn (bench/peer.py)."""
    return Server(
        "FastAPI peer",
        [sys.executable, "-m", "bench.peer", "--host", HOST, "--port", "0"],
        {"PYTHONPATH": str(ROOT)},
    )


class Target:
    """The ChatAPI under test, for the scenarios that compare it with baselines
    (fan-out, ingest): how its database is prepared, how it is started.

    This one is the embedded default: a SQLite file built by `create_database`
    and `python -m chatapi --db FILE`. Another backend (PostgreSQL, several
    processes) is measured by passing a subclass to those scenarios' `run()`:
    `database` seeds users 1..users and chats 1..chats and returns what
    `server` needs to reach it (a URL); `server` returns a Server whose first
    stdout line is the URL to connect to. Everything else (baselines, windows,
    the table) stays the same.
    """

    name = "SQLite"

    def database(self, directory: Path, users: int, chats: int) -> str:
        """Create the database with `users` users and `chats` chats; returns its location."""
        path = str(directory / "chat.db")
        create_database(path, users=users, chats=chats).close()
        return path

    def server(self, database: str, **env: str) -> Server:
        """The ChatAPI server on `database` (not started), with extra environment."""
        return chatapi_server(database, **env)

    def experiment(self, database: str) -> Server:
        """The same server with the run's experiment patched in (BENCH_EXPERIMENT)."""
        assert EXPERIMENT is not None
        return self.server(database, BENCH_EXPERIMENT=EXPERIMENT)


def token(user_id: int, version: int = 0, ttl: int = 3600) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "ver": version, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, SECRET.encode(), algorithm="HS256")


# Databases built directly, before the server starts


PLACEHOLDER_HASH = "$2b$04$" + "a" * 53  # nobody logs in with it


def create_database(
    path: str,
    users: int,
    chats: int,
    password_hash: str = PLACEHOLDER_HASH,
) -> sqlite3.Connection:
    """A database with the server's schema, `users` users (user1..) and `chats` chats."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA.read_text("utf-8"))
    conn.executemany(
        "INSERT INTO users (id, email, username, username_key, password_hash) VALUES (?,?,?,?,?)",
        (
            (i, f"user{i}@example.com", f"user{i}", f"user{i}", password_hash)
            for i in range(1, users + 1)
        ),
    )
    conn.executemany(
        "INSERT INTO chats (id, name, owner_id) VALUES (?, ?, 1)",
        ((i, f"chat {i}") for i in range(1, chats + 1)),
    )
    conn.commit()
    return conn


POSTGRES_URL = os.environ.get(
    "CHATAPI_BENCH_POSTGRES_URL", "postgresql://chatapi:chatapi@127.0.0.1:5432/chatapi_test"
)


async def postgres_schema(schema: str, users: int, chats: int) -> str:
    """Make `schema` afresh in the database at CHATAPI_BENCH_POSTGRES_URL with the
    server's schema, `users` users (user1..) and `chats` chats; the URL that uses it."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path = {schema}")
        await conn.execute(PG_SCHEMA.read_text("utf-8"))
        await conn.executemany(
            "INSERT INTO users (id, email, username, username_key, password_hash) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(i, f"user{i}@example.com", f"user{i}", f"user{i}", PLACEHOLDER_HASH)
             for i in range(1, users + 1)],
        )
        await conn.executemany(
            "INSERT INTO chats (id, name, owner_id) VALUES ($1, $2, 1)",
            [(i, f"chat {i}") for i in range(1, chats + 1)],
        )
    finally:
        await conn.close()
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}search_path={schema}"


async def drop_postgres_schemas(schemas: Sequence[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def postgres_database(name: str, users: int, chats: int) -> AsyncIterator[str]:
    """postgres_schema of a schema `bench<pid>_<name>`, dropped after; its URL."""
    schema = f"bench{os.getpid()}_{name}"
    try:
        yield await postgres_schema(schema, users, chats)
    finally:
        await drop_postgres_schemas([schema])


# Statistics


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def server_sched(server: Server) -> dict[int, tuple[str, float, float, float]]:
    """Per process of `server` (Server.parts): (part, CPU s, run-queue wait s, main thread CPU s)."""
    out = {}
    for pid, part in server.parts().items():
        try:
            run, wait = process_sched(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        out[pid] = (part, run, wait, thread_cpu(pid, pid))
    return out


class Meter:
    """CPU of the server and of this generator over a window, their run-queue waits, wall time.

    The server's CPU is that of every process of Server.parts(): a process that
    appears during the window counts from its start, one that ends is lost.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server0 = server_sched(server)
        self.wall0 = time.perf_counter()
        self.gen0 = process_sched("self")
        self.busy0 = cores_busy()
        self.wall = self.server_cpu = self.gen_cpu = self.loop_cpu = self.database_cpu = 0.0
        self.server_wait = self.gen_wait = self.others = 0.0

    def stop(self) -> Meter:
        self.wall = time.perf_counter() - self.wall0
        busy = cores_busy()
        gen = process_sched("self")
        for pid, (part, run, wait, main) in server_sched(self.server).items():
            _, run0, wait0, main0 = self.server0.get(pid, (part, 0.0, 0.0, 0.0))
            self.server_cpu += run - run0
            self.server_wait += wait - wait0
            if part == "server":
                # the main thread: the event loop; the rest are the database's and executors' threads
                self.loop_cpu += main - main0
            else:
                self.database_cpu += run - run0
        self.gen_cpu = gen[0] - self.gen0[0]
        self.gen_wait = gen[1] - self.gen0[1]
        # Whatever else ran on the two cores: other people's work (10 ms resolution).
        self.others = max(0.0, busy - self.busy0 - self.server_cpu - self.gen_cpu)
        return self

    @property
    def server_util(self) -> float:
        return self.server_cpu / self.wall if self.wall else math.nan

    @property
    def gen_util(self) -> float:
        return self.gen_cpu / self.wall if self.wall else math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": self.wall,
            "server_cpu_s": self.server_cpu,
            "server_loop_cpu_s": self.loop_cpu,
            # of server_cpu_s: the database server's processes (PostgreSQL backends)
            "server_database_cpu_s": self.database_cpu,
            "generator_cpu_s": self.gen_cpu,
            "server_util": self.server_util,
            "generator_util": self.gen_util,
            # CPU used on our two cores by other processes, in cores (0.5 = half a core)
            "other_load": self.others / self.wall if self.wall else math.nan,
            # share of the window the process was runnable but another thread had its
            # core (for the server this includes its own threads: one core, many threads)
            "server_runqueue_wait": self.server_wait / self.wall if self.wall else math.nan,
            "generator_runqueue_wait": self.gen_wait / self.wall if self.wall else math.nan,
        }


# Results


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    metric: str
    ours: float
    baseline: float
    ratio: float
    target: str
    met: bool | None
    unit: str = ""
    baseline_name: str = ""
    server_util: float = math.nan  # ChatAPI server's share of its core in the window
    generator_util: float = math.nan  # the generator's share of its core in the window
    baseline_server_util: float = math.nan
    baseline_generator_util: float = math.nan
    # CPU that other processes used on our two cores during the windows, in cores
    other_load: float = math.nan
    # a throughput or latency figure: it needs the CPU promptly, contention distorts it
    sensitive: bool = False
    # set by a scenario that sees the generator limit a figure in another way than by
    # its average load (e.g. draining a burst of fan-out frames slower than it is sent)
    generator_limited: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def contended(self) -> bool:
        return self.sensitive and not math.isnan(self.other_load) and self.other_load >= CONTENDED

    @property
    def generator_bound(self) -> bool:
        return self.generator_limited or any(
            u >= GENERATOR_BOUND
            for u in (self.generator_util, self.baseline_generator_util)
            if not math.isnan(u)
        )


@dataclass
class Outcome:
    """What a scenario hands back: table rows, raw figures, notes."""

    name: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")


async def sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    # /tmp is on the machine's disk here (not a RAM disk), so fsync costs what it costs.
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def commit_floor(directory: Path, count: int = 200) -> float:
    """CPU microseconds of one durable commit of one message (bench/floor.py), on the server core."""
    path = str(directory / "floor.db")
    create_database(path, users=1, chats=1).close()
    out = subprocess.run(
        [sys.executable, "-m", "bench.floor", path, str(count)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_server_child_setup,
    )
    return float(out.stdout.strip())
