"""The OpenAPI description of API tokens and typing (merged in by chatapi/openapi.py)."""

from __future__ import annotations

from .config import Config
from .openapi_teams import Schema, _error, _json, _ref, _response
from .tokens import MAX_TOKENS, TOKEN_PATH
from .typists import EXPIRES_IN, INTERVAL

SESSION_ONLY = "The caller authenticated with an API token: only a session token manages them."


def paths(config: Config) -> dict[str, Schema]:
    """The API token routes."""
    tags = ["users"]
    return {
        "/auth/tokens": {
            "post": {
                "tags": tags,
                "operationId": "createApiToken",
                "summary": "Create a named API token for a script or bot (session token only)",
                "description": "The token (`chatapi_` and 64 hex digits) is accepted wherever "
                "a session token is, does not expire and survives logout; it ends when "
                "revoked or when the user's password is reset.",
                "requestBody": {"required": True, "content": _json(_ref("NewApiToken"))},
                "responses": {
                    "201": {"description": "Created.", "content": _json(_ref("CreatedApiToken"))},
                    "400": _response("BadRequest"),
                    "401": _response("Unauthorized"),
                    "403": _error(SESSION_ONLY),
                    "409": _error(f"The user already holds {MAX_TOKENS} API tokens."),
                    "413": _response("TooLarge"),
                },
            },
            "get": {
                "tags": tags,
                "operationId": "listApiTokens",
                "summary": "The caller's API tokens, without their value (session token only)",
                "responses": {
                    "200": {
                        "description": "The tokens, by id.",
                        "content": _json({"type": "array", "items": _ref("ApiToken")}),
                    },
                    "401": _response("Unauthorized"),
                    "403": _error(SESSION_ONLY),
                },
            },
        },
        "/auth/tokens/{token_id}": {
            "delete": {
                "tags": tags,
                "operationId": "revokeApiToken",
                "summary": "Revoke an API token (session token only)",
                "description": "Its websockets close with 4001 at once, on every process.",
                "parameters": TOKEN_PATH.parameters("path"),
                "responses": {
                    "204": {"description": "Revoked."},
                    "401": _response("Unauthorized"),
                    "403": _error(SESSION_ONLY),
                    "404": _error("The caller has no API token with this id."),
                },
            },
        },
    }


WEBSOCKET_PROTOCOL = f"""

Typing. Client to server:

- `{{"type": "typing", "chat_id": int}}`: the user is typing in a chat they may post in.
  Not stored, not answered; at most one per user and chat every {INTERVAL:g} seconds goes
  out, the rest are dropped without an error. No stop frame.

Server to client:

- `{{"type": "typing", "chat_id", "user_id", "username", "expires_in": {EXPIRES_IN}}}`: to
  the chat's other subscribers (not the typist's own sockets), on every process. Show it
  for `expires_in` seconds; drop it when a message from that user arrives in that chat.
"""
