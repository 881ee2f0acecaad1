"""Faults: kill -9, a peer that stops answering, SIGTERM under load, a reconnect storm.

Real server processes (`python -m chatapi`) or a ChatServer thread, real sockets on
127.0.0.1, real SQLite files under tmp_path and (but for the kill -9 cycles, whose
"nobody online right after a restart" is SQLite's: on PostgreSQL a killed process's
users stay online until its lease lapses, see test_scaleout.py) a fresh PostgreSQL schema. Every wait is bounded. A test that uses
randomness prints its seed; set CHATAPI_FAULT_SEED to replay a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from conftest import POSTGRES_URL, run_sql

from chatapi import create_app
from chatapi.testing import ChatServer

SERVER_ENV = {
    "PATH": "/usr/bin:/bin",
    "CHATAPI_BCRYPT_ROUNDS": "4",
    "CHATAPI_ACCESS_LOG": "false",
    # The writers here post as fast as the server acknowledges: no frame rate limit.
    "CHATAPI_FRAMES_PER_SECOND": "1000000",
}
START_TIMEOUT = 30.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)
WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_close=5)


def fault_seed() -> int:
    seed = int(os.environ.get("CHATAPI_FAULT_SEED") or time.time_ns() % 2**32)
    print(f"CHATAPI_FAULT_SEED={seed}")  # shown with the failure by pytest
    return seed


# A server process


class ServerProcess:
    """`python -m chatapi --port 0 --db FILE_OR_URL`; `url` comes from the first line on stdout."""

    def __init__(self, db_path: Path | str, *args: str, cwd: Path | None = None, **env: str) -> None:
        self.db_path = db_path
        self.args = args
        self.cwd = cwd or Path(db_path).parent
        self.env = {**SERVER_ENV, **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.output: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):] + "/chats/ws"

    @property
    def log(self) -> str:
        return "".join(self.output)

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.returncode

    async def start(self) -> ServerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatapi", "--port", "0", "--db", str(self.db_path), *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers.append(asyncio.create_task(self._collect(self.proc.stderr)))
        line = ""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT):
                line = (await self.proc.stdout.readline()).decode().strip()
        self._readers.append(asyncio.create_task(self._collect(self.proc.stdout)))
        if not line.startswith("http://127.0.0.1:"):
            await self.kill()
            raise AssertionError(f"no URL on the server's stdout: {line!r}\n{self.log}")
        self.url = line
        return self

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        # Drained all the time, so that a chatty server never blocks on a full pipe.
        while line := await stream.readline():
            self.output.append(line.decode(errors="replace"))

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self._reap()

    async def terminate(self, timeout: float) -> float:
        """SIGTERM; the seconds until exit (inf, and SIGKILL, if not within `timeout`)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        except TimeoutError:
            await self.kill()
            return float("inf")
        elapsed = time.monotonic() - started
        await self._reap()
        return elapsed

    async def _reap(self) -> None:
        assert self.proc is not None
        async with asyncio.timeout(10):
            await self.proc.wait()
            await asyncio.gather(*self._readers)


@contextlib.asynccontextmanager
async def server_process(
    db_path: Path | str, cwd: Path | None = None, **env: str
) -> AsyncIterator[ServerProcess]:
    server = await ServerProcess(db_path, cwd=cwd, **env).start()
    try:
        yield server
    finally:
        await server.kill()  # a no-op when the test already stopped it


# HTTP


async def api(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    status: int = 200,
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with http.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        assert resp.status == status, f"{method} {url}: {resp.status} {data}"
        return data


async def register(http: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    body = {"email": f"{name}@example.com", "username": name, "password": f"password-{name}"}
    return await api(http, "POST", base + "/auth/reg", body=body, status=201)


async def create_chat(http: aiohttp.ClientSession, base: str, token: str, name: str) -> int:
    chat = await api(http, "POST", base + "/chats/create", token=token, body={"name": name},
                     status=201)
    return chat["id"]


async def history(http: aiohttp.ClientSession, base: str, token: str, chat_id: int) -> list[dict]:
    return await api(http, "GET", f"{base}/chats/messages?id={chat_id}", token=token)


async def online_users(http: aiohttp.ClientSession, base: str, token: str) -> list[str]:
    users = await api(http, "GET", base + "/users/", token=token)
    return [user["username"] for user in users if user["is_online"]]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll `check` until true; the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """`eventually` for a condition on the test's own state."""

    async def check() -> bool:
        return condition()

    return await eventually(check, timeout, what)


# Websocket clients


@dataclass
class Outbox:
    """What one writer posts. Unacknowledged messages outlive a connection: the next one
    resends them with their nonce, so each should end up stored exactly once."""

    prefix: str
    chat_id: int
    pending: dict[str, str] = field(default_factory=dict)  # nonce -> text, not yet acknowledged
    acked: dict[str, int] = field(default_factory=dict)  # nonce -> message id
    created: int = 0

    def new(self) -> str:
        nonce = f"{self.prefix}-{self.created}"
        self.created += 1
        self.pending[nonce] = f"message {nonce}"
        return nonce

    def all_nonces(self) -> set[str]:
        return {f"{self.prefix}-{n}" for n in range(self.created)}


SEND_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError)


class Peer:
    """One websocket client. Records the message frames it sees (in `seen`: nonce -> id,
    shared between peers) and how its connection ended; with an outbox, posts messages
    keeping at most `window` unacknowledged. Can connect again after a drop."""

    def __init__(
        self,
        token: str,
        seen: dict[str, int],
        problems: list[str],
        outbox: Outbox | None = None,
        window: int = 8,
    ) -> None:
        self.token = token
        self.seen = seen
        self.problems = problems
        self.outbox = outbox
        self.window = window
        self.ids: list[int] = []  # ids of the message frames received, in order, all connections
        self.joined = 0  # joined frames received, all connections
        self.joins: list[tuple[int | None, int]] = []  # (since, ids received before it)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.close_code: int | None = None  # code of the server's close frame, if one came
        self.end = "not connected"
        self._resent: set[str] = set()
        self._room = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def connect(self, http: aiohttp.ClientSession, ws_url: str) -> bool:
        self.close_code, self.end = None, "open"
        try:
            self.ws = await http.ws_connect(
                ws_url, params={"token": self.token}, timeout=WS_TIMEOUT
            )
        except (aiohttp.ClientError, OSError) as exc:
            self.ws, self.end = None, f"connect failed: {exc!r}"
            return False
        return True

    def start(self, *, budget: int = 0, interval: float = 0.0, join: int | None = None,
              since: int | None = None) -> None:
        """Read frames until the connection ends; meanwhile join a chat, or post
        (resend the outbox's pending messages, then `budget` new ones)."""
        assert self.ws is not None
        self._reader = asyncio.create_task(self._receive(self.ws))
        if join is not None:
            frame: dict[str, Any] = {"type": "join", "chat_id": join}
            if since is not None:
                frame["since"] = since
            self.joins.append((since, len(self.ids)))
            self._sender = asyncio.create_task(self._send_frames(self.ws, [frame]))
        elif self.outbox is not None:
            self._sender = asyncio.create_task(self._post(self.ws, budget, interval))

    async def _send_frames(self, ws: aiohttp.ClientWebSocketResponse, frames: list[dict]) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            for frame in frames:
                await ws.send_json(frame)

    async def _post(self, ws: aiohttp.ClientWebSocketResponse, budget: int,
                    interval: float) -> None:
        assert self.outbox is not None
        box = self.outbox
        try:
            for nonce in list(box.pending):
                self._resent.add(nonce)
                await ws.send_json({"chat_id": box.chat_id, "text": box.pending[nonce],
                                    "nonce": nonce})
            for _ in range(budget):
                while len(box.pending) >= self.window:
                    self._room.clear()
                    await self._room.wait()
                nonce = box.new()  # pending before it is sent: a resend is always safe
                await ws.send_json({"chat_id": box.chat_id, "text": box.pending[nonce],
                                    "nonce": nonce})
                if interval:
                    await asyncio.sleep(interval)
        except SEND_ERRORS:
            return

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        closing = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                   aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._frame(json.loads(msg.data))
            elif msg.type in closing:
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    self.close_code = msg.data
                self.end = msg.type.name + (f" {msg.data!r}" if msg.data is not None else "")
                return
            else:
                self.problems.append(f"unexpected websocket message {msg}")

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "joined":
            self.joined += 1
        elif kind == "error":
            self.problems.append(f"error frame {frame}")
        elif kind == "message":
            message_id, nonce = frame["id"], frame.get("nonce")
            if nonce not in self._resent:  # a repeated nonce answers with the (older) original
                if self.ids and message_id <= self.ids[-1]:
                    self.problems.append(f"message {message_id} arrived after {self.ids[-1]}")
                self.ids.append(message_id)
            if nonce is None:
                return
            first = self.seen.setdefault(nonce, message_id)
            if first != message_id:
                self.problems.append(f"nonce {nonce} came as message {first} and {message_id}")
            box = self.outbox
            if box is not None and nonce in box.pending:
                del box.pending[nonce]
                box.acked[nonce] = message_id
                self._room.set()

    async def settle(self) -> None:
        """Wait until every message of the outbox is acknowledged, then close."""
        assert self.outbox is not None and self.ws is not None
        while self.outbox.pending and not self.ws.closed:
            self._room.clear()
            await self._room.wait()
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.finished()

    async def finished(self) -> None:
        """Wait until the connection has ended (the reader saw it), then stop posting."""
        if self._reader is not None:
            await self._reader
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, *SEND_ERRORS):
                await self._sender
        self._reader = self._sender = None


async def check_database(location: Path | str) -> tuple[dict[str, list[int]], list[str]]:
    """After the server stopped: integrity, then (nonce -> ids stored, users still online)."""
    if str(location).startswith("postgresql://"):
        rows = await run_sql(
            str(location), "SELECT nonce, id FROM messages WHERE nonce IS NOT NULL ORDER BY id"
        )
        stored: dict[str, list[int]] = {}
        for nonce, message_id in rows:
            stored.setdefault(nonce, []).append(message_id)
        online = await run_sql(
            str(location),
            "SELECT DISTINCT u.username FROM users u JOIN presence p ON p.user_id = u.id",
        )
        return stored, [name for (name,) in online]
    with contextlib.closing(sqlite3.connect(location)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        stored: dict[str, list[int]] = {}
        for nonce, message_id in conn.execute(
            "SELECT nonce, id FROM messages WHERE nonce IS NOT NULL ORDER BY id"
        ):
            stored.setdefault(nonce, []).append(message_id)
        online = [name for (name,) in conn.execute(
            "SELECT username FROM users WHERE is_online != 0"
        )]
    return stored, online


def not_stored_once(seen: dict[str, int], stored: dict[str, list[int]]) -> dict[str, Any]:
    """Acknowledged nonces that are not stored exactly once under the id they came with."""
    return {nonce: (message_id, stored.get(nonce)) for nonce, message_id in seen.items()
            if stored.get(nonce) != [message_id]}


# 1. kill -9


KILL_CYCLES = 22
WRITERS = 6  # sockets posting concurrently, over 3 users and 2 chats
WRITER_USERS = 3


async def check_after_restart(
    http: aiohttp.ClientSession, server: ServerProcess, token: str, chats: list[int],
    seen: dict[str, int], context: str,
) -> int:
    """Right after a restart: nobody online, every acknowledged message stored once."""
    ghosts = await online_users(http, server.url, token)
    assert ghosts == [], f"online right after a restart: {ghosts} {context}"
    stored: dict[str, list[int]] = {}
    total = 0
    for chat_id in chats:
        messages = await history(http, server.url, token, chat_id)
        ids = [message["id"] for message in messages]
        assert ids == sorted(set(ids)), f"history of chat {chat_id} out of order {context}"
        total += len(ids)
        for message in messages:
            if message.get("nonce") is not None:
                stored.setdefault(message["nonce"], []).append(message["id"])
    lost = not_stored_once(seen, stored)
    assert not lost, f"acknowledged, then not stored once: {lost} {context}"
    return total


async def test_kill_9_never_loses_an_acknowledged_message(tmp_path):
    seed = fault_seed()
    rng = random.Random(seed)
    db_path = tmp_path / "durable.db"
    seen: dict[str, int] = {}  # every nonce any socket saw, with its id: all were committed
    problems: list[str] = []
    stats: list[tuple[float, int]] = []  # per cycle: kill delay, messages acknowledged
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        async with server_process(db_path) as server:
            users = [await register(http, server.url, f"writer{n}") for n in range(WRITER_USERS)]
            owner = users[0]["token"]
            chats = [await create_chat(http, server.url, owner, f"durable {n}") for n in (1, 2)]
        outboxes = [Outbox(f"w{n}", chats[n % len(chats)]) for n in range(WRITERS)]
        token_of = [users[n % len(users)]["token"] for n in range(WRITERS)]

        for cycle in range(KILL_CYCLES):
            context = f"(cycle {cycle}, seed {seed})"
            acked_before = len(seen)
            async with server_process(db_path) as server:
                await check_after_restart(http, server, owner, chats, seen, context)
                peers = [Peer(token_of[n], seen, problems, outboxes[n]) for n in range(WRITERS)]

                async def write(peer: Peer, url: str = server.ws_url) -> None:
                    if await peer.connect(http, url):
                        peer.start(budget=100_000)
                        await peer.finished()

                writers = [asyncio.create_task(write(peer)) for peer in peers]
                try:
                    delay = rng.uniform(0.05, 0.8)
                    await asyncio.sleep(delay)
                    await server.kill()
                    assert server.returncode == -signal.SIGKILL
                    async with asyncio.timeout(10):  # the kernel closes the sockets at once
                        await asyncio.gather(*writers)
                finally:
                    for task in writers:
                        task.cancel()
            stats.append((delay, len(seen) - acked_before))

        # A last start: the checks, then every message still unacknowledged is resent.
        context = f"(after the last kill, seed {seed})"
        async with server_process(db_path) as server:
            total = await check_after_restart(http, server, owner, chats, seen, context)
            peers = [Peer(token_of[n], seen, problems, outboxes[n]) for n in range(WRITERS)]
            async with asyncio.timeout(30):
                for peer in peers:
                    assert await peer.connect(http, server.ws_url), peer.end
                    peer.start()
                await asyncio.gather(*(peer.settle() for peer in peers))
            assert await server.terminate(timeout=10) < 10
            assert server.returncode == 0, server.log

    print(f"{KILL_CYCLES} kills, {total} messages; (delay, acknowledged) per cycle: "
          + ", ".join(f"({d:.2f}, {n})" for d, n in stats))
    assert problems == [], f"{problems[:10]} (seed {seed})"
    assert "Traceback" not in server.log, server.log
    # The harness really killed writers mid-stream, not idle servers.
    assert sum(1 for _, acked in stats if acked) >= KILL_CYCLES // 2, stats
    stored, online = await check_database(db_path)
    assert online == []
    lost = not_stored_once(seen, stored)
    assert not lost, f"acknowledged, then not stored once: {lost} (seed {seed})"
    # Every message ever sent, retried after each crash with its nonce, is stored once.
    sent = set().union(*(box.all_nonces() for box in outboxes))
    assert all(not box.pending for box in outboxes)
    assert set(stored) == sent
    assert all(len(ids) == 1 for ids in stored.values())


# 2. A dead peer


class FreezableProxy:
    """A TCP proxy on 127.0.0.1. `freeze()` stops forwarding in both directions while
    keeping both connections open: a peer that vanished without a FIN or RST."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.frozen = False
        self._never = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, port: int = 0) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self.frozen = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if self.frozen:
                    await self._never.wait()  # hold the bytes; cancelled by close()
                sink.write(data)
                await sink.drain()
            if not self.frozen:
                sink.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()


HEARTBEAT = 0.5


@pytest.mark.parametrize("traffic", ["idle", "messages flowing to it"])
async def test_a_frozen_peer_goes_offline_within_two_heartbeats(database, traffic):
    async with (
        ChatServer(heartbeat=HEARTBEAT, bcrypt_rounds=4, db_path=database,
                   access_log=False, presence_interval=0.2) as server,
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
    ):
        alice = await register(http, server.url, "alice")
        bob = await register(http, server.url, "bob")
        chat = await create_chat(http, server.url, bob["token"], "dead peer")

        async def alice_online() -> bool:
            me = await api(http, "GET", server.url + "/users/me", token=alice["token"])
            return me["is_online"]

        async def alice_offline() -> bool:
            return not await alice_online()

        proxy = await FreezableProxy(server.port).start()
        problems: list[str] = []
        alice_peer = Peer(alice["token"], {}, problems)
        bob_peer = Peer(bob["token"], {}, problems, Outbox("bob", chat), window=1000)
        try:
            url = f"ws://127.0.0.1:{proxy.port}/chats/ws"
            assert await alice_peer.connect(http, url), alice_peer.end
            alice_peer.start(join=chat)  # its reader answers the server's pings
            await eventually(alice_online, 5, "alice online through the proxy")
            await until(lambda: alice_peer.joined == 1, 5, "alice joined")
            # Idle but alive: pings answered through the proxy keep alice online.
            await asyncio.sleep(4 * HEARTBEAT)
            assert await alice_online()

            if traffic != "idle":
                assert await bob_peer.connect(http, server.ws_url)
                bob_peer.start(budget=100, interval=0.1)  # under the frame rate limit
                await until(lambda: len(alice_peer.ids) >= 5, 5, "alice receives bob's messages")
            proxy.freeze()
            took = await eventually(alice_offline, 2 * HEARTBEAT + 1.5,
                                    "the frozen peer marked offline")
            # Found by the heartbeat, not by a closed connection: the client saw nothing.
            assert not alice_peer.ws.closed
            assert alice_peer.close_code is None
            print(f"frozen peer ({traffic}) offline after {took:.2f} s")
            if traffic != "idle":
                # The others are not held up: bob's posts keep being acknowledged.
                acked = len(bob_peer.outbox.acked)
                await until(lambda: len(bob_peer.outbox.acked) > acked + 5, 5,
                            "bob's messages acknowledged after the freeze")
            assert problems == []
        finally:
            await proxy.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await alice_peer.finished()
            if bob_peer.ws is not None:
                await bob_peer.close()


# 3. SIGTERM under load


GRACEFUL_CLIENTS = 20
GRACEFUL_WRITERS = 6
GRACEFUL_USERS = 5


async def test_sigterm_under_load_closes_with_1001_exits_0_and_keeps_every_ack(
    tmp_path, database
):
    seen: dict[str, int] = {}
    problems: list[str] = []
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
        server_process(database, cwd=tmp_path) as server,
    ):
        users = [await register(http, server.url, f"user{n}") for n in range(GRACEFUL_USERS)]
        chat = await create_chat(http, server.url, users[0]["token"], "graceful")
        peers = [
            Peer(users[n % GRACEFUL_USERS]["token"], seen, problems,
                 Outbox(f"g{n}", chat) if n < GRACEFUL_WRITERS else None, window=4)
            for n in range(GRACEFUL_CLIENTS)
        ]
        connected = await asyncio.gather(*(peer.connect(http, server.ws_url) for peer in peers))
        assert all(connected), [peer.end for peer in peers]
        for peer in peers:
            if peer.outbox is None:
                peer.start(join=chat)
            else:
                peer.start(budget=100_000)

        def acked() -> int:
            return sum(len(peer.outbox.acked) for peer in peers if peer.outbox is not None)

        def loaded() -> bool:
            return acked() >= 50 and all(peer.joined for peer in peers if peer.outbox is None)

        await until(loaded, 20, "50 messages acknowledged and every listener joined")
        open_at_term = [not peer.ws.closed for peer in peers]
        assert all(open_at_term)
        acked_at_term = acked()

        took = await server.terminate(timeout=5)
        assert took < 5, f"no exit within 5 s after SIGTERM\n{server.log}"
        assert server.returncode == 0, server.log
        async with asyncio.timeout(5):
            await asyncio.gather(*(peer.finished() for peer in peers))

    print(f"SIGTERM after {acked_at_term} acks, exit after {took:.2f} s, "
          f"{acked()} acks in all; ends: {Counter(peer.end for peer in peers)}")
    codes = [(n, peer.close_code, peer.end) for n, peer in enumerate(peers)
             if peer.close_code != 1001]
    assert codes == [], codes
    assert problems == []
    assert "Traceback" not in server.log, server.log
    stored, online = await check_database(database)
    assert online == []
    lost = not_stored_once(seen, stored)
    assert not lost, f"acknowledged, then not stored once: {lost}"
    # Sent but never acknowledged: a client resends these with their nonce.
    print(f"stored without an acknowledgement: {len(set(stored) - set(seen))}")


# 4. A reconnect storm


STORM_CLIENTS = 500
STORM_USERS = 20  # 25 sockets per user: under the default per-user socket limit (32)
STORM_MESSAGES = 40  # posted in all: before, during and after the storm


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_reconnect_storm_every_client_gets_the_whole_sequence_once(tmp_path, database):
    # Our 500 sockets here and the server's 500 there (the server inherits the limit).
    raise_file_limit(2 * STORM_CLIENTS + 200)
    seen: dict[str, int] = {}
    problems: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)  # one session, no pool limit on sockets
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT, connector=connector) as http,
        server_process(database, cwd=tmp_path) as server,
    ):
        writer_user = await register(http, server.url, "writer")
        users = [await register(http, server.url, f"reader{n}") for n in range(STORM_USERS)]
        chat = await create_chat(http, server.url, writer_user["token"], "storm")
        writer = Peer(writer_user["token"], seen, problems, Outbox("storm", chat), window=1)
        assert await writer.connect(http, server.ws_url), writer.end

        def posted(count: int) -> bool:
            return len(writer.outbox.acked) >= count

        writer.start(budget=6)  # history before anybody joins
        await until(lambda: posted(6), 10, "the first messages")
        async with asyncio.timeout(10):
            await writer.close()
        readers = [Peer(users[n % STORM_USERS]["token"], seen, problems)
                   for n in range(STORM_CLIENTS)]

        async def join(peer: Peer) -> None:
            assert await peer.connect(http, server.ws_url), peer.end
            peer.start(join=chat, since=peer.ids[-1] if peer.ids else 0)

        started = time.monotonic()
        async with asyncio.timeout(60):
            await asyncio.gather(*(join(peer) for peer in readers))
        connect_time = time.monotonic() - started

        def all_joined(times: int) -> bool:
            return all(peer.joined == times for peer in readers)

        await until(lambda: all_joined(1), 30, f"{STORM_CLIENTS} sockets joined")

        # The writer keeps posting through the whole storm: before, during, after.
        assert await writer.connect(http, server.ws_url), writer.end
        writer.start(budget=STORM_MESSAGES - 6, interval=0.01)
        await until(lambda: posted(12), 10, "messages before the storm")
        storm_started = time.monotonic()
        acked_at_drop = len(writer.outbox.acked)
        async with asyncio.timeout(60):
            await asyncio.gather(*(peer.close() for peer in readers))
        drop_time = time.monotonic() - storm_started
        acked_while_away = len(writer.outbox.acked) - acked_at_drop
        async with asyncio.timeout(60):
            await asyncio.gather(*(join(peer) for peer in readers))
        storm_time = time.monotonic() - storm_started
        acked_in_storm = len(writer.outbox.acked) - acked_at_drop

        await until(lambda: posted(STORM_MESSAGES), 60, "every message posted")
        async with asyncio.timeout(10):
            await writer.close()
        expected = [message["id"] for message in
                    await history(http, server.url, writer_user["token"], chat)]
        assert len(expected) == STORM_MESSAGES

        def caught_up() -> bool:
            return all(peer.ids and peer.ids[-1] == expected[-1] and peer.joined == 2
                       for peer in readers)

        with contextlib.suppress(AssertionError):
            await until(caught_up, 30, "every reader has the last message")
        wrong = {n: describe_difference(peer.ids, expected, peer)
                 for n, peer in enumerate(readers)
                 if peer.ids != expected or peer.joined != 2}
        print(f"storm: {STORM_CLIENTS} sockets connected in {connect_time:.2f} s, dropped in "
              f"{drop_time:.2f} s, back in {storm_time:.2f} s; {acked_while_away} messages "
              f"posted while dropping, {acked_in_storm} during the whole storm")
        missed = Counter(i for peer in readers for i in set(expected) - set(peer.ids))
        assert not wrong, (f"{len(wrong)} of {STORM_CLIENTS} readers wrong; ids missed (id: "
                           f"readers) {dict(missed)}; e.g. {dict(list(wrong.items())[:3])}")
        assert problems == [], problems[:10]
        # The storm really overlapped with posting (else it proves little).
        assert acked_in_storm >= 1
        async with asyncio.timeout(60):
            await asyncio.gather(*(peer.close() for peer in readers))
    assert "Traceback" not in server.log, server.log


def describe_difference(ids: list[int], expected: list[int], peer: Peer) -> str:
    counts = Counter(ids)
    missing = sorted(set(expected) - set(ids))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    first = next((n for n, (a, b) in enumerate(zip(ids, expected)) if a != b), len(ids))
    return (f"{len(ids)} ids, missing {missing[:10]}, duplicated {duplicated[:10]}, "
            f"ids around the first difference {ids[max(0, first - 3):first + 3]}, "
            f"(since, ids before) per join {peer.joins}, joined {peer.joined} times, "
            f"end {peer.end}")


# 5. PostgreSQL away and back


@pytest.mark.postgres_only
async def test_while_postgresql_is_away_clients_get_503_and_error_frames_then_all_recovers(
    aiohttp_client, config
):
    """The server reaches PostgreSQL through a proxy that is closed, then opened again."""
    target = urlsplit(POSTGRES_URL).port or 5432
    proxy = await FreezableProxy(target).start()
    url = config.db_path.replace(f":{target}/", f":{proxy.port}/", 1)
    client = await aiohttp_client(create_app(config.replace(db_path=url)))
    user = await (await client.post("/auth/reg", json={
        "email": "away@example.com", "username": "away", "password": "password1"})).json()
    headers = {"Authorization": f"Bearer {user['token']}"}
    chat = (await (await client.post("/chats/create", json={"name": "x"}, headers=headers)).json())["id"]
    ws = await client.ws_connect("/chats/ws", params={"token": user["token"]})
    await ws.send_json({"chat_id": chat, "text": "before", "nonce": "n1"})
    assert (await ws.receive_json(timeout=5))["text"] == "before"

    await proxy.close()

    async def health() -> int:
        async with client.get("/health") as resp:
            return resp.status

    await eventually(lambda: _is(health(), 503), 30, "/health 503 while PostgreSQL is away")
    async with client.get("/chats/", headers=headers) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert "database" in (await resp.json())["error"]
    await ws.send_json({"chat_id": chat, "text": "during", "nonce": "n2"})
    frame = await ws.receive_json(timeout=30)
    assert frame["type"] == "error" and frame["nonce"] == "n2" and "database" in frame["error"]

    back = await FreezableProxy(target).start(port=proxy.port)
    try:
        await eventually(lambda: _is(health(), 200), 30, "/health 200 once PostgreSQL is back")
        await ws.send_json({"chat_id": chat, "text": "during", "nonce": "n2"})  # resent
        frame = await ws.receive_json(timeout=30)
        assert (frame["type"], frame["text"], frame["nonce"]) == ("message", "during", "n2")
        async with client.get("/chats/messages", params={"id": chat}, headers=headers) as resp:
            history = await resp.json()
        assert [m["nonce"] for m in history] == ["n1", "n2"]
        await ws.close()
    finally:
        await back.close()


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected
