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

# schemathesis' generation modules are imported here, not lazily during the run: pytest
# rewrites them as they are imported, and CPython 3.11's AST constructor can fail with
# "recursion depth mismatch" when that parse meets compilation in another thread (the
# server's, here): python/cpython#106905.
import schemathesis.generation.jsonschema.builder
import schemathesis.specs.openapi.adapter
from conftest import BACKENDS, database_for
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chatapi.testing import ChatServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def register(url: str, name: str) -> str:
    body = json.dumps({"email": f"{name}@example.com", "username": name, "password": "password1"})
    request = urllib.request.Request(url + "/auth/reg", data=body.encode(), method="POST")
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())["token"]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    # Login failures from the fuzzer must not lock out the rest of the run.
    with database_for(request.param, tmp_path_factory.mktemp("schemathesis")) as database, ChatServer(
        db_path=database, bcrypt_rounds=4, access_log=False, login_failures_per_address=10**6,
        frames_per_second=10_000.0, frame_burst=10_000,
    ) as server:
        server.token = register(server.url, "schemathesis")
        yield server


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
