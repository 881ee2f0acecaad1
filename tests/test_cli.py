"""The `chatapi` command as an operator runs it: start-up and admin-command failures.

These are about the SQLite file (missing, not a database, created or not); PostgreSQL
URLs have their tests in tests/test_embedding.py and one here.

Every test runs the installed command in a temporary working directory and looks at what
a person would see: the exit code, the one line on stderr, and the files left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.sync.client import connect

from chatapi import db, sqlite
from chatapi.cli import openable_url
from chatapi.testing import ChatServer

CHATAPI = str(Path(sys.executable).parent / "chatapi")
PASSWORD = "password1\n"
ADMIN_COMMANDS = {
    "create-user": ["create-user", "--email", "a@example.com", "--username", "alice"],
    "reset-password": ["reset-password", "--email", "a@example.com"],
    "export": ["export", "--chat", "1"],
}


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any CHATAPI_* setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPI_")}
    return {**env, "CHATAPI_BCRYPT_ROUNDS": "4", **settings}


def chatapi(*args: str, cwd: Path, stdin: str = PASSWORD, **settings: str):
    # A timeout, so that a command that hangs fails the test instead of stalling it.
    return subprocess.run(
        [CHATAPI, *args], cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=60, check=False, env=environment(**settings),
    )


def assert_one_line_failure(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """A non-zero exit, nothing on stdout, one `chatapi:` line on stderr with `fragments`."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("chatapi: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert done.stdout == ""
    return lines[0]


def make_database(path: Path) -> None:
    async def create() -> None:
        await (await db.open_database(str(path))).close()

    asyncio.run(create())


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# Admin commands refuse a database that does not exist.


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
def test_admin_command_refuses_the_default_database_when_it_is_missing(tmp_path, command):
    done = chatapi(*ADMIN_COMMANDS[command], cwd=tmp_path)
    assert_one_line_failure(done, f"no database at {tmp_path / 'chatapi.db'}")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
def test_admin_command_refuses_a_missing_db_flag(tmp_path, command):
    done = chatapi("--db", "elsewhere.db", *ADMIN_COMMANDS[command], cwd=tmp_path)
    assert_one_line_failure(done, f"no database at {tmp_path / 'elsewhere.db'}")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
def test_admin_command_refuses_a_missing_chatapi_db(tmp_path, command):
    done = chatapi(*ADMIN_COMMANDS[command], cwd=tmp_path, CHATAPI_DB=str(tmp_path / "x.db"))
    assert_one_line_failure(done, f"no database at {tmp_path / 'x.db'}")
    assert files_in(tmp_path) == []


def test_db_flag_after_the_command_is_checked_too(tmp_path):
    done = chatapi("export", "--chat", "1", "--db", "/no/such.db", cwd=tmp_path)
    assert_one_line_failure(done, "no database at /no/such.db")
    assert not Path("/no/such.db").exists()
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
def test_admin_command_refuses_an_in_memory_database(tmp_path, command):
    done = chatapi("--db", ":memory:", *ADMIN_COMMANDS[command], cwd=tmp_path)
    assert_one_line_failure(done, "':memory:'")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
def test_admin_command_refuses_a_file_that_is_not_a_database(tmp_path, command):
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    done = chatapi("--db", "notes.txt", *ADMIN_COMMANDS[command], cwd=tmp_path)
    assert_one_line_failure(done, str(tmp_path / "notes.txt"), "not a database")
    assert (tmp_path / "notes.txt").read_text() == "not a database\n" * 100
    assert files_in(tmp_path) == ["notes.txt"]


# Every admin command says which database it used (on stderr: export's stdout is data).


def test_each_admin_command_names_its_database_and_export_stdout_is_only_json(tmp_path):
    database = tmp_path / "chatapi.db"
    make_database(database)
    used = f"chatapi: using database {database}\n"

    created = chatapi(*ADMIN_COMMANDS["create-user"], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stderr == used
    assert json.loads(created.stdout)["username"] == "alice"

    reset = chatapi(*ADMIN_COMMANDS["reset-password"], cwd=tmp_path, stdin="password2\n")
    assert reset.returncode == 0, reset.stderr
    assert reset.stderr == used

    with ChatServer(db_path=str(database), bcrypt_rounds=4) as server:
        login = urllib.request.Request(
            server.url + "/auth/login", method="POST",
            data=json.dumps({"email": "a@example.com", "password": "password2"}).encode(),
        )
        with urllib.request.urlopen(login, timeout=10) as response:
            token = json.load(response)["token"]
        create = urllib.request.Request(
            server.url + "/chats/create", method="POST", data=b'{"name": "ops"}',
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(create, timeout=10) as response:
            chat = json.load(response)["id"]
        with connect(f"{server.ws_url}?token={token}") as ws:
            ws.send(json.dumps({"chat_id": chat, "text": "kept"}))
            assert json.loads(ws.recv(timeout=10))["text"] == "kept"
            ws.send(json.dumps({"chat_id": chat, "text": "taken back"}))
            taken = json.loads(ws.recv(timeout=10))
            ws.send(json.dumps({"type": "delete", "chat_id": chat, "message_id": taken["id"]}))
            assert json.loads(ws.recv(timeout=10))["deleted"] is True
        exported = chatapi("export", "--chat", str(chat), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == used
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    # The tombstone keeps its place.
    assert [(m["text"], m.get("deleted", False)) for m in lines] == [("kept", False), ("", True)]


def test_a_failing_admin_command_still_names_its_database(tmp_path):
    make_database(tmp_path / "chatapi.db")
    done = chatapi("export", "--chat", "7", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"chatapi: using database {tmp_path / 'chatapi.db'}",
        "chatapi: chat 7 does not exist",
    ]


@pytest.mark.postgres_only
def test_an_admin_command_on_postgresql_names_the_database_without_its_password(
    tmp_path, backend, database
):
    with ChatServer(db_path=database, bcrypt_rounds=4):
        pass  # the schema exists, as on a server's database
    done = chatapi("--db", database, "export", "--chat", "7", cwd=tmp_path)
    assert done.returncode == 1
    password = urlsplit(database).password
    assert password  # the test URL carries one
    shown = database.replace(f":{password}@", ":***@", 1)
    assert done.stderr.splitlines() == [
        f"chatapi: using database {shown}",
        "chatapi: chat 7 does not exist",
    ]
    assert f":{password}@" not in done.stderr
    assert files_in(tmp_path) == []


# Serving: a path that cannot be a database stops the start with one line.


def test_serve_refuses_a_file_that_is_not_a_database_instead_of_hanging(tmp_path):
    (tmp_path / "chatapi.db").write_bytes(b"PK\x03\x04 this is a zip file, not SQLite" * 50)
    done = chatapi("--port", "0", cwd=tmp_path)  # the timeout catches a hang
    assert_one_line_failure(done, str(tmp_path / "chatapi.db"), "not a database")
    assert files_in(tmp_path) == ["chatapi.db"]  # no -wal or -shm beside it


def test_opening_a_file_that_is_not_a_database_fails_and_ends(tmp_path):
    # Below the command's own check: the storage layer must not leave a connection thread
    # behind that keeps the process alive (this is what made the server hang).
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    code = (
        "import asyncio, sys\n"
        "from chatapi import db\n"
        "try:\n"
        "    asyncio.run(db.open_database(sys.argv[1]))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "junk.db")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "DatabaseError file is not a database\n"
    assert done.stderr == ""


def test_serve_refuses_a_directory(tmp_path):
    (tmp_path / "data").mkdir()
    done = chatapi("--port", "0", "--db", "data", cwd=tmp_path)
    assert_one_line_failure(done, str(tmp_path / "data"), "directory")
    assert files_in(tmp_path) == ["data"] and files_in(tmp_path / "data") == []


def test_serve_refuses_a_path_under_a_missing_directory(tmp_path):
    done = chatapi("--port", "0", cwd=tmp_path, CHATAPI_DB=str(tmp_path / "no" / "chat.db"))
    assert_one_line_failure(done, str(tmp_path / "no" / "chat.db"), f"no directory {tmp_path / 'no'}")
    assert files_in(tmp_path) == []


def test_serve_on_a_port_in_use_names_the_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = chatapi("--port", str(port), "--db", ":memory:", cwd=tmp_path)
    assert_one_line_failure(done, f"cannot listen on 127.0.0.1 port {port}", "in use")


def test_serve_on_an_unknown_host_names_it(tmp_path):
    done = chatapi("--port", "0", "--db", ":memory:", cwd=tmp_path,
                   CHATAPI_HOST="no-such-host.invalid")
    assert_one_line_failure(done, "cannot listen on no-such-host.invalid port 0")


def test_serve_creates_the_default_database_and_names_it(tmp_path):
    with subprocess.Popen(
        [CHATAPI, "--port", "0"], cwd=tmp_path, env=environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            url = proc.stdout.readline().strip()
            with urllib.request.urlopen(url + "/health", timeout=10) as response:
                assert response.status == 200
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"database {tmp_path / 'chatapi.db'}" in stderr
    assert "Traceback" not in stderr
    assert (tmp_path / "chatapi.db").is_file()
    with sqlite3.connect(tmp_path / "chatapi.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (sqlite.SCHEMA_VERSION,)


# Settings: a bad value names the variable the user set, in plain words.


BAD_SETTINGS = [
    ("CHATAPI_PORT", "http", "whole number"),
    ("CHATAPI_PORT", "70000", "from 0 to 65535"),
    ("CHATAPI_TOKEN_TTL", "7 weeks", "duration"),
    ("CHATAPI_TOKEN_TTL", "0", "positive"),
    ("CHATAPI_HEARTBEAT", "soon", "positive number"),
    ("CHATAPI_HEARTBEAT", "-1", "positive number"),
    ("CHATAPI_HEARTBEAT", "nan", "positive number"),
    ("CHATAPI_HEARTBEAT", "inf", "positive number"),
    ("CHATAPI_BCRYPT_ROUNDS", "twelve", "whole number"),
    ("CHATAPI_BCRYPT_ROUNDS", "3", "from 4 to 31"),
    ("CHATAPI_LOGIN_FAILURES", "five", "positive whole number"),
    ("CHATAPI_LOGIN_FAILURES", "0", "positive whole number"),
    ("CHATAPI_LOGIN_FAILURES_PER_ADDRESS", "lots", "positive whole number"),
    ("CHATAPI_LOGIN_FAILURES_PER_ADDRESS", "-50", "positive whole number"),
    ("CHATAPI_FRAMES_PER_SECOND", "fast", "positive number"),
    ("CHATAPI_FRAMES_PER_SECOND", "0", "positive number"),
    ("CHATAPI_FRAMES_PER_SECOND", "nan", "positive number"),
    ("CHATAPI_MAX_SOCKETS_PER_USER", "abc", "positive whole number"),
    ("CHATAPI_MAX_SOCKETS_PER_USER", "0", "positive whole number"),
    ("CHATAPI_MAX_SOCKETS_PER_USER", "2.5", "positive whole number"),
    ("CHATAPI_EXPOSE_PASSWORD_HASH", "maybe", "true or false"),
    ("CHATAPI_METRICS", "sometimes", "true or false"),
]


@pytest.mark.parametrize("variable, value, wanted", BAD_SETTINGS)
def test_a_bad_setting_stops_the_start_naming_the_variable(tmp_path, variable, value, wanted):
    done = chatapi("--port", "0", cwd=tmp_path, **{variable: value})
    line = assert_one_line_failure(done, f"chatapi: bad setting: {variable} must be", wanted,
                                   f"got {value!r}")
    for python_wording in ("int()", "base 10", "could not convert", "_per_", "float"):
        assert python_wording not in line
    assert files_in(tmp_path) == []  # not even the default database


@pytest.mark.parametrize("variable, value, wanted", BAD_SETTINGS[:4])
def test_a_bad_setting_stops_an_admin_command_too(tmp_path, variable, value, wanted):
    make_database(tmp_path / "chatapi.db")
    done = chatapi("export", "--chat", "1", cwd=tmp_path, **{variable: value})
    assert_one_line_failure(done, variable, wanted)


def test_a_bad_port_flag_is_named_as_the_flag(tmp_path):
    done = chatapi("--port", "70000", cwd=tmp_path)
    assert_one_line_failure(done, "--port must be a whole number from 0 to 65535, got 70000")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "origins, fragment",
    [
        ("chat.example.com", "'chat.example.com' is not an origin"),
        ("https://chat.example.com/", "no path, not even a trailing /"),
        ("https://chat.example.com/app", "no path"),
        ("https://ok.example, ftp://files.example", "'ftp://files.example' is not an origin"),
        ("https://chat.example.com:443", "drop ':443'"),
        ("https://chat.example.com:99999", "is not an origin"),
    ],
)
def test_an_origin_that_no_browser_sends_stops_the_start(tmp_path, origins, fragment):
    done = chatapi("--port", "0", cwd=tmp_path, CHATAPI_ALLOWED_ORIGINS=origins)
    assert_one_line_failure(done, "CHATAPI_ALLOWED_ORIGINS", fragment, "scheme://host[:port]"
                            if "443" not in fragment else "")
    assert files_in(tmp_path) == []


def test_allowed_origins_are_lower_cased_and_then_admitted(tmp_path):
    # A browser on https://Chat.Example.com:8443 sends the origin in lower case.
    settings = {"CHATAPI_ALLOWED_ORIGINS": "HTTPS://Chat.Example.com:8443"}
    with subprocess.Popen(
        [CHATAPI, "--port", "0", "--db", ":memory:"], cwd=tmp_path, env=environment(**settings),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:
        try:
            url = proc.stdout.readline().strip()
            request = urllib.request.Request(
                url + "/health", headers={"Origin": "https://chat.example.com:8443"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                allowed = response.headers["Access-Control-Allow-Origin"]
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    assert allowed == "https://chat.example.com:8443"


# The URL printed first on stdout is one a browser on this machine can open.


@pytest.mark.parametrize(
    "bound, url",
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("192.0.2.7", "http://192.0.2.7:8080"),
        ("::1", "http://[::1]:8080"),
    ],
)
def test_a_wildcard_address_is_printed_as_loopback(bound, url):
    # Servers in this suite listen on 127.0.0.1 only, so the wildcard case is checked here
    # and the printed URL is opened for real below.
    assert openable_url(bound, 8080) == url


def test_the_printed_url_opens(tmp_path):
    with subprocess.Popen(
        [CHATAPI, "--host", "127.0.0.1", "--port", "0", "--db", ":memory:"], cwd=tmp_path,
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:
        try:
            url = proc.stdout.readline().strip()
            with urllib.request.urlopen(url + "/health", timeout=10) as response:
                assert json.load(response) == {"status": "ok"}
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


# Ctrl-C at the password prompt: one line, exit 130, nothing stored.


def read_until(fd: int, wanted: bytes, deadline: float) -> bytes:
    """Bytes from a pty master until `wanted` appears, or its end (the child exited)."""
    seen = b""
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.parametrize("keys, code, line", [
    (b"\x03", 130, "chatapi: interrupted"),         # Ctrl-C
    (b"\x04", 1, "chatapi: no password given"),     # Ctrl-D
])
def test_leaving_the_password_prompt(tmp_path, keys, code, line):
    database = tmp_path / "chatapi.db"
    make_database(database)
    master, slave = os.openpty()
    # The command runs as a session leader that opens the pty by name, which makes it its
    # controlling terminal: getpass reads /dev/tty, as for an operator at a terminal.
    attach = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "[os.dup2(fd, n) for n in (0, 1, 2)]; os.execv(sys.argv[2], sys.argv[2:])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", attach, os.ttyname(slave), CHATAPI,
         *ADMIN_COMMANDS["create-user"]],
        cwd=tmp_path, env=environment(), start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        before = read_until(master, b"New password: ", deadline)
        assert b"New password: " in before, before
        # Only now: while nobody holds the pty open, reading it fails at once.
        os.close(slave)
        slave = -1
        os.write(master, keys)
        after = read_until(master, b"\0never\0", deadline).decode(errors="replace")
        assert proc.wait(timeout=30) == code
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert "Traceback" not in after
    assert [text for text in after.replace("^C", "").splitlines() if text.strip()] == [line]
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
