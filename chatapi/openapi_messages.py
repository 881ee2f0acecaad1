"""The OpenAPI description of messages over HTTP and their changes (merged in by
chatapi/openapi.py)."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

from .config import Config
from .db import MAX_REACTIONS
from .messages import MAX_EMOJI, MAX_NONCE
from .shapes import char_class, character_classes, stripped_pattern

Schema = dict[str, Any]
MAX_ID = 2**63 - 1
_ID: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}

WEBSOCKET_PROTOCOL = """

Messages that change. Every message carries `seq` (its id until it changes, then a new
value from the same sequence at each change); `join` with `since` replays by seq: a message
new to the client as `message`, a changed one as `update`, each once in its latest state.
Client to server, besides the above: `{"type": "edit", "chat_id", "message_id", "text"}`,
`{"type": "delete", "chat_id", "message_id"}`, `{"type": "react" | "unreact", "chat_id",
"message_id", "emoji"}`, and `"reply_to"` on a message frame. Server to client:
`{"type": "update", ...the whole message}` when a message of a subscribed chat changed.
"""


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> Schema:
    return {"description": description, "content": _json({"$ref": "#/components/schemas/Error"})}


def _response(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _text(config: Config) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": config.max_text,
            "pattern": stripped_pattern(1, config.max_text, r"\x00"),
            "description": "not only white space; no U+0000"}


def _emoji_pattern() -> str:
    """What messages.emoji_problem accepts: no white space, '/' or Cc character."""
    white, _ = character_classes()
    control = char_class([c for c in range(sys.maxunicode + 1)
                          if unicodedata.category(chr(c)) == "Cc"])
    return rf"^[^{white}{control}/]{{1,{MAX_EMOJI}}}$"


def schemas(config: Config) -> dict[str, Schema]:
    return {
        "NewMessage": {
            "type": "object",
            "properties": {
                "text": _text(config),
                "nonce": {"type": "string", "minLength": 1, "maxLength": MAX_NONCE,
                          "pattern": r"^[^\x00]*$",
                          "description": "makes the post idempotent (per user)"},
                "reply_to": {**_ID, "description": "a message of the same chat (404 if none)"},
            },
            "required": ["text"],
        },
        "MessageEdit": {
            "type": "object",
            "properties": {"text": _text(config)},
            "required": ["text"],
        },
    }


def paths(config: Config) -> dict[str, Schema]:
    """The routes of chatapi/messages.py."""
    message = {"description": "The message as stored now.",
               "content": _json({"$ref": "#/components/schemas/Message"})}
    unknown = _error("Unknown chat (or one the caller may not know of), or no such message "
                     "in it.")
    common = {"401": _response("Unauthorized"), "404": unknown}
    changed = {**common, "409": _error("The message is deleted, or the reaction cap is reached.")}

    def ids(*extra: Schema) -> list[Schema]:
        return [
            {"name": "chat_id", "in": "path", "required": True,
             "schema": {"type": "integer", "format": "int64"}},
            {"name": "message_id", "in": "path", "required": True,
             "schema": {"type": "integer", "format": "int64"}},
            *extra,
        ]

    emoji = {"name": "emoji", "in": "path", "required": True,
             "description": f"1 to {MAX_EMOJI} characters, no white space, '/' or control "
             f"characters; at most {MAX_REACTIONS} per user per message",
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_EMOJI,
                        "pattern": _emoji_pattern()}}
    body = {"400": _response("BadRequest"), "413": _response("TooLarge")}
    tags = ["messages"]
    return {
        "/chats/{chat_id}/messages": {
            "post": {
                "tags": tags, "operationId": "postMessage",
                "summary": "Post a message (as the websocket does: same checks, group commit, "
                "fan-out)",
                "parameters": ids()[:1],
                "requestBody": {"required": True,
                                "content": _json({"$ref": "#/components/schemas/NewMessage"})},
                "responses": {
                    "201": {**message, "description": "Stored."},
                    "200": {**message, "description": "The nonce was used before: the original."},
                    **body, **common,
                },
            }
        },
        "/chats/{chat_id}/messages/{message_id}": {
            "get": {"tags": tags, "operationId": "getMessage", "summary": "One message",
                    "parameters": ids(), "responses": {"200": message, **common}},
            "patch": {
                "tags": tags, "operationId": "editMessage",
                "summary": "Edit one's own message",
                "parameters": ids(),
                "requestBody": {"required": True,
                                "content": _json({"$ref": "#/components/schemas/MessageEdit"})},
                "responses": {"200": message, **body, **changed,
                              "403": _error("Not the message's author.")},
            },
            "delete": {
                "tags": tags, "operationId": "deleteMessage",
                "summary": "Delete a message: the author, the chat's owners, admins",
                "description": "Leaves a tombstone in its place; deleting it again changes nothing.",
                "parameters": ids(),
                "responses": {"200": message, **common,
                              "403": _error("Neither the author nor an owner nor an admin.")},
            },
        },
        "/chats/{chat_id}/messages/{message_id}/reactions/{emoji}": {
            "put": {"tags": tags, "operationId": "addReaction",
                    "summary": "Add the caller's reaction (again: nothing changes)",
                    "parameters": ids(emoji),
                    "responses": {"200": message, "400": _response("BadRequest"), **changed}},
            "delete": {"tags": tags, "operationId": "removeReaction",
                       "summary": "Remove the caller's reaction (none: nothing changes)",
                       "parameters": ids(emoji),
                       "responses": {"200": message, "400": _response("BadRequest"), **common}},
        },
    }
