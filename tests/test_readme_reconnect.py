"""README's reconnect recipe, run as written against a real server that restarts."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

from chatapi.testing import ChatServer

README = Path(__file__).resolve().parent.parent / "README.md"


class Enough(Exception):
    """Raised by the test's `show` to stop the recipe's endless loop."""


def recipe() -> dict:
    section = README.read_text().split("## Reconnecting without losing messages\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - README's own recipe, run as written
    return namespace


def post(ws_url: str, token: str, chat_id: int, text: str) -> int:
    with connect(f"{ws_url}?token={token}") as ws:
        ws.send(json.dumps({"chat_id": chat_id, "text": text, "nonce": text}))
        while (frame := json.loads(ws.recv(timeout=10)))["type"] != "message":
            pass
        return frame["id"]


def register(url: str, name: str) -> dict:
    body = {"email": f"{name}@example.com", "username": name, "password": "password-" + name}
    request = urllib.request.Request(url + "/auth/reg", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_the_recipe_shows_every_message_once_across_a_restart(database):
    follow = recipe()["follow"]
    db_path = database
    server = ChatServer(db_path=db_path, bcrypt_rounds=4)
    server.start()
    alice = register(server.url, "alice")
    request = urllib.request.Request(
        server.url + "/chats/create",
        data=b'{"name": "general"}',
        headers={"Authorization": "Bearer " + alice["token"]},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        chat = json.load(response)["id"]
    newest = max(post(server.ws_url, alice["token"], chat, f"old {n}") for n in range(3))

    shown: list[str] = []

    def show(username: str, text: str) -> None:
        shown.append(text)
        if text == "last":
            raise Enough

    # A cursor beyond the chat's newest message, as after a database restore.
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            follow(server.url.replace("http", "ws", 1), alice["token"], chat, newest + 10_000, show)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    follower = threading.Thread(target=run, daemon=True)
    follower.start()
    # Probes until the follower shows one: from then on it has joined.
    for n in range(100):
        post(server.ws_url, alice["token"], chat, f"probe {n}")
        if shown:
            break
        time.sleep(0.1)
    assert shown, "the recipe never showed a message"
    for n in range(3):
        post(server.ws_url, alice["token"], chat, f"new {n}")
    port = server.port
    server.stop()
    server = ChatServer(db_path=db_path, bcrypt_rounds=4, port=port)
    server.start()
    post(server.ws_url, alice["token"], chat, "after restart")
    post(server.ws_url, alice["token"], chat, "last")
    follower.join(timeout=30)
    server.stop()
    assert outcome and isinstance(outcome[0], Enough), outcome
    assert len(set(shown)) == len(shown), shown
    probes_shown = [int(text.split()[1]) for text in shown if text.startswith("probe")]
    assert probes_shown == list(range(probes_shown[0], probes_shown[0] + len(probes_shown)))
    rest = [text for text in shown if not text.startswith("probe")]
    assert rest == ["new 0", "new 1", "new 2", "after restart", "last"]
