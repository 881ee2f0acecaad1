"""The OpenAPI 3 document of every HTTP route, served at /openapi.json.

Built from the configuration, so it stays true for this server: /metrics is
listed only when it exists, the user shape shows the password hash only when
it is exposed, the size limits are the configured ones. tests/test_openapi.py
checks it against the router and against real responses.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import (
    __version__,
    chats,
    messages,
    openapi_messages,
    openapi_teams,
    openapi_tokens,
    realtime,
    search,
    teams,
    tokens,
    users,
)
from .auth import public
from .config import Config
from .keys import CONFIG
from .shapes import Choice, Json, Shape, Text

JSON = "application/json"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def response(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def json_content(schema: Schema) -> Schema:
    return {JSON: {"schema": schema}}


ERROR = Shape("Error", {
    "error": Text(1),
    "details": Json(
        {"type": "object", "additionalProperties": {"type": "string"}},
        default=None, description="field name -> what is wrong with it",
    ),
}, closed=True)
HEALTH = Shape("Health", {"status": Choice(("ok", "unavailable"))}, closed=True)
TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$",
    "description": "RFC 3339, UTC, millisecond precision",
    "example": "2026-11-24T20:38:49.123Z",
}


def schemas(config: Config) -> dict[str, Schema]:
    """Every shape of a request, a response or a websocket frame, by component name."""
    user = users.USER_SHAPE.schema()
    if not config.show_emails:
        user["properties"]["email"]["description"] = "the caller's own only"
        user["required"].remove("email")
    if config.expose_password_hash:
        user["properties"]["password"] = {"type": "string", "description": "bcrypt hash"}
        user["required"].append("password")
    shapes = [
        ERROR, HEALTH, users.REGISTRATION, users.CREDENTIALS, users.SESSION, chats.MESSAGE,
        teams.NEW_CHAT, teams.CHAT, teams.LISTED_CHAT, teams.JOINED_CHAT, teams.MEMBER,
        teams.NEW_MEMBER, teams.ROLE_CHANGE, teams.CHANGED_ROLE, teams.READ_UP_TO,
        teams.READ_MARKER, teams.NEW_INVITE, teams.INVITE,
        realtime.post_frame(config.max_text), realtime.JOIN_FRAME, realtime.LEAVE_FRAME,
        realtime.READ_FRAME, realtime.TYPING_FRAME,
        tokens.NEW_TOKEN, tokens.TOKEN, tokens.CREATED_TOKEN,
        messages.new_message(config.max_text), messages.message_edit(config.max_text),
    ]
    return {"Timestamp": TIMESTAMP, "User": user, **{shape.name: shape.schema() for shape in shapes}}


def error(description: str, **extra: Any) -> Schema:
    """A response with the one error body."""
    return {"description": description, "content": json_content(ref("Error")), **extra}


def too_many_requests(description: str) -> Schema:
    retry_after = {
        "description": "seconds to wait",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    return error(description, headers={"Retry-After": retry_after})


def error_responses(config: Config) -> dict[str, Schema]:
    return {
        "BadRequest": error(
            "The body is not a JSON object, or a field or query parameter is missing, "
            "of the wrong type or out of range; `details` names the field."
        ),
        "Unauthorized": error(
            "No token, or a malformed, forged, expired or revoked one (or a deleted user's)."
        ),
        "NotFound": error(
            "The chat does not exist, or it is private or direct and the caller is not a member."
        ),
        "Conflict": error("The email or the username is already taken."),
        "TooLarge": error(f"The request body is over {config.max_body} bytes."),
        "MethodNotAllowed": error(
            "The path exists but not with this method (any path, any unlisted method).",
            headers={
                "Allow": {
                    "description": "the methods the path answers",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
    }


WEBSOCKET_PROTOCOL = """\
Upgrades to a websocket. Authentication happens before the upgrade: the token comes as
the `token` query parameter or as the `Authorization: Bearer` header; a bad one is answered
with a plain 401 and no websocket. A handshake whose `Origin` names another site than this
server (and is not in the configured allow-list) is refused with 403. A request that is not
a websocket handshake is answered with 400.

Frames are JSON objects in text frames (binary frames are refused with an error frame;
frames over {max_frame} bytes close the socket with 1009). A socket may send
{frames_per_second:g} frames a second on average, {frame_burst} at once: a frame over that
budget is answered with an error frame, and a socket that keeps going is closed with 1008.
A user may have {max_sockets_per_user} websockets open; one more is refused with 429.

Client to server:

- `{{"text": str, "chat_id": int, "nonce"?: str}}` (`type` omitted or `"message"`): post a
  message of 1 to {max_text} characters, not only white space. The socket is subscribed to
  the chat and receives its own message as the acknowledgement. A `nonce` (1 to 64
  characters) makes the send idempotent: the same user sending it again stores nothing and
  gets the original message back.
- `{{"type": "join", "chat_id": int, "since"?: int}}`: subscribe; with `since`, first every
  message of the chat with a greater id, then live ones (no gap, no duplicate).
- `{{"type": "leave", "chat_id": int}}`: unsubscribe.

Server to client (clients ignore types they do not know):

- `{{"type": "message", "id", "chat_id", "owner_id", "username", "text", "created_at",
  "nonce"?}}`: a committed message of a subscribed chat, in increasing id order per chat.
- `{{"type": "joined", "chat_id", "cursor_reset"?: true, "last_id"?: int}}`: answer to
  `join`, after the replayed messages. `cursor_reset` and `last_id` when `since` was beyond
  the chat's newest message: the server resumed from `last_id`, the client's new cursor.
- `{{"type": "chat_created", "chat": {{"id", "name", "owner_id", "created_at"}}}}`: a chat
  was created; sent to every open socket.
- `{{"type": "left", "chat_id"}}`: answer to `leave`.
- `{{"type": "presence", "users": [{{"user_id", "username", "is_online"}}]}}`: users who came
  online or went offline, batched (at most one such frame per socket per interval).
- `{{"type": "error", "error": str, "nonce"?: str}}`: a frame the server could not accept;
  the socket stays open.

Close codes: 1001 server shutting down, 1008 or 1011 too slow to keep up (more than
{outbox_limit} frames waiting) or too many frames, 1009 frame too large, 1002 client frame
not masked, 4001 logged out or password reset (tokens revoked). The server pings
every {heartbeat:g} seconds and drops peers that stop answering.
"""


def paths(config: Config) -> dict[str, Schema]:
    public_route: dict[str, Any] = {"security": []}
    user_list = {
        "tags": ["users"],
        "summary": "Every user, ordered by id",
        "responses": {
            "200": {
                "description": "The users.",
                "content": json_content({"type": "array", "items": ref("User")}),
            },
            "401": response("Unauthorized"),
        },
    }
    chat_list = {
        "tags": ["chats"],
        "summary": "Public chats and the caller's private and direct ones, ordered by id",
        "responses": {
            "200": {
                "description": "The chats, with the caller's membership and unread counts.",
                "content": json_content({"type": "array", "items": ref("ListedChat")}),
            },
            "401": response("Unauthorized"),
        },
    }
    document = {
        "/auth/reg": {
            "post": {
                "tags": ["users"],
                "operationId": "register",
                "summary": "Create an account and get a token",
                **public_route,
                "requestBody": {"required": True, "content": json_content(ref("Registration"))},
                "responses": {
                    "201": {
                        "description": "Registered.",
                        "content": json_content(ref("Session")),
                    },
                    "400": response("BadRequest"),
                    "403": error(
                        "Registration is closed, or by invite and the code is missing, "
                        "invalid, expired or used up; the message names the mode."
                    ),
                    "409": response("Conflict"),
                    "413": response("TooLarge"),
                },
            }
        },
        "/auth/login": {
            "post": {
                "tags": ["users"],
                "operationId": "login",
                "summary": "Get a token",
                "description": "An unknown email and a wrong password get the same 401. "
                "Repeated failures for one email or one client address get 429.",
                **public_route,
                "requestBody": {"required": True, "content": json_content(ref("Credentials"))},
                "responses": {
                    "200": {"description": "Logged in.", "content": json_content(ref("Session"))},
                    "400": response("BadRequest"),
                    "401": error("Wrong email or password."),
                    "413": response("TooLarge"),
                    "429": too_many_requests(
                        "Too many failed logins for this email or from this address; "
                        "try again after `Retry-After` seconds."
                    ),
                },
            }
        },
        "/auth/logout": {
            "post": {
                "tags": ["users"],
                "operationId": "logout",
                "summary": "Revoke every token of the caller and close their websockets (4001)",
                "responses": {
                    "204": {"description": "Logged out."},
                    "401": response("Unauthorized"),
                },
            }
        },
        "/users/me": {
            "get": {
                "tags": ["users"],
                "operationId": "me",
                "summary": "The caller",
                "responses": {
                    "200": {"description": "The caller.", "content": json_content(ref("User"))},
                    "401": response("Unauthorized"),
                },
            }
        },
        "/users/": {"get": {**user_list, "operationId": "listUsers"}},
        "/users": {"get": {**user_list, "operationId": "listUsersWithoutSlash"}},
        "/chats/create": {
            "post": {
                "tags": ["chats"],
                "operationId": "createChat",
                "summary": "Create a chat owned by the caller",
                "description": "Without `kind`: a public chat (anyone reads, joins and "
                "posts). `private`: members only, the creator its owner. `direct`: the "
                "caller's chat with `user_id`, one per pair: 200 when it exists already.",
                "requestBody": {"required": True, "content": json_content(ref("NewChat"))},
                "responses": {
                    "200": {
                        "description": "The direct chat of the two users, which existed.",
                        "content": json_content(ref("Chat")),
                    },
                    "404": error("`user_id` (direct chats) or a `members` id names no user."),
                    "409": error("`user_id` is the caller's own id (direct chats)."),
                    "201": {
                        "description": "Created.",
                        "content": json_content(ref("Chat")),
                        "links": {
                            "ChatMessages": {
                                "operationId": "chatMessages",
                                "parameters": {"id": "$response.body#/id"},
                            }
                        },
                    },
                    "400": response("BadRequest"),
                    "401": response("Unauthorized"),
                    "413": response("TooLarge"),
                },
            }
        },
        "/chats/": {"get": {**chat_list, "operationId": "listChats"}},
        "/chats": {"get": {**chat_list, "operationId": "listChatsWithoutSlash"}},
        "/chats/messages": {
            "get": {
                "tags": ["chats"],
                "operationId": "chatMessages",
                "summary": "The messages of a chat, oldest first",
                "description": "Without `limit`, `before` or `after`: every message. "
                "`limit` alone: the newest `limit`. `before`: the newest `limit` older than "
                "it. `after`: the oldest `limit` newer than it. Always oldest first.",
                "parameters": chats.HISTORY.parameters("query"),
                "responses": {
                    "200": {
                        "description": "The messages, oldest first.",
                        "content": json_content({"type": "array", "items": ref("Message")}),
                    },
                    "400": response("BadRequest"),
                    "401": response("Unauthorized"),
                    "404": response("NotFound"),
                },
            }
        },
        "/search": {
            "get": {
                "tags": ["search"],
                "operationId": "searchMessages",
                "summary": "Messages containing every word of q, newest first",
                "description": "From the chats the caller may read only (public ones, and "
                "private or direct ones the caller is a member of). Case and diacritics are "
                "ignored; the last word also matches as a prefix; nothing in q is query "
                "syntax. A changed text is found by its new words at once; a removed text "
                "never matches. Page with `before` = the id of the last message of a page.",
                "parameters": search.SEARCH.parameters("query"),
                "responses": {
                    "200": {
                        "description": "The matching messages, newest first.",
                        "content": json_content({"type": "array", "items": ref("Message")}),
                    },
                    "400": response("BadRequest"),
                    "401": response("Unauthorized"),
                    "404": response("NotFound"),
                },
            }
        },
        "/chats/ws": {
            "get": {
                "tags": ["realtime"],
                "operationId": "chatSocket",
                "summary": "The websocket: post, join and leave chats; messages and presence",
                "description": WEBSOCKET_PROTOCOL.format(
                    max_frame=config.max_frame,
                    frames_per_second=config.frames_per_second,
                    frame_burst=config.frame_burst,
                    max_sockets_per_user=config.max_sockets_per_user,
                    max_text=config.max_text,
                    outbox_limit=config.outbox_limit,
                    heartbeat=config.heartbeat,
                ) + openapi_teams.WEBSOCKET_PROTOCOL + openapi_tokens.WEBSOCKET_PROTOCOL
                + openapi_messages.WEBSOCKET_PROTOCOL,
                "security": [{"bearerAuth": []}, {"queryToken": []}],
                "responses": {
                    "101": {"description": "Switching to the websocket protocol."},
                    "400": error("Not a websocket handshake."),
                    "401": response("Unauthorized"),
                    "403": error("Cross-site handshake: the Origin is not allowed."),
                    "429": too_many_requests(
                        f"The user already has {config.max_sockets_per_user} open websockets."
                    ),
                },
            }
        },
        "/health": {
            "get": {
                "tags": ["service"],
                "operationId": "health",
                "summary": "Whether the database answers",
                **public_route,
                "responses": {
                    "200": {
                        "description": "Serving: `{\"status\": \"ok\"}`.",
                        "content": json_content(ref("Health")),
                    },
                    "503": {
                        "description": "The database does not answer: "
                        "`{\"status\": \"unavailable\"}`.",
                        "content": json_content(ref("Health")),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["service"],
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": "Connected sockets, online users, messages stored and "
                "delivered, sockets dropped as slow, request latencies by route. "
                "OpenMetrics when the `Accept` header asks for it.",
                **public_route,
                "responses": {
                    "200": {
                        "description": "The current values.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["service"],
                "operationId": "openapi",
                "summary": "This document",
                **public_route,
                "responses": {
                    "200": {
                        "description": "The OpenAPI document of this server.",
                        "content": json_content(
                            {
                                "type": "object",
                                "properties": {
                                    "openapi": {"type": "string"},
                                    "info": {"type": "object"},
                                    "paths": {"type": "object"},
                                },
                                "required": ["openapi", "info", "paths"],
                            }
                        ),
                    }
                },
            }
        },
    }
    if not config.metrics:
        del document["/metrics"]
    return {
        **document, **openapi_teams.paths(config), **openapi_tokens.paths(config),
        **openapi_messages.paths(config),
    }


def document(config: Config) -> dict[str, Any]:
    """The OpenAPI document of a server running with `config`."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ChatAPI",
            "version": __version__,
            "description": "Accounts, chats, history and live messages over a websocket. "
            "Every error is `{\"error\": str, \"details\"?: {field: reason}}`. "
            "An unknown path answers 404 and a method a path does not list answers 405 "
            "(with `Allow`), both with that body. Strings must be valid Unicode: one with a "
            "lone surrogate (e.g. `\\ud800`) is a 400. Origins in the configured allow-list "
            "get CORS headers, and their preflight `OPTIONS` requests a 204, on every path.",
        },
        "tags": [
            {"name": "users", "description": "Accounts and tokens"},
            {"name": "chats", "description": "Chats and their history"},
            {"name": "realtime", "description": "The websocket"},
            {"name": "teams", "description": "Members, roles, read markers and invite codes"},
            {"name": "messages", "description": "Posting over HTTP; edits, deletes, reactions"},
            {"name": "search", "description": "Messages by their words"},
            {"name": "service", "description": "Health, metrics and this document"},
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths(config),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT (session) or chatapi_<64 hex digits> (API token)",
                },
                "queryToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The websocket only: the token as a query parameter.",
                },
            },
            "schemas": schemas(config),
            "responses": error_responses(config),
        },
    }


@public
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(request.app[CONFIG]))
