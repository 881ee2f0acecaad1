"""pytest fixtures for projects that test against ChatAPI (opt out with `-p no:chatapi`).

Only pytest is imported here; the server is imported when a fixture is first used, so
installing ChatAPI costs other test suites nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .testing import ChatServer


@pytest.fixture
def chatapi_server() -> Iterator[ChatServer]:
    """A real ChatAPI server of this test alone, on an empty database (.url, .ws_url, .seed()).

    It runs in a background thread; starting one takes milliseconds, so every test gets
    a fresh one and fixed usernames never collide between tests.
    """
    from .testing import ChatServer

    # A low bcrypt cost keeps registrations fast; this server is for tests only.
    with ChatServer(bcrypt_rounds=4, access_log=False) as server:
        yield server


@pytest.fixture
def chatapi_user(chatapi_server: ChatServer) -> Callable[..., dict[str, Any]]:
    """Factory: chatapi_user(username=None, password=..., email=None) registers a user on
    this test's server -> {id, username, token, email, password}; a refusal raises
    chatapi.client.ChatAPIError with the server's reason."""
    return chatapi_server.register
