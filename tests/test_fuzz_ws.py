"""Hypothesis throws hostile frames at a live server: each gets an error frame or a close,
nothing is logged as a traceback, and other clients keep being served."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from conftest import BACKENDS, database_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chatapi.testing import ChatServer

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
field_values = json_values | st.integers() | st.text(max_size=6000)
frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "join", "leave", "presence", "", "MESSAGE"]) | json_values,
        "chat_id": st.sampled_from([1, 0, -1, 2**63, 10**30]) | field_values,
        "text": field_values,
        "nonce": field_values,
        "since": st.sampled_from([0, -1, 2**63, 10**30]) | field_values,
    },
)


def encoded(value) -> str:
    return json.dumps(value, allow_nan=True)


texts = (
    frame_objects.map(encoded)
    | json_values.map(encoded)
    | st.text(max_size=200)
    | st.integers(min_value=1, max_value=20_000).map(lambda depth: "[" * depth + "]" * depth)
    | st.integers(min_value=1, max_value=20_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth)
    | st.just('{"text": "x", "chat_id": 1' + "0" * 5000 + "}")
    | st.just('{"text": "x", "chat_id": 1e999}')
    | st.just('{"text": "dup", "text": 5, "chat_id": 1}')
)
# Sent as text frames although not valid UTF-8, and as binary frames.
raw_bytes = st.binary(max_size=200)
frames = (
    texts.map(lambda t: ("text", t))
    | raw_bytes.map(lambda b: ("invalid-utf8", b"\xff\xfe" + b))
    | raw_bytes.map(lambda b: ("binary", b))
)


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    # No presence frames: each example expects the answer to its own frame.
    with database_for(request.param, tmp_path_factory.mktemp("fuzz")) as database, ChatServer(
        db_path=database, bcrypt_rounds=4, access_log=False, presence_interval=3600.0
    ) as server:
        body = json.dumps({"email": "f@example.com", "username": "fuzzer", "password": "password1"})
        request = urllib.request.Request(server.url + "/auth/reg", data=body.encode(), method="POST")
        with urllib.request.urlopen(request) as resp:
            token = json.loads(resp.read())["token"]
        request = urllib.request.Request(
            server.url + "/chats/create", data=b'{"name": "fuzz"}', method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        urllib.request.urlopen(request).close()
        server.token = token
        yield server


def still_serving(server) -> None:
    with connect(f"{server.ws_url}?token={server.token}") as ws:
        ws.send(json.dumps({"text": "still alive", "chat_id": 1}))
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "message" and frame["text"] == "still alive"


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frame=frames)
def test_every_hostile_frame_gets_an_error_or_a_close(server, caplog, frame):
    kind, payload = frame
    caplog.set_level(logging.INFO)
    with connect(f"{server.ws_url}?token={server.token}", max_size=None) as ws:
        try:
            ws.send(payload, text=(kind != "binary"))
            answer = json.loads(ws.recv(timeout=10))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the server cut the connection without a close frame"
            assert closed.rcvd.code in (1003, 1007, 1008, 1009), closed.rcvd
        else:
            # A valid message frame is simply stored and acknowledged.
            assert answer["type"] in ("error", "message", "joined", "left"), answer
            if answer["type"] == "error":
                assert isinstance(answer["error"], str) and answer["error"]
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


def test_the_server_serves_after_the_fuzzing(server):
    still_serving(server)
