"""Schemathesis fuzzes every HTTP route of a live server against /openapi.json.

Every default check runs (no 5xx, status codes, content types, headers and bodies
that match the document); a fixed seed and a bounded number of examples keep CI
repeatable and short.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from conftest import BACKENDS, chatapi_process_sync, database_for
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def register(url: str, name: str) -> str:
    body = json.dumps({"email": f"{name}@example.com", "username": name, "password": "password1"})
    request = urllib.request.Request(url + "/auth/reg", data=body.encode(), method="POST")
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())["token"]


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.token = register(url, "schemathesis")


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    # A server process, not a server thread of this one: CPython 3.11's AST constructor
    # fails with "recursion depth mismatch" when a parse here (schemathesis, hypothesis)
    # meets a compilation in another thread (python/cpython#106905). Login failures from
    # the fuzzer must not lock out the rest of the run.
    directory = tmp_path_factory.mktemp("schemathesis")
    with database_for(request.param, directory) as database, chatapi_process_sync(
        directory, database, CHATAPI_ACCESS_LOG="false",
        CHATAPI_LOGIN_FAILURES_PER_ADDRESS=str(10**6), CHATAPI_FRAMES_PER_SECOND="10000",
    ) as url:
        yield Server(url)


def operations(server) -> list:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


_fresh = iter(range(10**9))


def test_api_matches_its_document(server):
    # Hypothesis drives each operation directly: schemathesis' own pytest
    # integration does not run on this pytest version.
    checked = []
    for operation in operations(server):

        @given(case=operation.as_strategy())
        @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            token = server.token
            if case.path == "/auth/logout":
                token = register(server.url, f"logout{next(_fresh)}")  # keep the shared token
            # A plain HTTP client cannot make a websocket handshake: /chats/ws
            # rightly answers it with the documented 400.
            excluded = [positive_data_acceptance] if case.path == "/chats/ws" else []
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded
            )

        check()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /auth/reg" in checked and "GET /chats/messages" in checked
