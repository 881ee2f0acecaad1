"""Embedding ChatAPI: the threaded ChatServer, the pytest plugin, the command line, admin commands."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from conftest import POSTGRES_URL, readme_block, readme_blocks

from chatapi.client import ChatAPIError
from chatapi.testing import ChatServer, SeedError

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent


def http(url: str, method: str = "GET", body=None, token: str | None = None):
    request = urllib.request.Request(url, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_chat_server_from_synchronous_code(tmp_path):
    with ChatServer(bcrypt_rounds=4) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.ws_url == f"ws://127.0.0.1:{server.port}/chats/ws"
        assert http(server.url + "/health") == (200, {"status": "ok"})
        status, _user = http(server.url + "/auth/reg", "POST",
                            {"email": "a@example.com", "username": "alice", "password": "password1"})
        assert status == 201
        database = Path(server.config.db_path)
        assert database.exists()
        port = server.port
    assert not database.exists()  # the temporary database goes with the server
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


async def test_chat_server_from_asynchronous_code(tmp_path):
    server = ChatServer(db_path=str(tmp_path / "kept.db"), bcrypt_rounds=4)
    async with server, aiohttp.ClientSession() as session:
        body = {"email": "b@example.com", "username": "bob", "password": "password1"}
        async with session.post(server.url + "/auth/reg", json=body) as resp:
            token = (await resp.json())["token"]
        async with session.ws_connect(server.ws_url, params={"token": token}) as ws:
            await ws.send_json({"type": "join", "chat_id": 1})
            assert (await ws.receive_json(timeout=5))["type"] == "error"  # no chat 1 yet
    assert (tmp_path / "kept.db").exists()  # a database given by path is kept


def test_chat_server_reports_a_failed_start(tmp_path):
    with ChatServer(bcrypt_rounds=4) as running:
        taken = ChatServer(port=running.port, db_path=str(tmp_path / "x.db"))
        with pytest.raises(OSError):
            taken.start()


def test_downstream_suite_uses_only_the_installed_plugin(pytester):
    # README's example modules, run by a separate pytest in a temporary directory
    # (tests/test_first_hour.py runs them in a fresh venv with the built wheel).
    example, shared = readme_blocks("Use it in your tests", "python")
    pytester.makepyfile(test_example=example, test_shared=shared, test_again=(
        "def test_alice_again(chatapi_user):\n"
        "    assert chatapi_user('alice')['id'] == 1\n"
    ))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_fixtures_are_listed_with_their_docs(pytester):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines([
        "*chatapi_server* -- *pytest_plugin.py*",
        "*real ChatAPI server of this test alone*",
        "*chatapi_user* -- *pytest_plugin.py*",
        "*registers a user on*",
    ])


def test_register_raises_with_the_servers_reason(database):
    with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        user = server.register("Named User")
        assert user["username"] == "Named User" and user["email"] == "named-user@example.com"
        assert http(server.url + "/users/me", token=user["token"])[1]["id"] == user["id"]
        with pytest.raises(ChatAPIError) as taken:
            server.register("NAMED USER", email="other@example.com")
        assert (taken.value.status, str(taken.value)) == (
            409, "409: username already taken {'username': 'already taken'}")
        with pytest.raises(ChatAPIError) as short:
            server.register("bob", password="short")
        assert short.value.status == 400
        assert short.value.details == {"password": "must be at least 8 characters"}
        assert [u["username"] for u in http(server.url + "/users/", token=user["token"])[1]] == [
            "Named User"]


SEED = {
    "users": ["alice", {"username": "Bob B.", "password": "battery staple"}],
    "chats": ["general", {"name": "random", "owner": "Bob B."}],
    "messages": [
        {"chat": "general", "user": "alice", "text": "first", "created_at": "2026-01-01T09:00:00Z"},
        {"chat": "general", "user": "Bob B.", "text": "second", "nonce": "n-1",
         "created_at": "2026-01-01T10:00:00.5+01:00"},
        {"chat": "random", "user": "alice", "text": "now"},
    ],
}


async def test_seed_stores_everything_with_tokens_the_server_accepts(database):
    async with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        seeded = server.seed(**SEED)
        alice, bob = seeded.users["alice"], seeded.users["Bob B."]
        assert alice["email"] == "alice@example.com" and bob["email"] == "bob-b@example.com"
        general, random_ = seeded.chats["general"], seeded.chats["random"]
        assert (general["owner_id"], random_["owner_id"]) == (alice["id"], bob["id"])
        assert [m["created_at"] for m in seeded.messages[:2]] == [
            "2026-01-01T09:00:00.000Z", "2026-01-01T09:00:00.500Z"]
        assert http(f"{server.url}/chats/messages?id={general['id']}",
                    token=bob["token"]) == (200, seeded.messages[:2])
        assert http(f"{server.url}/chats/messages?id={random_['id']}",
                    token=alice["token"]) == (200, seeded.messages[2:])
        login = {"email": "bob-b@example.com", "password": "battery staple"}
        assert http(server.url + "/auth/login", "POST", login)[0] == 200
        async with aiohttp.ClientSession() as session, session.ws_connect(
            server.ws_url, params={"token": alice["token"]}
        ) as ws:  # a pre-issued token opens a websocket too
            await ws.send_json({"type": "join", "chat_id": general["id"], "since": 0})
            frames = [await ws.receive_json(timeout=10) for _ in range(3)]
        replayed = [f for f in frames if f["type"] == "message"]
        assert [f["text"] for f in replayed] == ["first", "second"]


@pytest.mark.parametrize("seed, error", [
    ({"users": ["al"]}, "users[0]: username: must be at least 3 characters"),
    # Another email, so that only the username is taken (when both are, SQLite names the
    # username and PostgreSQL the email: whichever unique index it checks first).
    ({"users": ["alice", {"username": "ALICE", "email": "other@example.com"}]},
     "users: username already taken"),
    ({"users": ["alice", {"username": "alice2", "email": "ALICE@example.com"}]},
     "users: email already taken"),
    ({"chats": ["general"]}, "chats[0]: a chat needs an owner"),
    ({"users": ["alice"], "chats": ["x", "x"]}, "chats[1]: two chats named 'x'"),
    ({"users": ["alice"], "chats": [{"name": "x", "owner": "bob"}]},
     "chats[0].owner: no user 'bob' in this seed"),
    ({"users": ["alice"], "chats": ["x"], "messages": [{"chat": "y", "user": "alice", "text": "t"}]},
     "messages[0].chat: no chat 'y'"),
    ({"users": ["alice"], "chats": ["x"], "messages": [{"chat": "x", "user": "alice", "text": " "}]},
     "messages[0]: text must be a string"),
    ({"users": ["alice"], "chats": ["x"],
      "messages": [{"chat": "x", "user": "alice", "text": "t", "created_at": "2026-01-01 09:00"}]},
     "messages[0].created_at: expected an ISO 8601 time with a time zone"),
    ({"users": ["alice"], "chats": ["x"],
      "messages": [{"chat": "x", "user": "alice", "text": "t", "nonce": "n"}] * 2},
     "messages: a user used the same nonce twice"),
])
def test_bad_seed_data_names_the_entry_and_stores_nothing(backend, database, seed, error):
    with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        with pytest.raises(SeedError, match=re.escape(error)):
            server.seed(**seed)
        seeded = server.seed(users=["alice"], chats=["x"])  # nothing of the bad seed is left
        if backend == "sqlite":  # PostgreSQL keeps ids a rolled-back transaction drew
            assert seeded.users["alice"]["id"] == 1  # a failed seed is rolled back whole
        token = seeded.users["alice"]["token"]
        assert [u["username"] for u in http(server.url + "/users/", token=token)[1]] == ["alice"]
        assert [c["name"] for c in http(server.url + "/chats/", token=token)[1]] == ["x"]


def test_the_plugin_can_be_turned_off(pytester):
    pytester.makepyfile(test_off="def test_off(chatapi_server):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:chatapi")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'chatapi_server' not found*"])


def test_port_zero_with_an_in_memory_database(tmp_path):
    with subprocess.Popen(
        [str(BIN / "chatapi"), "--port", "0", "--db", ":memory:"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "CHATAPI_BCRYPT_ROUNDS": "4"},
    ) as proc:
        try:
            url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            status, user = http(url + "/auth/reg", "POST",
                                {"email": "m@example.com", "username": "memory", "password": "password1"})
            assert status == 201
            assert http(url + "/users/", token=user["token"])[1][0]["username"] == "memory"
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert list(tmp_path.iterdir()) == []  # nothing written to disk


def run_cli(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "chatapi"), *args], input=stdin, capture_output=True, text=True,
        timeout=60, cwd=cwd, check=False, env={**os.environ, "CHATAPI_BCRYPT_ROUNDS": "4"},
    )


def test_admin_commands_from_the_readme_while_the_server_runs(tmp_path):
    database = tmp_path / "chatapi.db"
    with ChatServer(db_path=str(database), bcrypt_rounds=4) as server:
        status, owner = http(server.url + "/auth/reg", "POST",
                             {"email": "o@example.com", "username": "owner", "password": "password1"})
        status, chat = http(server.url + "/chats/create", "POST", {"name": "ops"}, owner["token"])
        assert chat["id"] == 1

        # As written: in the directory of README's first command, with its .venv there.
        (tmp_path / ".venv").symlink_to(BIN.parent)
        for line in readme_block("Operate it", "sh").strip().splitlines():
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=60, check=False)
            assert done.returncode == 0, (line, done.stderr)
            assert done.stderr == f"chatapi: using database {database}\n"

        # create-user, then reset-password: only the second passphrase logs in.
        login = {"email": "admin@example.com", "password": "another passphrase"}
        status, admin = http(server.url + "/auth/login", "POST", login)
        assert status == 200 and admin["username"] == "admin"
        old = {"email": "admin@example.com", "password": "a long passphrase"}
        assert http(server.url + "/auth/login", "POST", old)[0] == 401

    exported = (tmp_path / "chat-1.jsonl").read_text().splitlines()
    assert exported == []  # the chat has no messages yet; see the export test below


def test_create_user_rejects_bad_input_with_one_line(database):
    db = database
    with ChatServer(db_path=db, bcrypt_rounds=4):
        pass  # admin commands work on the database a server created
    done = run_cli("--db", db, "create-user", "--email", "a@example.com", "--username", "al",
                   stdin="password1\n")
    assert done.returncode != 0 and "username" in done.stderr and "Traceback" not in done.stderr
    ok = run_cli("--db", db, "create-user", "--email", "a@example.com", "--username", "alice",
                 stdin="password1\n")
    assert ok.returncode == 0 and json.loads(ok.stdout)["username"] == "alice"
    again = run_cli("--db", db, "create-user", "--email", "A@example.com", "--username", "other",
                    stdin="password1\n")
    assert again.returncode != 0 and "email already taken" in again.stderr


def test_reset_password_revokes_tokens_and_refuses_unknown_email(database):
    with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        _, user = http(server.url + "/auth/reg", "POST",
                       {"email": "r@example.com", "username": "resetme", "password": "password1"})
        done = run_cli("--db", server.config.db_path, "reset-password", "--email", "R@example.com",
                       stdin="brand-new-pass\n")
        assert done.returncode == 0, done.stderr
        assert http(server.url + "/users/me", token=user["token"])[0] == 401
        login = {"email": "r@example.com", "password": "brand-new-pass"}
        assert http(server.url + "/auth/login", "POST", login)[0] == 200
    missing = run_cli("--db", database, "reset-password", "--email", "x@example.com",
                      stdin="brand-new-pass\n")
    assert missing.returncode != 0 and "no user" in missing.stderr


async def test_export_writes_json_lines_in_order(database):
    async with ChatServer(db_path=database, bcrypt_rounds=4) as server:
        async with aiohttp.ClientSession() as session:
            body = {"email": "e@example.com", "username": "exporter", "password": "password1"}
            async with session.post(server.url + "/auth/reg", json=body) as resp:
                token = (await resp.json())["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with session.post(server.url + "/chats/create", json={"name": "x"},
                                    headers=headers) as resp:
                chat = (await resp.json())["id"]
            async with session.ws_connect(server.ws_url, params={"token": token}) as ws:
                for text in ("first", "second", "third ü"):
                    await ws.send_json({"chat_id": chat, "text": text})
                    await ws.receive_json(timeout=5)
            async with session.get(server.url + "/chats/messages", params={"id": chat},
                                   headers=headers) as resp:
                history = await resp.json()
        done = run_cli("--db", server.config.db_path, "export", "--chat", str(chat))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines == history
    assert [m["text"] for m in lines] == ["first", "second", "third ü"]
    missing = run_cli("--db", database, "export", "--chat", "99")
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_the_plugin_imports_nothing_heavy():
    code = ("import sys, chatapi.pytest_plugin; "
            "heavy = [m for m in ('aiohttp', 'aiosqlite', 'bcrypt', 'jwt', 'chatapi.app') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.postgres_only
async def test_reset_password_on_postgresql_closes_the_users_open_sockets(database):
    """The command's notification reaches the running server: its sockets close with 4001."""
    async with (
        ChatServer(db_path=database, bcrypt_rounds=4, presence_interval=3600.0) as server,
        aiohttp.ClientSession() as session,
    ):
        body = {"email": "s@example.com", "username": "socketed", "password": "password1"}
        async with session.post(server.url + "/auth/reg", json=body) as resp:
            token = (await resp.json())["token"]
        async with session.ws_connect(server.ws_url, params={"token": token}) as ws:
            done = await asyncio.to_thread(
                run_cli, "--db", database, "reset-password", "--email", "s@example.com",
                stdin="brand-new-pass\n",
            )
            assert done.returncode == 0, done.stderr
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql://chatapi:s3cret-pw@127.0.0.1:1/chatapi", "cannot connect to PostgreSQL"),
        ("postgresql://chatapi:s3cret-pw@127.0.0.1:notaport/chatapi", "not a valid PostgreSQL URL"),
        ("postgresql://chatapi:s3cret-pw@127.0.0.1:5432", "names no database"),
    ],
)
def test_a_bad_postgresql_setting_stops_the_start_with_one_line(url, says):
    done = run_cli("--port", "0", "--db", url)
    assert done.returncode != 0
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert says in line and "CHATAPI_DB/--db" in line
    assert "s3cret-pw" not in line


@pytest.mark.postgres_only
def test_a_refused_postgresql_login_stops_the_start_with_one_line(backend):
    parts = urlsplit(POSTGRES_URL)
    wrong = POSTGRES_URL.replace(f":{parts.password}@", ":not-the-password@", 1)
    done = run_cli("--port", "0", "--db", wrong)
    line = done.stderr.strip()
    assert done.returncode != 0 and "\n" not in line and "Traceback" not in line
    assert "password authentication failed" in line and "not-the-password" not in line


def test_teams_commands_from_the_readme_while_the_server_runs(tmp_path):
    database = tmp_path / "chatapi.db"
    with ChatServer(db_path=str(database), bcrypt_rounds=4, registration="invite") as server:
        refused = http(server.url + "/auth/reg", "POST",
                       {"email": "x@example.com", "username": "walkin", "password": "password1"})
        assert refused[0] == 403 and "invite" in refused[1]["error"]
        (tmp_path / ".venv").symlink_to(BIN.parent)
        outputs = []
        for line in readme_block("Teams", "sh").strip().splitlines():
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=60, check=False)
            assert done.returncode == 0, (line, done.stderr)
            outputs.append(done.stdout)
        listed = [json.loads(line) for line in outputs[1].splitlines()]
        assert listed == [{"id": 1, "email": "boss@example.com", "username": "boss", "is_admin": True}]
        assert json.loads(outputs[2])["is_admin"] is False
        assert json.loads(outputs[3])["is_admin"] is True

        # The admin logs in, makes an invite code, and a newcomer registers with it.
        status, boss = http(server.url + "/auth/login", "POST",
                            {"email": "boss@example.com", "password": "a long passphrase"})
        assert status == 200
        status, invite = http(server.url + "/invites", "POST", {"uses": 1}, boss["token"])
        assert status == 201
        newcomer = {"email": "new@example.com", "username": "newcomer", "password": "password1",
                    "invite": invite["code"]}
        assert http(server.url + "/auth/reg", "POST", newcomer)[0] == 201
        status, chat = http(server.url + "/chats/create", "POST",
                            {"name": "board", "kind": "private"}, boss["token"])
        assert status == 201 and chat["kind"] == "private"
    chats = run_cli("--db", str(database), "list-chats")
    assert [json.loads(line)["kind"] for line in chats.stdout.splitlines()] == ["private"]
