"""API tokens for scripts and bots: named, long-lived, revocable, shown once.

A token is `chatapi_` and 64 hex digits; only its SHA-256 is stored. It is accepted
wherever a session token is (chatapi/auth.py), but only a session token manages
tokens: a leaked bot token cannot mint more, list them or revoke the others.
Revoking one closes the sockets it opened on every process (4001).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from . import db
from .auth import USER, new_api_token
from .hub import REVOKED
from .keys import DB, HUB
from .validation import (
    ApiError,
    has_control_characters,
    invalid,
    json_object,
    string_field,
)

MAX_TOKENS = 100  # per user
MAX_NAME = 100


def session_user(request: web.Request) -> dict[str, Any]:
    """The caller, who must have authenticated with a session token (not an API token)."""
    user = request[USER]
    if user["api_token_id"] is not None:
        raise ApiError(
            403, "API tokens are managed with a session token (log in): an API token cannot"
        )
    return user


def token_json(row: dict[str, Any]) -> dict[str, Any]:
    return {field: row[field] for field in db.API_TOKEN_FIELDS}


async def create_token(request: web.Request) -> web.Response:
    user = session_user(request)
    body = await json_object(request)
    name = string_field(body, "name", max_len=MAX_NAME, strip=True)
    if has_control_characters(name):  # U+0000 included
        raise invalid("name", "must not contain control characters")
    token, token_hash = new_api_token()
    row = await db.create_api_token(request.app[DB], user["id"], name, token_hash, MAX_TOKENS)
    if row is None:
        raise ApiError(409, f"too many API tokens (at most {MAX_TOKENS}): revoke one first")
    return web.json_response({**token_json(row), "token": token}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    user = session_user(request)
    rows = await db.api_tokens_of(request.app[DB], user["id"])
    return web.json_response([token_json(row) for row in rows])


async def revoke_token(request: web.Request) -> web.Response:
    user = session_user(request)
    raw = request.match_info["token_id"]
    if not re.fullmatch(r"[0-9]{1,19}", raw) or int(raw) > db.MAX_ID:
        raise ApiError(404, f"API token {raw} does not exist")
    token_id = int(raw)
    if not await db.delete_api_token(request.app[DB], user["id"], token_id):
        raise ApiError(404, f"API token {token_id} does not exist")
    # This process's sockets now; other processes by the database's notification.
    request.app[HUB].close_api_token(token_id, code=REVOKED, reason="API token revoked")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/auth/tokens", create_token)
    app.router.add_get("/auth/tokens", list_tokens, allow_head=False)
    app.router.add_delete("/auth/tokens/{token_id}", revoke_token)
