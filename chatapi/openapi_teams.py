"""The OpenAPI description of the Teams routes (merged in by chatapi/openapi.py); their
shapes are declared in chatapi/teams.py."""

from __future__ import annotations

from typing import Any

from .config import Config
from .teams import CHAT_PATH, MEMBER_PATH

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> Schema:
    return {"description": description, "content": _json(_ref("Error"))}


def _body(name: str) -> Schema:
    return {"required": True, "content": _json(_ref(name))}


UNKNOWN = "The chat does not exist, or it is private or direct and the caller is not a member."
NOT_OWNER = "The caller is neither an owner of the chat nor an admin."


def paths(config: Config) -> dict[str, Schema]:
    """The Teams routes."""
    common = {"401": _response("Unauthorized"), "404": _error(UNKNOWN)}
    with_body = {**common, "400": _response("BadRequest"), "413": _response("TooLarge")}
    tags = ["teams"]
    return {
        "/chats/{chat_id}/join": {
            "post": {
                "tags": tags,
                "operationId": "joinChat",
                "summary": "Become a member of a public chat (posting in it does too)",
                "parameters": CHAT_PATH.parameters("path"),
                "responses": {
                    "200": {"description": "A member now.", "content": _json(_ref("JoinedChat"))},
                    **common,
                },
            }
        },
        "/chats/{chat_id}/read": {
            "post": {
                "tags": tags,
                "operationId": "markRead",
                "summary": "Move the caller's read marker forward",
                "description": "The marker only moves forward and never past the chat's last "
                "message. Every socket of the caller gets a `read` frame.",
                "parameters": CHAT_PATH.parameters("path"),
                "requestBody": _body("ReadUpTo"),
                "responses": {
                    "200": {"description": "The marker now.", "content": _json(_ref("ReadMarker"))},
                    **with_body,
                    "409": _error("A public chat the caller has not joined."),
                },
            }
        },
        "/chats/{chat_id}/members": {
            "get": {
                "tags": tags,
                "operationId": "listMembers",
                "summary": "The members of a chat and their roles",
                "parameters": CHAT_PATH.parameters("path"),
                "responses": {
                    "200": {
                        "description": "The members, by user id.",
                        "content": _json({"type": "array", "items": _ref("Member")}),
                    },
                    **common,
                },
            },
            "post": {
                "tags": tags,
                "operationId": "addMember",
                "summary": "Add a member (owners and admins)",
                "parameters": CHAT_PATH.parameters("path"),
                "requestBody": _body("NewMember"),
                "responses": {
                    "201": {"description": "Added.", "content": _json(_ref("Member"))},
                    **with_body,
                    "403": _error(NOT_OWNER),
                    "409": _error("The user is already a member, or the chat is direct."),
                },
            },
        },
        "/chats/{chat_id}/members/{user_id}": {
            "patch": {
                "tags": tags,
                "operationId": "changeRole",
                "summary": "Make a member an owner or a plain member (owners and admins)",
                "parameters": MEMBER_PATH.parameters("path"),
                "requestBody": _body("RoleChange"),
                "responses": {
                    "200": {"description": "Changed.", "content": _json(_ref("ChangedRole"))},
                    **with_body,
                    "403": _error(NOT_OWNER),
                    "409": _error(
                        "The chat's last owner cannot stop being one; a direct chat's members "
                        "never change."
                    ),
                },
            },
            "delete": {
                "tags": tags,
                "operationId": "removeMember",
                "summary": "Remove a member (owners and admins), or leave (one's own id)",
                "description": "The removed member's sockets are unsubscribed at once, on every "
                "process, and get a `member_removed` (or `member_left`) frame.",
                "parameters": MEMBER_PATH.parameters("path"),
                "responses": {
                    "204": {"description": "Removed."},
                    **common,
                    "403": _error(NOT_OWNER),
                    "409": _error(
                        "The chat's last owner cannot leave; a direct chat's members never change."
                    ),
                },
            },
        },
        "/invites": {
            "post": {
                "tags": tags,
                "operationId": "createInvite",
                "summary": "Create an invite code (admins; members too if the server allows)",
                "requestBody": {"required": True, "content": _json(_ref("NewInvite"))},
                "responses": {
                    "201": {"description": "Created.", "content": _json(_ref("Invite"))},
                    "400": _response("BadRequest"),
                    "401": _response("Unauthorized"),
                    "403": _error("The caller may not create invite codes."),
                    "413": _response("TooLarge"),
                },
            }
        },
    }


WEBSOCKET_PROTOCOL = """

Teams. A private or direct chat the socket's user is not a member of answers every frame
exactly as an unknown chat does. Posting in or joining a public chat makes the user a
member. Client to server, besides the above:

- `{"type": "read", "chat_id": int, "message_id": int}`: move the read marker forward.

Server to client, besides the above:

- `{"type": "read", "chat_id", "last_read_id"}`: a read marker of this user moved (to every
  socket of the user, this one included).
- `{"type": "chat_created", "chat": {"id", "name", "owner_id", "created_at", "kind"}}`: a new
  private or direct chat the user is a member of.
- `{"type": "member_added", "chat_id", "user_id", "username", "role", "by", "chat"}`,
  `{"type": "member_role", "chat_id", "user_id", "role", "by"}`,
  `{"type": "member_removed", "chat_id", "user_id", "by"}`,
  `{"type": "member_left", "chat_id", "user_id"}`: membership changes, to the chat's
  subscribers and to the member's own sockets. A removed or leaving member's sockets are
  unsubscribed first (a catch-up in progress stops).
"""
