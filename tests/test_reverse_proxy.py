"""README's reverse-proxy block, run in a real nginx in front of a real server.

Skipped with a note where nginx is not installed (`apt-get install nginx-light`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import readme_block
from websockets.sync.client import connect

from chatapi.testing import ChatServer

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def proxied(tmp_path, database):
    """(nginx URL, server) for a ChatAPI server behind README's nginx block."""
    with ChatServer(db_path=database, bcrypt_rounds=4, login_failures_per_address=3) as server:
        block = readme_block("Operate it", "nginx")
        assert "proxy_pass http://127.0.0.1:8080;" in block
        block = block.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        port = free_port()
        temp = "\n".join(
            f"    {kind}_temp_path {tmp_path / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (tmp_path / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {tmp_path / 'nginx.pid'};
error_log {tmp_path / 'error.log'};
events {{}}
http {{
    access_log {tmp_path / 'access.log'};
{temp}
    server {{
        listen 127.0.0.1:{port};
        {block}
    }}
}}
""")
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
             "-c", str(tmp_path / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield f"127.0.0.1:{port}", server
        finally:
            nginx.terminate()
            nginx.wait(timeout=30)


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_a_browser_page_behind_the_proxy_opens_a_websocket(proxied):
    address, _server = proxied
    status, user = post(f"http://{address}/auth/reg",
                        {"email": "p@example.com", "username": "proxied", "password": "password1"})
    assert status == 201
    status, chat = post(f"http://{address}/chats/create", {"name": "behind"},
                        {"Authorization": f"Bearer {user['token']}"})
    assert status == 201
    # The page came from the proxy's address, so that is the Origin the browser sends;
    # the Host header that reaches the server must say the same.
    with connect(f"ws://{address}/chats/ws?token={user['token']}",
                 origin=f"http://{address}") as ws:
        ws.send(json.dumps({"chat_id": chat["id"], "text": "through nginx"}))
        assert json.loads(ws.recv(timeout=10))["text"] == "through nginx"


def test_behind_the_proxy_every_client_shares_the_per_address_limit(proxied):
    # As README says: X-Forwarded-For is not read, so the server counts failed logins of
    # all clients against the proxy's one address (here limited to 3).
    address, _server = proxied
    post(f"http://{address}/auth/reg",
         {"email": "ok@example.com", "username": "innocent", "password": "password1"})
    for n in range(3):
        status, _ = post(f"http://{address}/auth/login",
                         {"email": f"nobody{n}@example.com", "password": "wrong password"},
                         {"X-Forwarded-For": f"198.51.100.{n}"})
        assert status == 401
    status, body = post(f"http://{address}/auth/login",
                        {"email": "ok@example.com", "password": "password1"},
                        {"X-Forwarded-For": "203.0.113.9"})
    assert status == 429, body
