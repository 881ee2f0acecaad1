"""A client written only against the (base) contract, talking to a real server process.

Standard-library HTTP and the `websockets` library: nothing of ours on the client side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect as ws_connect


@pytest.fixture
def server(tmp_path, database) -> Iterator[str]:
    """`python -m chatapi --port 0` as a subprocess; yields its URL from the first stdout line."""
    with subprocess.Popen(
        [sys.executable, "-m", "chatapi", "--port", "0", "--db", database],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"CHATAPI_BCRYPT_ROUNDS": "4", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    ) as proc:
        url = proc.stdout.readline().strip()
        try:
            assert url.startswith("http://127.0.0.1:"), f"no URL on stdout: {url!r}"
            yield url
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr


def call(url: str, method: str, path: str, body=None, token=None) -> tuple[int, object]:
    request = urllib.request.Request(url + path, method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_base_client_end_to_end(server):
    status, alice = call(server, "POST", "/auth/reg",
                         {"email": "alice@example.com", "username": "alice", "password": "secret123"})
    assert status == 201 and set(alice) == {"token", "username", "id"}
    status, bob = call(server, "POST", "/auth/reg",
                       {"email": "bob@example.com", "username": "bob", "password": "secret456"})
    assert status == 201
    status, login = call(server, "POST", "/auth/login",
                         {"email": "bob@example.com", "password": "secret456"})
    assert status == 200 and login["id"] == bob["id"]

    status, me = call(server, "GET", "/users/me", token=alice["token"])
    assert status == 200 and me["username"] == "alice" and me["is_online"] is False
    status, users = call(server, "GET", "/users/", token=alice["token"])
    assert status == 200 and [u["username"] for u in users] == ["alice", "bob"]

    status, chat = call(server, "POST", "/chats/create", {"name": "base"}, token=alice["token"])
    assert status == 201 and chat["name"] == "base"

    ws_url = server.replace("http", "ws", 1) + "/chats/ws?token="
    with ws_connect(ws_url + alice["token"]) as ws_a, ws_connect(ws_url + login["token"]) as ws_b:
        # A base client joins a chat by posting to it.
        ws_b.send(json.dumps({"text": "bob here", "chat_id": chat["id"]}))
        assert json.loads(ws_b.recv(timeout=5))["text"] == "bob here"
        ws_a.send(json.dumps({"text": "hello", "chat_id": chat["id"]}))
        for ws in (ws_a, ws_b):
            frame = json.loads(ws.recv(timeout=5))
            assert frame["text"] == "hello" and frame["username"] == "alice"
            assert frame["created_at"].endswith("Z")
        status, users = call(server, "GET", "/users/", token=alice["token"])
        assert all(u["is_online"] for u in users)

    status, history = call(server, "GET", f"/chats/messages?id={chat['id']}", token=bob["token"])
    assert status == 200
    assert [(m["text"], m["owner_id"]) for m in history] == [
        ("bob here", bob["id"]), ("hello", alice["id"])
    ]
    assert all({"id", "text", "owner_id", "chat_id", "created_at"} <= set(m) for m in history)

    status, error = call(server, "GET", "/chats/messages?id=999", token=bob["token"])
    assert status == 404 and "error" in error


def test_base_client_keeps_working_while_others_edit_and_delete_around_it(server):
    _, alice = call(server, "POST", "/auth/reg",
                    {"email": "alice@example.com", "username": "alice", "password": "secret123"})
    _, bob = call(server, "POST", "/auth/reg",
                  {"email": "bob@example.com", "username": "bob", "password": "secret456"})
    _, chat = call(server, "POST", "/chats/create", {"name": "busy"}, token=bob["token"])
    ws_url = server.replace("http", "ws", 1) + "/chats/ws?token="
    with ws_connect(ws_url + alice["token"]) as ws:
        def message(text: str) -> dict:
            """The next `message` frame: the base client skips every other frame type."""
            while True:
                frame = json.loads(ws.recv(timeout=5))
                if frame.get("type") == "message":
                    assert frame["text"] == text
                    return frame

        ids = []
        for text in ("one", "two"):
            ws.send(json.dumps({"text": text, "chat_id": chat["id"]}))
            ids.append(message(text)["id"])
        # Bob (the chat's owner) uses the superset: posts over HTTP, edits, reacts, deletes.
        base = f"/chats/{chat['id']}/messages"
        status, three = call(server, "POST", base, {"text": "three"}, token=bob["token"])
        assert status == 201
        ids.append(message("three")["id"])
        for method, path, body in (
            ("PATCH", f"{base}/{three['id']}", {"text": "three, edited"}),
            ("PUT", f"{base}/{ids[0]}/reactions/%F0%9F%91%8D", None),
            ("DELETE", f"{base}/{ids[1]}", None),
        ):
            assert call(server, method, path, body, token=bob["token"])[0] == 200
        ws.send(json.dumps({"text": "four", "chat_id": chat["id"]}))
        ids.append(message("four")["id"])
    assert ids == sorted(ids)

    status, history = call(server, "GET", f"/chats/messages?id={chat['id']}", token=alice["token"])
    assert status == 200 and [m["id"] for m in history] == ids
    assert all({"id", "text", "owner_id", "chat_id", "created_at", "username"} <= set(m)
               for m in history)
    assert [m["text"] for m in history] == ["one", "", "three, edited", "four"]


def test_bad_setting_stops_the_start_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatapi", "--port", "0"],
        check=False, capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={"CHATAPI_TOKEN_TTL": "forever", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "CHATAPI_TOKEN_TTL" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_short_secret_stops_the_start_without_echoing_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatapi", "--port", "0"],
        check=False, capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={"CHATAPI_SECRET": "tooshort", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "32 bytes" in result.stderr and "tooshort" not in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_flags():
    result = subprocess.run([sys.executable, "-m", "chatapi", "--help"],
                            check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--db"):
        assert flag in result.stdout
