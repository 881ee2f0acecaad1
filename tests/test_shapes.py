"""chatapi.shapes: each shape's read() accepts exactly what its schema() accepts, and
refusals keep the contract's words."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator

from chatapi import messages, realtime, teams, users
from chatapi.shapes import MAX_ID, FieldError, Shape

# Each request shape with a body it accepts, which the test then changes.
REQUEST_SHAPES = [
    (users.REGISTRATION, {"email": "a@b.co", "username": "alice", "password": "password"}),
    (users.CREDENTIALS, {"email": "a@b.co", "password": "p"}),
    (users.PASSWORD, {"password": "password"}),
    (teams.NEW_CHAT, {"name": "team"}),
    (teams.NEW_CHAT, {"kind": "direct", "user_id": 2}),
    (teams.NEW_MEMBER, {"user_id": 2}),
    (teams.ROLE_CHANGE, {"role": "owner"}),
    (teams.READ_UP_TO, {"message_id": 0}),
    (teams.NEW_INVITE, {}),
    (messages.new_message(50), {"text": "hi", "nonce": "n", "reply_to": 1}),
    (messages.message_edit(50), {"text": "hi"}),
    (messages.REACTION, {"emoji": "+1"}),
    (messages.REACTION_PATH, {"chat_id": 1, "message_id": 1, "emoji": "👍‍"}),
    (realtime.post_frame(50), {"chat_id": 1, "text": "hi"}),
    (realtime.JOIN_FRAME, {"type": "join", "chat_id": 1}),
    (realtime.LEAVE_FRAME, {"type": "leave", "chat_id": 1}),
    (realtime.READ_FRAME, {"type": "read", "chat_id": 1, "message_id": 0}),
]

# Values near every boundary the shapes draw: white space, control characters, U+0000,
# email-like text, lengths around the limits, ids around 0 and 2**63-1, the enums.
WHITE = st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "\x1c", "\x85"])
SPECIAL = st.sampled_from(["\x00", "\u200b", "\u200d", "\x07", "@", ".", "/", "a", "é", "😀"])
PIECES = st.one_of(WHITE, SPECIAL, st.text(max_size=4))
TEXTS = st.one_of(
    st.lists(PIECES, max_size=12).map("".join),
    st.builds(lambda n, pad: pad + "x" * n + pad, st.sampled_from([1, 2, 7, 8, 49, 50, 51, 128, 129,
                                                                    253, 254, 255, 256]), WHITE),
    st.builds(lambda n: "x" * n, st.sampled_from([31, 32, 33, 63, 64, 65])),
    st.builds(lambda a, b, c: f"{a}@{b}.{c}", st.text(max_size=3), st.text(max_size=3),
              st.text(max_size=3)),
    st.sampled_from(["public", "private", "direct", "owner", "member", "message", "join", "leave",
                     "read", "x", ""]),
)
INTS = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 59, 60, 61, 999, 1000, 1001, 604800, 31536000, 31536001,
                     MAX_ID, MAX_ID + 1]),
    st.integers(),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, TEXTS, st.floats(allow_nan=False))
VALUES = st.one_of(SCALARS, st.lists(st.one_of(INTS, SCALARS), max_size=4),
                   st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))


def names(shape: Any) -> list[str]:
    if isinstance(shape, Shape):
        return list(shape.fields)
    return sorted({name for s in shape.shapes.values() for name in s.fields} | {shape.key})


def bodies(shape: Any, accepted: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An accepted body with a field or two left out, and a field or two changed."""
    fields = names(shape) + ["unknown"]

    def change(left_out: list[str], changed: dict[str, Any]) -> dict[str, Any]:
        body = {name: value for name, value in accepted.items() if name not in left_out}
        return {**body, **changed}

    return st.builds(
        change,
        st.lists(st.sampled_from(fields), max_size=1),
        st.dictionaries(st.sampled_from(fields), VALUES, max_size=2),
    )


def reads(shape: Any, body: dict[str, Any]) -> bool:
    try:
        shape.read(body)
    except FieldError:
        return False
    return True


@pytest.mark.parametrize(
    ("shape", "accepted"), REQUEST_SHAPES, ids=[shape.name for shape, _ in REQUEST_SHAPES]
)
def test_read_accepts_exactly_what_the_schema_accepts(shape, accepted):
    validator = OAS30Validator(shape.schema())
    assert reads(shape, accepted) and validator.is_valid(accepted)

    @given(body=bodies(shape, accepted))
    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    def check(body):
        assert reads(shape, body) == validator.is_valid(body), body

    check()


@pytest.mark.parametrize(
    ("shape", "body", "field", "reason"),
    [
        (users.REGISTRATION, {}, "email", "is required"),
        (users.REGISTRATION, {"email": 5}, "email", "must be a string"),
        (users.REGISTRATION, {"email": "  "}, "email", "must not be empty"),
        (users.REGISTRATION, {"email": "a@b"}, "email", "must be a valid email address"),
        (users.REGISTRATION, {"email": "a@b.co", "username": " al "}, "username",
         "must be at least 3 characters"),
        (users.REGISTRATION, {"email": "a@b.co", "username": "a\x07l"}, "username",
         "must not contain control characters"),
        (users.REGISTRATION, {"email": "a@b.co", "username": "al\ud800"}, "username",
         "must be valid Unicode text (no lone surrogates)"),
        (users.REGISTRATION, {"email": "a@b.co", "username": "alice", "password": "p" * 129},
         "password", "must be at most 128 characters"),
        (teams.NEW_CHAT, {"kind": "x"}, "kind", "must be 'public', 'private' or 'direct'"),
        (teams.NEW_CHAT, {"name": "a\x00"}, "name", "must not contain the character U+0000"),
        (teams.NEW_CHAT, {"name": "a", "members": [0]}, "members",
         "must be a list of at most 100 user ids"),
        (teams.NEW_CHAT, {"kind": "direct", "user_id": None}, "user_id", "is required"),
        (teams.NEW_CHAT, {"kind": "direct", "user_id": True}, "user_id",
         "must be a user id (a positive integer)"),
        (teams.ROLE_CHANGE, {}, "role", "must be 'owner' or 'member'"),
        (teams.READ_UP_TO, {"message_id": None}, "message_id",
         "must be a message id (an integer of 0 or more)"),
        (teams.NEW_INVITE, {"uses": 0}, "uses", "must be an integer between 1 and 1000"),
        (messages.new_message(50), {"text": "hi", "reply_to": 0}, "reply_to",
         "must be a message id (a positive integer)"),
        (messages.REACTION, {}, "emoji", "must be a string of 1 to 32 characters"),
        (messages.REACTION, {"emoji": "x" * 33}, "emoji", "must be a string of 1 to 32 characters"),
        (messages.REACTION, {"emoji": "a\tb"}, "emoji",
         "must not contain white space, '/' or control characters"),
        (messages.REACTION, {"emoji": "a/b"}, "emoji",
         "must not contain white space, '/' or control characters"),
    ],
)
def test_refusals_keep_their_words(shape, body, field, reason):
    with pytest.raises(FieldError) as refused:
        shape.read(body)
    assert (refused.value.status, refused.value.details) == (400, {field: reason})
    assert refused.value.message == f"{field}: {reason}"


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ({"text": "hi"}, "chat_id is required"),
        ({"chat_id": "1", "text": "hi"}, "chat_id must be a positive integer"),
        ({"chat_id": 1}, "text is required and must be a string"),
        ({"chat_id": 1, "text": " \n"}, "text must not be empty or only white space"),
        ({"chat_id": 1, "text": "x" * 51}, "text must be at most 50 characters"),
        ({"chat_id": 1, "text": "\ud800"}, "text must be valid Unicode (no lone surrogates)"),
        ({"chat_id": 1, "text": "a\x00"}, "text must not contain the character U+0000"),
        ({"chat_id": 1, "text": "a", "nonce": ""},
         "nonce must be a string of 1 to 64 characters (not U+0000)"),
    ],
)
def test_frame_refusals_keep_their_words(frame, words):
    with pytest.raises(FieldError) as refused:
        realtime.post_frame(50).read(frame)
    assert refused.value.frame_text() == words


def test_read_gives_defaults_and_the_values_as_read():
    assert users.REGISTRATION.read(
        {"email": " Al@Example.COM ", "username": " al1 ", "password": "password", "x": 1}
    ) == {"email": "al@example.com", "username": "al1", "password": "password", "invite": None}
    assert teams.NEW_CHAT.read({"name": " team "}) == {"name": "team", "members": (), "kind": "public"}
    assert teams.NEW_CHAT.read({"kind": "direct", "user_id": 2}) == {
        "user_id": 2, "name": "direct", "kind": "direct"
    }
    assert realtime.JOIN_FRAME.read({"type": "join", "chat_id": 3, "since": None}) == {
        "type": "join", "chat_id": 3, "since": None
    }


def test_query_parameters_are_read_from_their_text():
    from chatapi.chats import HISTORY

    assert HISTORY.read_query({"id": "-5", "limit": "10"}) == {
        "id": -5, "limit": 10, "before": None, "after": None
    }
    for query, details in [
        ({}, {"id": "query parameter is required"}),
        ({"id": " 5"}, {"id": "must be an integer"}),
        ({"id": "1", "limit": "1001"}, {"limit": "must be between 1 and 1000"}),
    ]:
        with pytest.raises(FieldError) as refused:
            HISTORY.read_query(query)
        assert refused.value.details == details


def test_dump_keeps_the_declared_fields_of_a_row():
    row = {"id": 1, "name": "n", "owner_id": 2, "created_at": "t", "kind": "public", "role": None}
    assert teams.CHAT.dump(row) == {k: row[k] for k in ("id", "name", "owner_id", "created_at", "kind")}


async def test_the_served_document_takes_its_schemas_from_the_shapes(client):
    document = await (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    from chatapi import chats
    from chatapi.keys import CONFIG

    post = realtime.post_frame(client.app[CONFIG].max_text)
    for shape in [*(shape for shape, _ in REQUEST_SHAPES[:-4]), post, teams.CHAT, teams.LISTED_CHAT]:
        if shape.name in schemas and shape.name not in ("NewMessage", "MessageEdit"):  # max_text 50
            assert schemas[shape.name] == shape.schema(), shape.name
    assert "PostFrame" in schemas and "Password" not in schemas
    max_text = client.app[CONFIG].max_text
    for shape in (chats.MESSAGE, messages.new_message(max_text), messages.message_edit(max_text)):
        assert schemas[shape.name] == shape.schema(), shape.name
    paths = document["paths"]
    one = "/chats/{chat_id}/messages/{message_id}"
    assert paths[one]["patch"]["parameters"] == messages.MESSAGE_PATH.parameters("path")
    assert paths[one + "/reactions/{emoji}"]["put"]["parameters"] == (
        messages.REACTION_PATH.parameters("path")
    )

