"""Several server processes on one PostgreSQL database: fan-out, order, resume, faults.

Real `python -m chatapi` processes on 127.0.0.1, each with its own sockets, all on a
fresh schema of the test database. Every wait is bounded; nothing asserts a duration
except what the contract promises (presence within the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from conftest import POSTGRES_URL, readme_block, run_sql
from test_faults import (
    HTTP_TIMEOUT,
    WS_TIMEOUT,
    Outbox,
    Peer,
    ServerProcess,
    api,
    create_chat,
    eventually,
    history,
    not_stored_once,
    online_users,
    register,
    until,
)
from test_revocation import reset_password

pytestmark = pytest.mark.postgres_only

LEASE_BOUND = 20.0  # lease (10 s) + one renewal (2.5 s) + a presence frame, with room to spare


@pytest.fixture
async def cluster(backend, postgres_url, tmp_path):
    """start(n, **env) -> n server processes on one fresh PostgreSQL schema, started at once."""
    started: list[ServerProcess] = []

    async def start(count: int = 1, *args: str, **env: str) -> list[ServerProcess]:
        servers = [ServerProcess(postgres_url, *args, cwd=tmp_path, **env) for _ in range(count)]
        outcomes = await asyncio.gather(*(s.start() for s in servers), return_exceptions=True)
        started.extend(s for s, outcome in zip(servers, outcomes) if outcome is s)
        for outcome in outcomes:  # a failed start is reported once the others are recorded
            if isinstance(outcome, BaseException):
                raise outcome
        return servers

    yield start
    await asyncio.gather(*(server.kill() for server in started))


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        yield http


async def subscribe(peers: list[Peer], http: aiohttp.ClientSession, urls: list[str], chat: int,
                    since: int | None = None) -> None:
    for n, peer in enumerate(peers):
        assert await peer.connect(http, urls[n % len(urls)]), peer.end
        peer.start(join=chat, since=since)
    await until(lambda: all(peer.joined for peer in peers), 10, "every subscriber joined")


async def finish(writers: list[Peer], budget: int, timeout: float = 60) -> None:
    """Wait until each writer has sent its whole budget and had every message acknowledged."""
    await until(lambda: all(w.outbox.created >= budget for w in writers), timeout, "all sent")
    await asyncio.wait_for(asyncio.gather(*(w.settle() for w in writers)), timeout)


def stored_by_nonce(messages: list[dict[str, Any]]) -> dict[str, list[int]]:
    stored: dict[str, list[int]] = {}
    for message in messages:
        if message.get("nonce") is not None:
            stored.setdefault(message["nonce"], []).append(message["id"])
    return stored


# (a) writers on three processes, one chat


async def test_writers_on_three_processes_reach_every_subscriber_once_in_id_order(cluster):
    servers = await cluster(3)
    urls = [server.ws_url for server in servers]
    async with session() as http:
        users = [await register(http, servers[n % 3].url, f"user{n}") for n in range(6)]
        chat = await create_chat(http, servers[0].url, users[0]["token"], "busy")
        seen: dict[str, int] = {}
        problems: list[str] = []
        subscribers = [Peer(user["token"], seen, problems) for user in users]
        await subscribe(subscribers, http, urls, chat)

        writers = [Peer(users[n]["token"], seen, problems, Outbox(f"w{n}", chat)) for n in range(4)]
        for n, writer in enumerate(writers):
            assert await writer.connect(http, urls[n % 3])
        for writer in writers:  # all at once
            writer.start(budget=60)
        await finish(writers, 60)

        total = 4 * 60
        await until(lambda: all(len(p.ids) == total for p in subscribers), 30,
                    "every subscriber received every message")
        messages = await history(http, servers[1].url, users[1]["token"], chat)
        for peer in subscribers:
            await peer.close()
    assert problems == []
    ids = [message["id"] for message in messages]
    assert len(ids) == total and ids == sorted(ids)
    for peer in subscribers:
        assert peer.ids == ids  # exactly once each, in increasing id order, as stored
    assert not not_stored_once(seen, stored_by_nonce(messages))


# (b) a client that hops between processes with since


async def test_a_client_hopping_between_processes_with_since_misses_nothing(cluster):
    servers = await cluster(3)
    async with session() as http:
        alice = await register(http, servers[0].url, "alice")
        bob = await register(http, servers[1].url, "bob")
        carol = await register(http, servers[2].url, "carol")
        chat = await create_chat(http, servers[0].url, alice["token"], "hops")
        seen: dict[str, int] = {}
        problems: list[str] = []
        writers = [Peer(alice["token"], seen, problems, Outbox("a", chat)),
                   Peer(bob["token"], seen, problems, Outbox("b", chat))]
        for writer, server in zip(writers, servers[:2]):
            assert await writer.connect(http, server.ws_url)
            writer.start(budget=80, interval=0.01)
        settled = asyncio.ensure_future(finish(writers, 80))

        received: list[int] = []
        hop = 0
        while True:
            done = settled.done()
            reader = Peer(carol["token"], {}, problems)
            assert await reader.connect(http, servers[hop % 3].ws_url)
            reader.start(join=chat, since=received[-1] if received else 0)
            await until(lambda r=reader: r.joined, 10, "joined")
            if done:
                await until(lambda r=reader: len(received) + len(r.ids) >= 160, 30, "the rest")
            else:
                with contextlib.suppress(AssertionError):
                    await until(lambda r=reader: len(r.ids) >= 7, 2, "a few messages")
            await reader.close()
            received.extend(reader.ids)
            hop += 1
            if done:
                break
        await settled
        messages = await history(http, servers[2].url, carol["token"], chat)
    assert problems == []
    assert hop > 3
    assert received == [message["id"] for message in messages]
    assert len(received) == 160


# (c) kill -9 of one process


async def test_kill_9_of_one_process_takes_its_users_offline_elsewhere_and_loses_nothing(cluster):
    servers = await cluster(3)
    victim, survivor, other = servers[2], servers[0], servers[1]
    async with session() as http:
        alice = await register(http, victim.url, "alice")  # only ever on the victim
        bob = await register(http, survivor.url, "bob")
        carol = await register(http, other.url, "carol")
        chat = await create_chat(http, survivor.url, bob["token"], "kill")
        seen: dict[str, int] = {}
        problems: list[str] = []
        watcher = await http.ws_connect(survivor.ws_url, params={"token": bob["token"]},
                                        timeout=WS_TIMEOUT)
        doomed = Peer(alice["token"], seen, problems, Outbox("alice", chat))
        assert await doomed.connect(http, victim.ws_url)
        await eventually(lambda: _contains(online_users(http, survivor.url, bob["token"]), "alice"),
                         10, "alice online on the survivor")
        writers = [Peer(bob["token"], seen, problems, Outbox("bob", chat)),
                   Peer(carol["token"], seen, problems, Outbox("carol", chat))]
        for writer, server in zip(writers, (survivor, other)):
            assert await writer.connect(http, server.ws_url)
            writer.start(budget=60, interval=0.01)
        doomed.start(budget=1000, interval=0.005)
        await until(lambda: len(doomed.outbox.acked) >= 20, 20, "alice posted for a while")

        await victim.kill()
        await doomed.finished()
        took = await eventually(
            lambda: _lacks(online_users(http, survivor.url, bob["token"]), "alice"),
            LEASE_BOUND, "alice offline on the survivor after kill -9",
        )
        offline = await _presence_frame(watcher, "alice", False, LEASE_BOUND)
        await finish(writers, 60)
        messages = await history(http, other.url, carol["token"], chat)
        await watcher.close()
    print(f"alice offline {took:.1f} s after kill -9")
    assert took <= 15, took  # within the lease (10 s) and a sweep: the 15 s bound
    assert offline
    assert problems == []
    assert not not_stored_once(seen, stored_by_nonce(messages))  # no acknowledged message lost
    assert all(not w.outbox.pending for w in writers)  # the others kept serving


async def _contains(users: Any, name: str) -> bool:
    return name in await users


async def _lacks(users: Any, name: str) -> bool:
    return name not in await users


async def _presence_frame(ws: aiohttp.ClientWebSocketResponse, name: str, online: bool,
                          timeout: float) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            if frame["type"] == "presence" and {"username": name, "is_online": online} in [
                {"username": u["username"], "is_online": u["is_online"]} for u in frame["users"]
            ]:
                return True


# (d) a listener cut by pg_terminate_backend


async def test_a_terminated_listener_reconnects_and_no_subscriber_misses_a_message(
    cluster, postgres_url
):
    sender, receiver = await cluster(2)
    async with session() as http:
        alice = await register(http, sender.url, "alice")
        bob = await register(http, receiver.url, "bob")
        chat = await create_chat(http, sender.url, alice["token"], "cut")
        seen: dict[str, int] = {}
        problems: list[str] = []
        subscribers = [Peer(bob["token"], seen, problems) for _ in range(3)]
        await subscribe(subscribers, http, [receiver.ws_url], chat)
        writer = Peer(alice["token"], seen, problems, Outbox("a", chat))
        assert await writer.connect(http, sender.ws_url)
        writer.start(budget=150, interval=0.01)
        await until(lambda: len(writer.outbox.acked) >= 40, 20, "messages flowing")

        conn = await asyncpg.connect(postgres_url)
        try:
            cut = await conn.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE application_name = $1""",
                f"chatapi-listener-{receiver.proc.pid}",
            )
        finally:
            await conn.close()
        assert cut == 1
        await finish([writer], 150)
        await until(lambda: all(len(p.ids) == 150 for p in subscribers), 30, "all delivered")
        messages = await history(http, receiver.url, bob["token"], chat)
        metrics = await (await http.get(receiver.url + "/metrics")).text()
        for peer in subscribers:
            await peer.close()
    assert problems == []
    ids = [message["id"] for message in messages]
    assert all(peer.ids == ids for peer in subscribers)
    assert "chatapi_bus_listener_reconnects_total 1.0" in metrics


# (e) PostgreSQL restarted under load


def _local_cluster() -> tuple[str, str] | None:
    """(version, name) of the local cluster the test database is on (its port), if online."""
    if os.geteuid() != 0 or shutil.which("pg_lsclusters") is None:
        return None
    port = str(urlsplit(POSTGRES_URL).port or 5432)
    lines = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                           check=False).stdout.splitlines()
    for fields in (line.split() for line in lines):
        if len(fields) > 3 and fields[2] == port and fields[3] == "online":
            return fields[0], fields[1]
    return None


async def test_postgres_restarted_under_load_every_process_recovers(cluster):
    local = _local_cluster()
    if local is None:
        pytest.skip("restarting PostgreSQL needs root and a local Debian cluster (pg_ctlcluster)")
    servers = await cluster(2)
    async with session() as http:
        alice = await register(http, servers[0].url, "alice")
        bob = await register(http, servers[1].url, "bob")
        chat = await create_chat(http, servers[0].url, alice["token"], "restart")
        statuses: list[int] = []

        async def poll_health() -> None:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(servers[1].url + "/health") as resp:
                        statuses.append(resp.status)
                await asyncio.sleep(0.1)

        acked: dict[str, int] = {}
        errors: list[str] = []
        posting = [asyncio.create_task(_post_through_errors(http, s.ws_url, user["token"], chat,
                                                            name, 60, acked, errors))
                   for s, user, name in ((servers[0], alice, "a"), (servers[1], bob, "b"))]
        poller = asyncio.create_task(poll_health())
        await until(lambda: len(acked) >= 20, 20, "messages flowing")
        restart = await asyncio.to_thread(
            subprocess.run, ["pg_ctlcluster", *local, "restart"], capture_output=True, text=True,
            check=False,
        )
        assert restart.returncode == 0, restart.stderr
        try:
            await asyncio.wait_for(asyncio.gather(*posting), 120)
        except TimeoutError:
            raise AssertionError(
                f"{len(acked)} of 120 acknowledged; errors {errors[-3:]}\n"
                + "\n".join(server.log[-3000:] for server in servers)
            ) from None
        await eventually(lambda: _healthy(http, servers[0].url), 30, "server 0 healthy again")
        await eventually(lambda: _healthy(http, servers[1].url), 30, "server 1 healthy again")
        poller.cancel()
        messages = await history(http, servers[0].url, alice["token"], chat)
    assert 503 in statuses and statuses[-1] == 200, statuses
    assert errors and all("database" in error for error in errors), errors
    assert len(acked) == 120
    assert not not_stored_once(acked, stored_by_nonce(messages))


async def _healthy(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url + "/health") as resp:
            return resp.status == 200
    return False


async def _post_through_errors(http: aiohttp.ClientSession, ws_url: str, token: str, chat: int,
                               prefix: str, count: int, acked: dict[str, int],
                               errors: list[str]) -> None:
    """Post `count` messages one at a time, resending (same nonce) after an error frame
    or a dropped connection, as a client should while the database is away."""
    n = 0
    while n < count:
        try:
            async with http.ws_connect(ws_url, params={"token": token}, timeout=WS_TIMEOUT) as ws:
                while n < count:
                    nonce = f"{prefix}-{n}"
                    await ws.send_json({"chat_id": chat, "text": nonce, "nonce": nonce})
                    while True:
                        frame = await ws.receive_json(timeout=30)
                        if frame.get("nonce") == nonce:
                            break
                    if frame["type"] == "error":
                        errors.append(frame["error"])
                        await asyncio.sleep(0.2)
                        continue
                    acked[nonce] = frame["id"]
                    n += 1
                    await asyncio.sleep(0.02)
        except (aiohttp.ClientError, TimeoutError, TypeError):
            await asyncio.sleep(0.2)


# SIGTERM on one process


async def test_sigterm_on_one_process_closes_its_sockets_and_the_others_keep_serving(cluster):
    leaving, staying = await cluster(2)
    async with session() as http:
        alice = await register(http, staying.url, "alice")  # on both processes
        bob = await register(http, staying.url, "bob")  # only on the one that leaves
        chat = await create_chat(http, staying.url, alice["token"], "sigterm")
        on_leaving = [await http.ws_connect(leaving.ws_url, params={"token": user["token"]})
                      for user in (alice, bob)]
        on_staying = await http.ws_connect(staying.ws_url, params={"token": alice["token"]})
        await eventually(lambda: _contains(online_users(http, staying.url, alice["token"]), "bob"),
                         10, "bob online")
        assert await leaving.terminate(10) < 10 and leaving.returncode == 0
        for ws in on_leaving:
            msg = await _skip_presence(ws)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        await eventually(lambda: _lacks(online_users(http, staying.url, alice["token"]), "bob"),
                         5, "bob offline once his only process stopped")
        assert "alice" in await online_users(http, staying.url, alice["token"])
        await on_staying.send_json({"chat_id": chat, "text": "still here"})
        msg = await _skip_presence(on_staying)
        assert json.loads(msg.data)["text"] == "still here"
        await on_staying.close()


async def _skip_presence(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The next message of the socket that is not a presence frame."""
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data)["type"] != "presence":
            return msg


# (f) logout on one process


async def test_logout_on_one_process_closes_the_users_sockets_on_another_with_4001(cluster):
    first, second = await cluster(2)
    async with session() as http:
        alice = await register(http, first.url, "alice")
        sockets = [await http.ws_connect(second.ws_url, params={"token": alice["token"]})
                   for _ in range(2)]
        await api(http, "POST", first.url + "/auth/logout", token=alice["token"], status=204)
        for ws in sockets:
            msg = await _skip_presence(ws)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)
        await api(http, "GET", second.url + "/users/me", token=alice["token"], status=401)


async def test_reset_password_by_the_admin_command_closes_the_users_sockets_on_every_process(
    cluster, postgres_url
):
    # The admin command is a third process: its revocation reaches both servers (the bus).
    first, second = await cluster(2)
    async with session() as http:
        alice = await register(http, first.url, "alice")
        chat = await create_chat(http, first.url, alice["token"], "ops")
        sockets = [await http.ws_connect(server.ws_url, params={"token": alice["token"]})
                   for server in (first, second, second)]
        await sockets[1].send_json({"chat_id": chat, "text": "before", "nonce": "before"})
        assert json.loads((await _skip_presence(sockets[1])).data)["nonce"] == "before"
        await reset_password(postgres_url, "alice@example.com", "a-brand-new-password")
        loop = asyncio.get_running_loop()
        reset_at = loop.time()
        # Sent after the reset is committed, before a server has noticed it: not stored.
        await sockets[2].send_json({"chat_id": chat, "text": "after", "nonce": "after"})
        for ws in sockets:
            msg = await _skip_presence(ws)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)
        closed_within = loop.time() - reset_at
        for server in (first, second):
            await api(http, "GET", server.url + "/users/me", token=alice["token"], status=401)
        body = {"email": "alice@example.com", "password": "a-brand-new-password"}
        token = (await api(http, "POST", second.url + "/auth/login", body=body))["token"]
        texts = [m["text"] for m in await history(http, first.url, token, chat)]
    assert texts == ["before"]
    # The contract says within a second; a loaded test machine gets some room.
    assert closed_within < 5, closed_within


# (g) two processes started at once on an empty database


async def test_two_processes_started_at_once_on_an_empty_database_both_serve(cluster, postgres_url):
    first, second = await cluster(2)
    async with session() as http:
        alice = await register(http, first.url, "alice")
        body = {"email": "alice@example.com", "password": "password-alice"}
        token = (await api(http, "POST", second.url + "/auth/login", body=body))["token"]
        await api(http, "GET", first.url + "/users/me", token=token)
    conn = await asyncpg.connect(postgres_url)
    try:
        version = await conn.fetchval("SELECT value FROM settings WHERE key = 'schema_version'")
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        )
    finally:
        await conn.close()
    # Version 6: users, chats, messages, settings, nodes, presence, login_failures, the
    # Teams tables admins, members, direct_pairs, invites, the unread counts' chat_counts
    # and sender_counts (version 3), reactions (version 4) and api_tokens (search,
    # version 5, adds a column to messages).
    assert alice["username"] == "alice" and version == "6" and tables == 15


# Unread counts kept by the storing transaction


async def test_unread_counts_stay_exact_with_writers_and_readers_on_three_processes(
    cluster, postgres_url
):
    servers = await cluster(3)
    urls = [server.ws_url for server in servers]
    async with session() as http:
        users = [await register(http, servers[n % 3].url, f"user{n}") for n in range(5)]
        chat = (await api(http, "POST", servers[0].url + "/chats/create", token=users[0]["token"],
                          body={"name": "counted", "kind": "private",
                                "members": [u["id"] for u in users[1:]]}, status=201))["id"]
        seen: dict[str, int] = {}
        problems: list[str] = []
        writers = [Peer(users[n]["token"], seen, problems, Outbox(f"w{n}", chat)) for n in range(4)]
        for n, writer in enumerate(writers):
            assert await writer.connect(http, urls[n % 3])
        for writer in writers:  # all at once
            writer.start(budget=60)
        # Meanwhile markers move forward on every process: the reader's and a writer's, to a
        # message in the middle (a range count) or to the newest (the totals).
        rounds = 0
        while not all(w.outbox.created >= 60 for w in writers) or rounds < 6:
            stored = await history(http, servers[rounds % 3].url, users[4]["token"], chat)
            if stored:
                for user, at in ((users[4], len(stored) // 2), (users[1], len(stored) - 1)):
                    await api(http, "POST", f"{servers[(rounds + 1) % 3].url}/chats/{chat}/read",
                              token=user["token"], body={"message_id": stored[at]["id"]})
            rounds += 1
            await asyncio.sleep(0.05)
        await finish(writers, 60)
        messages = await history(http, servers[1].url, users[1]["token"], chat)
        for n, user in enumerate(users):
            listed = {c["id"]: c for c in await api(http, "GET", servers[n % 3].url + "/chats/",
                                                       token=user["token"])}
            marker = listed[chat]["last_read_id"]
            expected = sum(1 for m in messages if m["id"] > marker and m["owner_id"] != user["id"])
            assert listed[chat]["unread"] == expected, user["username"]
        for writer in writers:
            await writer.close()
    assert problems == [] and len(messages) == 4 * 60
    assert rounds >= 6
    totals = await run_sql(postgres_url, "SELECT messages FROM chat_counts WHERE chat_id = ?", chat)
    senders = await run_sql(postgres_url, "SELECT owner_id, messages FROM sender_counts "
                            "WHERE chat_id = ? ORDER BY owner_id", chat)
    assert totals == [(240,)]
    assert senders == [(user["id"], 60) for user in users[:4]]


# Shared limits


async def test_failed_logins_are_counted_across_processes(cluster):
    first, second = await cluster(2, CHATAPI_LOGIN_FAILURES="4")
    async with session() as http:
        await register(http, first.url, "alice")
        wrong = {"email": "alice@example.com", "password": "not the password"}
        for server in (first, second, first, second):
            await api(http, "POST", server.url + "/auth/login", body=wrong, status=401)
        for server in (first, second):
            await api(http, "POST", server.url + "/auth/login", body=wrong, status=429)


async def test_the_socket_cap_counts_sockets_on_every_process(cluster, postgres_url):
    first, second = await cluster(2, CHATAPI_MAX_SOCKETS_PER_USER="2")
    async with session() as http:
        alice = await register(http, first.url, "alice")
        a = await http.ws_connect(first.ws_url, params={"token": alice["token"]})
        b = await http.ws_connect(second.ws_url, params={"token": alice["token"]})

        async def recorded_on_both() -> bool:  # each process records its socket after the upgrade
            rows = await run_sql(postgres_url, "SELECT count(*) FROM presence")
            return rows == [(2,)]

        await eventually(recorded_on_both, 10, "both processes recorded alice's socket")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(first.ws_url, params={"token": alice["token"]})
        assert refused.value.status == 429
        await a.close()
        await b.close()


# Workers


async def test_workers_serve_one_port_from_several_processes(cluster):
    (supervisor,) = await cluster(1, "--workers", "2")
    async with session() as http:
        alice = await register(http, supervisor.url, "alice")
        chat = await create_chat(http, supervisor.url, alice["token"], "workers")
        seen: dict[str, int] = {}
        problems: list[str] = []
        readers = [Peer(alice["token"], seen, problems) for _ in range(6)]
        await subscribe(readers, http, [supervisor.ws_url], chat)
        writer = Peer(alice["token"], seen, problems, Outbox("w", chat))
        assert await writer.connect(http, supervisor.ws_url)
        writer.start(budget=30)
        await finish([writer], 30)
        await until(lambda: all(len(r.ids) == 30 for r in readers), 20, "all delivered")
        for reader in readers:
            await reader.close()
    assert problems == []
    children = (await asyncio.to_thread(
        subprocess.run, ["ps", "--ppid", str(supervisor.proc.pid), "-o", "args="],
        capture_output=True, text=True, check=False,
    )).stdout
    assert children.count("--reuse-port") == 2
    assert await supervisor.terminate(30) < 30
    assert supervisor.returncode == 0


async def test_workers_stop_when_their_supervisor_is_killed(cluster):
    (supervisor,) = await cluster(1, "--workers", "2")
    listed = await asyncio.to_thread(
        subprocess.run, ["ps", "--ppid", str(supervisor.proc.pid), "-o", "pid="],
        capture_output=True, text=True, check=False,
    )
    workers = [int(pid) for pid in listed.stdout.split()]
    assert len(workers) == 2
    await supervisor.kill()

    async def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in workers)

    await eventually(all_gone, 15, "workers gone after kill -9 of their supervisor")


def test_workers_are_refused_on_sqlite_with_one_line(tmp_path):
    done = subprocess.run(
        ["chatapi", "--workers", "2", "--db", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "postgresql://" in done.stderr


# (h) nginx in front of two processes, with the README's configuration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_nginx_with_the_readme_configuration_carries_a_conversation(cluster, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    servers = await cluster(2)
    port = _free_port()
    site = readme_block("Several hosts", "nginx")
    for n, server in enumerate(servers):
        site = site.replace(f"10.0.0.{n + 1}:8080", server.url.removeprefix("http://"))
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"""user root;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    include {tmp_path}/site.conf;
}}
""")
    proc = await asyncio.create_subprocess_exec(
        nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;",
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with session() as http:
            await eventually(lambda: _healthy(http, base), 10, "nginx answers")
            alice = await register(http, base, "alice")
            bob = await register(http, base, "bob")
            chat = await create_chat(http, base, alice["token"], "proxied")
            ws_url = "ws" + base.removeprefix("http") + "/chats/ws"
            seen: dict[str, int] = {}
            problems: list[str] = []
            # nginx spreads the sockets over both processes
            readers = [Peer(user["token"], seen, problems) for user in (alice, bob, alice, bob)]
            await subscribe(readers, http, [ws_url], chat)
            writers = [Peer(alice["token"], seen, problems, Outbox("a", chat)),
                       Peer(bob["token"], seen, problems, Outbox("b", chat))]
            for writer in writers:
                assert await writer.connect(http, ws_url)
                writer.start(budget=25)
            await finish(writers, 25)
            await until(lambda: all(len(r.ids) == 50 for r in readers), 30, "all delivered")
            messages = await history(http, base, bob["token"], chat)
            # Asked of each process directly: both hold some of the sockets.
            held = [await _connected_sockets(http, server.url) for server in servers]
            for reader in readers:
                await reader.close()
    finally:
        proc.terminate()
        await proc.wait()
    assert problems == []
    assert all(held) and sum(held) >= len(readers), held
    ids = [message["id"] for message in messages]
    assert len(ids) == 50
    for reader in readers:
        assert reader.ids == ids  # each saw the whole conversation, in order


async def _connected_sockets(http: aiohttp.ClientSession, url: str) -> int:
    """The websockets a process holds, from its /metrics."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    (line,) = [line for line in text.splitlines() if line.startswith("chatapi_connected_sockets ")]
    return int(float(line.split()[1]))


# (i) messages that change (issue 13): edits, deletes and reactions from writers on three
# processes reach live subscribers and an offline client, each change once, by seq


class SeqReader:
    """A client that keeps the highest seq it saw and the messages by id (upserted)."""

    def __init__(self, token: str, chat: int) -> None:
        self.token, self.chat = token, chat
        self.cursor = 0
        self.state: dict[int, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.frames = 0

    def take(self, frame: dict[str, Any]) -> None:
        if frame.get("chat_id") != self.chat or frame["type"] not in ("message", "update"):
            return
        self.frames += 1
        if frame["seq"] <= self.cursor:
            self.problems.append(f"seq {frame['seq']} after {self.cursor} (id {frame['id']})")
        known = frame["id"] in self.state
        if (frame["type"] == "message") == known:
            self.problems.append(f"{frame['type']} frame of id {frame['id']}, known: {known}")
        self.cursor = max(self.cursor, frame["seq"])
        self.state[frame["id"]] = {k: v for k, v in frame.items() if k != "type"}

    async def session(self, http: aiohttp.ClientSession, ws_url: str, until_idle: float) -> None:
        """Join with the cursor, take frames until none came for `until_idle` seconds."""
        async with http.ws_connect(ws_url, params={"token": self.token}, timeout=WS_TIMEOUT) as ws:
            await ws.send_json({"type": "join", "chat_id": self.chat, "since": self.cursor})
            while True:
                try:
                    msg = await ws.receive(timeout=until_idle)
                except TimeoutError:
                    return
                if msg.type != aiohttp.WSMsgType.TEXT:
                    self.problems.append(f"socket ended: {msg}")
                    return
                self.take(json.loads(msg.data))


async def test_changes_from_three_processes_reach_every_client_once_in_seq_order(cluster):
    servers = await cluster(3)
    async with session() as http:
        users = [await register(http, servers[n].url, f"user{n}") for n in range(3)]
        reader_user = await register(http, servers[0].url, "reader")
        chat = await create_chat(http, servers[0].url, users[0]["token"], "changes")
        base = f"/chats/{chat}/messages"
        firsts = [
            await api(http, "POST", servers[n % 3].url + base, token=users[n % 3]["token"],
                      body={"text": f"first {n}"}, status=201)
            for n in range(12)
        ]
        offline = SeqReader(reader_user["token"], chat)
        await offline.session(http, servers[1].ws_url, 1.0)
        assert len(offline.state) == 12 and offline.problems == []
        live = [SeqReader(users[n]["token"], chat) for n in range(3)]
        listening = [asyncio.ensure_future(r.session(http, servers[n].ws_url, 5.0))
                     for n, r in enumerate(live)]
        hopper = SeqReader(reader_user["token"], chat)

        async def hop() -> None:
            for n in range(12):
                await hopper.session(http, servers[n % 3].ws_url, 0.15)

        async def write(n: int) -> None:
            url, token = servers[n].url, users[n]["token"]
            own = [m["id"] for m in firsts if m["owner_id"] == users[n]["id"]]
            for round_ in range(6):
                if round_ < 4:
                    await api(http, "PATCH", f"{url}{base}/{own[round_]}", token=token,
                              body={"text": f"edit {n}.{round_}"})
                else:  # the first two, edited before
                    await api(http, "DELETE", f"{url}{base}/{own[round_ - 4]}", token=token)
                other = firsts[6 + (n + round_) % 6]["id"]  # never deleted
                await api(http, "PUT", f"{url}{base}/{other}/reactions/r{n}", token=token)
                new = await api(http, "POST", url + base, token=token,
                                body={"text": f"new {n}.{round_}"}, status=201)
                await api(http, "PATCH", f"{url}{base}/{new['id']}", token=token,
                          body={"text": f"new {n}.{round_}, edited"})

        await asyncio.gather(hop(), *(write(n) for n in range(3)))
        stored = {m["id"]: m for m in await history(http, servers[2].url, users[2]["token"], chat)}
        await asyncio.gather(*listening)
        await hopper.session(http, servers[2].ws_url, 1.0)
        before = offline.frames
        await offline.session(http, servers[2].ws_url, 1.0)
    assert offline.problems == [] and hopper.problems == []
    assert offline.state == stored and hopper.state == stored
    # The offline client: exactly one frame per message changed or posted while away.
    cursor = max(m["seq"] for m in firsts)
    assert offline.frames - before == len([m for m in stored.values() if m["seq"] > cursor])
    assert len(stored) == 12 + 18 and sum(bool(m.get("deleted")) for m in stored.values()) == 6
    assert all(m["text"].endswith("edited") for m in stored.values() if m["id"] > cursor)
    for reader in live:
        assert reader.problems == [] and reader.state == stored
