"""Who is calling: session tokens (JWT) checked against the user's current token
version, and API tokens (`chatapi_` + 64 hex digits) looked up by their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from . import db
from .keys import DB, SECRET
from .security import InvalidToken, read_token
from .validation import ApiError

USER = web.RequestKey("user", dict)

API_TOKEN_PREFIX = "chatapi_"
TOUCH_INTERVAL = 60.0  # seconds: last_used_at is written at most this often per token

Handler = TypeVar("Handler", bound=Callable[..., Any])


def public(handler: Handler) -> Handler:
    """Mark a handler as reachable without a token."""
    handler.public = True  # type: ignore[attr-defined]
    return handler


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def new_api_token() -> tuple[str, str]:
    """A fresh API token and the hash to store for it."""
    token = API_TOKEN_PREFIX + secrets.token_hex(32)
    return token, api_token_hash(token)


def api_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_api_token(token: str) -> bool:
    return token.startswith(API_TOKEN_PREFIX)


async def authenticate(app: web.Application, token: str | None) -> dict[str, Any]:
    """The user a token belongs to, or ApiError 401. A user authenticated by an API
    token carries its id as `api_token_id` (None for a session token)."""
    if not token:
        raise ApiError(401, "authorization required: send 'Authorization: Bearer <token>'")
    if is_api_token(token):
        return await _api_token_user(app, token)
    try:
        user_id, version = read_token(token, app[SECRET])
    except InvalidToken:
        raise ApiError(401, "invalid or expired token") from None
    user = await db.user_by_id(app[DB], user_id)
    if user is None or user["token_version"] != version:
        raise ApiError(401, "invalid or expired token")
    user["api_token_id"] = None
    return user


async def _api_token_user(app: web.Application, token: str) -> dict[str, Any]:
    # Hashed before the lookup: the comparison happens on a digest, in the database.
    user = await db.user_by_api_token(app[DB], api_token_hash(token))
    if user is None:
        raise ApiError(401, "invalid or revoked API token")
    # ISO 8601 text compares as time does: written again once it is a minute old.
    stale = (datetime.now(UTC) - timedelta(seconds=TOUCH_INTERVAL)).strftime("%Y-%m-%dT%H:%M:%S")
    if user["api_token_used_at"] is None or user["api_token_used_at"] < stale:
        await db.touch_api_token(app[DB], user["api_token_id"])
    return user
