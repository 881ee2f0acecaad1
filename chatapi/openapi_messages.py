"""The OpenAPI description of messages over HTTP and their changes (merged in by
chatapi/openapi.py)."""

from __future__ import annotations

from typing import Any

from . import messages, teams
from .config import Config

Schema = dict[str, Any]

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


def paths(config: Config) -> dict[str, Schema]:
    """The routes of chatapi/messages.py."""
    message = {"description": "The message as stored now.",
               "content": _json({"$ref": "#/components/schemas/Message"})}
    unknown = _error("Unknown chat (or one the caller may not know of), or no such message "
                     "in it.")
    common = {"401": _response("Unauthorized"), "404": unknown}
    changed = {**common, "409": _error("The message is deleted, or the reaction cap is reached.")}

    one = messages.MESSAGE_PATH.parameters("path")
    reaction = messages.REACTION_PATH.parameters("path")
    body = {"400": _response("BadRequest"), "413": _response("TooLarge")}
    tags = ["messages"]
    return {
        "/chats/{chat_id}/messages": {
            "post": {
                "tags": tags, "operationId": "postMessage",
                "summary": "Post a message (as the websocket does: same checks, group commit, "
                "fan-out)",
                "parameters": teams.CHAT_PATH.parameters("path"),
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
                    "parameters": one, "responses": {"200": message, **common}},
            "patch": {
                "tags": tags, "operationId": "editMessage",
                "summary": "Edit one's own message",
                "parameters": one,
                "requestBody": {"required": True,
                                "content": _json({"$ref": "#/components/schemas/MessageEdit"})},
                "responses": {"200": message, **body, **changed,
                              "403": _error("Not the message's author.")},
            },
            "delete": {
                "tags": tags, "operationId": "deleteMessage",
                "summary": "Delete a message: the author, the chat's owners, admins",
                "description": "Leaves a tombstone in its place; deleting it again changes nothing.",
                "parameters": one,
                "responses": {"200": message, **common,
                              "403": _error("Neither the author nor an owner nor an admin.")},
            },
        },
        "/chats/{chat_id}/messages/{message_id}/reactions/{emoji}": {
            "put": {"tags": tags, "operationId": "addReaction",
                    "summary": "Add the caller's reaction (again: nothing changes)",
                    "parameters": reaction,
                    "responses": {"200": message, "400": _response("BadRequest"), **changed}},
            "delete": {"tags": tags, "operationId": "removeReaction",
                       "summary": "Remove the caller's reaction (none: nothing changes)",
                       "parameters": reaction,
                       "responses": {"200": message, "400": _response("BadRequest"), **common}},
        },
    }
