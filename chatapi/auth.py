"""Who is calling: bearer tokens checked against the user's current token version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from . import db
from .keys import DB, SECRET
from .security import InvalidToken, read_token
from .validation import ApiError

USER = web.RequestKey("user", dict)

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


async def authenticate(app: web.Application, token: str | None) -> dict[str, Any]:
    """The user a token belongs to, or ApiError 401."""
    if not token:
        raise ApiError(401, "authorization required: send 'Authorization: Bearer <token>'")
    try:
        user_id, version = read_token(token, app[SECRET])
    except InvalidToken:
        raise ApiError(401, "invalid or expired token") from None
    user = await db.user_by_id(app[DB], user_id)
    if user is None or user["token_version"] != version:
        raise ApiError(401, "invalid or expired token")
    return user
