"""API tokens for scripts and bots: named, long-lived, revocable, shown once.

A token is `chatapi_` and 64 hex digits; only its SHA-256 is stored. It is accepted
wherever a session token is (chatapi/auth.py), but only a session token manages
tokens: a leaked bot token cannot mint more, list them or revoke the others.
Revoking one closes the sockets it opened on every process (4001).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import db
from .auth import USER, new_api_token
from .hub import REVOKED
from .keys import DB, HUB
from .shapes import FieldError, Id, Json, Shape, Text, Timestamp
from .validation import ApiError, json_object

MAX_TOKENS = 100  # per user
MAX_NAME = 100

NEW_TOKEN = Shape("NewApiToken", {
    "name": Text(
        1, MAX_NAME, strip=True, control=False,
        description=f"1 to {MAX_NAME} characters once trimmed, no control characters; "
        "need not be unique",
    ),
})
TOKEN_FIELDS = {
    "id": Id(),
    "name": Text(1, MAX_NAME),
    "created_at": Timestamp(),
    "last_used_at": Json(
        {"type": "string", "nullable": True},
        description="null until first used; updated at most once a minute",
    ),
}
TOKEN = Shape("ApiToken", TOKEN_FIELDS, closed=True)
CREATED_TOKEN = Shape("CreatedApiToken", {
    **TOKEN_FIELDS,
    "token": Json(
        {"type": "string", "pattern": "^chatapi_[0-9a-f]{64}$"},
        description="shown this once: only its SHA-256 is kept",
    ),
}, closed=True)
TOKEN_PATH = Shape("ApiTokenPath", {
    "token_id": Id(description="one of the caller's tokens; any other value is a 404"),
})


def session_user(request: web.Request) -> dict[str, Any]:
    """The caller, who must have authenticated with a session token (not an API token)."""
    user = request[USER]
    if user["api_token_id"] is not None:
        raise ApiError(
            403, "API tokens are managed with a session token (log in): an API token cannot"
        )
    return user


async def create_token(request: web.Request) -> web.Response:
    user = session_user(request)
    body = await json_object(request)
    name = NEW_TOKEN.read(body)["name"]
    token, token_hash = new_api_token()
    row = await db.create_api_token(request.app[DB], user["id"], name, token_hash, MAX_TOKENS)
    if row is None:
        raise ApiError(409, f"too many API tokens (at most {MAX_TOKENS}): revoke one first")
    return web.json_response(CREATED_TOKEN.dump({**row, "token": token}), status=201)


async def list_tokens(request: web.Request) -> web.Response:
    user = session_user(request)
    rows = await db.api_tokens_of(request.app[DB], user["id"])
    return web.json_response([TOKEN.dump(row) for row in rows])


async def revoke_token(request: web.Request) -> web.Response:
    user = session_user(request)
    try:
        token_id = TOKEN_PATH.read_query(request.match_info)["token_id"]
    except FieldError:
        raise ApiError(404, f"API token {request.match_info['token_id']} does not exist") from None
    if not await db.delete_api_token(request.app[DB], user["id"], token_id):
        raise ApiError(404, f"API token {token_id} does not exist")
    # This process's sockets now; other processes by the database's notification.
    request.app[HUB].close_api_token(token_id, code=REVOKED, reason="API token revoked")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/auth/tokens", create_token)
    app.router.add_get("/auth/tokens", list_tokens, allow_head=False)
    app.router.add_delete("/auth/tokens/{token_id}", revoke_token)
