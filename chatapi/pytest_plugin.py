"""pytest fixtures for projects that test against ChatAPI (opt out with `-p no:chatapi`).

Only pytest is imported here; the server is imported when a fixture is first used, so
installing ChatAPI costs other test suites nothing.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .testing import ChatServer

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def chatapi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    """A real ChatAPI server in a background thread for the whole session (.url, .ws_url)."""
    from .testing import ChatServer

    db_path = tmp_path_factory.mktemp("chatapi") / "chat.db"
    # A low bcrypt cost keeps registrations fast; this server is for tests only.
    with ChatServer(db_path=str(db_path), bcrypt_rounds=4, access_log=False) as server:
        yield server


@pytest.fixture
def chatapi_user(chatapi_server: ChatServer) -> Callable[..., dict[str, Any]]:
    """Factory: chatapi_user(username=None) registers a fresh user -> {id, username, token, ...}."""

    def register(username: str | None = None, password: str = "password-123") -> dict[str, Any]:
        username = username or f"user-{next(_numbers)}"
        body = {"email": f"{username}@example.com", "username": username, "password": password}
        request = urllib.request.Request(
            chatapi_server.url + "/auth/reg",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            user = json.loads(response.read())
        return {**user, "email": body["email"], "password": password}

    return register
