"""The OpenAPI description of the Teams routes and shapes (merged in by chatapi/openapi.py)."""

from __future__ import annotations

from typing import Any

from .config import Config
from .teams import (
    KINDS,
    MAX_INVITE_SECONDS,
    MAX_INVITE_USES,
    MAX_MEMBERS_AT_CREATION,
    ROLES,
    UNREAD_CAP,
)

Schema = dict[str, Any]
MAX_ID = 2**63 - 1


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _id() -> Schema:
    return {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}


def _object(properties: Schema, required: list[str]) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _error(description: str) -> Schema:
    return {"description": description, "content": _json(_ref("Error"))}


CHAT_PROPERTIES: Schema = {
    "id": _id(),
    "name": {"type": "string"},
    "owner_id": _id(),
    "created_at": _ref("Timestamp"),
    "kind": {"type": "string", "enum": list(KINDS)},
}
ROLE: Schema = {"type": "string", "enum": list(ROLES)}


def schemas(config: Config) -> dict[str, Schema]:
    """The Teams shapes, by component name."""
    return {
        "ListedChat": _object(
            {
                **CHAT_PROPERTIES,
                "is_member": {"type": "boolean"},
                "role": {**ROLE, "description": "members only"},
                "last_read_id": {
                    "type": "integer", "minimum": 0, "description": "members only",
                },
                "unread": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": UNREAD_CAP,
                    "description": "members only: messages after the read marker not sent by "
                    f"the caller; {UNREAD_CAP} when capped",
                },
                "unread_capped": {
                    "type": "boolean",
                    "description": f"members only: more than {UNREAD_CAP} unread messages "
                    f"(the count is exact; `unread` shows at most {UNREAD_CAP}); show {UNREAD_CAP}+",
                },
                "other_user": {
                    "type": "object",
                    "description": "direct chats only: the other member",
                    "properties": {"id": _id(), "username": {"type": "string"}},
                    "required": ["id", "username"],
                    "additionalProperties": False,
                },
            },
            [*CHAT_PROPERTIES, "is_member"],
        ),
        "JoinedChat": _object({**CHAT_PROPERTIES, "role": ROLE}, [*CHAT_PROPERTIES, "role"]),
        "Member": _object(
            {"user_id": _id(), "username": {"type": "string"}, "role": ROLE},
            ["user_id", "username", "role"],
        ),
        "NewMember": {
            "type": "object",
            "properties": {"user_id": _id(), "role": ROLE},
            "required": ["user_id"],
        },
        "RoleChange": {"type": "object", "properties": {"role": ROLE}, "required": ["role"]},
        "ChangedRole": _object({"user_id": _id(), "role": ROLE}, ["user_id", "role"]),
        "ReadUpTo": {
            "type": "object",
            "properties": {"message_id": {**_id(), "minimum": 0}},
            "required": ["message_id"],
        },
        "ReadMarker": _object(
            {"chat_id": _id(), "last_read_id": {"type": "integer", "minimum": 0}},
            ["chat_id", "last_read_id"],
        ),
        "NewInvite": {
            "type": "object",
            "properties": {
                "expires_in": {
                    "type": "integer",
                    "minimum": 60,
                    "maximum": MAX_INVITE_SECONDS,
                    "description": "seconds (default a week)",
                },
                "uses": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_INVITE_USES,
                    "description": "registrations it allows (default 1)",
                },
            },
        },
        "Invite": _object(
            {
                "code": {"type": "string"},
                "expires_at": _ref("Timestamp"),
                "uses_left": {"type": "integer", "minimum": 0},
                "created_at": _ref("Timestamp"),
            },
            ["code", "expires_at", "uses_left", "created_at"],
        ),
    }


def new_chat(name: Schema) -> Schema:
    """The body of POST /chats/create: a public or private chat, or a direct one."""
    return {
        "type": "object",
        "properties": {
            "name": name,
            "kind": {"type": "string", "enum": list(KINDS), "default": "public"},
            "members": {
                "type": "array",
                "items": _id(),
                "maxItems": MAX_MEMBERS_AT_CREATION,
                "description": "public and private chats: members besides the creator",
            },
            "user_id": {**_id(), "description": "direct chats: the other user"},
        },
        "anyOf": [
            {"required": ["name"], "properties": {"kind": {"enum": ["public", "private"]}}},
            {"required": ["kind", "user_id"], "properties": {"kind": {"enum": ["direct"]}}},
        ],
    }


def _chat_id() -> Schema:
    return {
        "name": "chat_id",
        "in": "path",
        "required": True,
        "description": "a chat; one the caller may not know of answers as an unknown chat",
        "schema": {"type": "integer", "format": "int64"},
    }


def _user_id() -> Schema:
    return {"name": "user_id", "in": "path", "required": True, "schema": _id()}


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
                "parameters": [_chat_id()],
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
                "parameters": [_chat_id()],
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
                "parameters": [_chat_id()],
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
                "parameters": [_chat_id()],
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
                "parameters": [_chat_id(), _user_id()],
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
                "parameters": [_chat_id(), _user_id()],
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
