"""Accounts: registration, login, logout, and who is who."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from . import db, security, teams
from .auth import USER, public
from .hub import REVOKED
from .keys import CONFIG, DB, HUB, SECRET, THROTTLE
from .shapes import Bool, Email, Id, Json, Shape, Text
from .validation import ApiError, json_object

REGISTRATION = Shape("Registration", {
    "email": Email(description="At most 254 characters once trimmed; stored lower-cased."),
    "username": Text(
        3, 50, strip=True, control=False,
        description="3 to 50 characters once trimmed, no control characters; "
        "unique case-insensitively.",
    ),
    "password": Text(8, 128),
    "invite": Json(
        default=None,
        description="an invite code (a string): required when registration is by invite",
    ),
})
PASSWORD = Shape("Password", {"password": REGISTRATION.fields["password"]})
CREDENTIALS = Shape("Credentials", {
    "email": Text(1, 254, strip=True, lower=True),
    "password": Text(1, 128),
})
SESSION = Shape("Session", {
    "token": Text(description="a JWT: send it as a bearer token"),
    "username": Text(),
    "id": Id(),
}, closed=True)
USER_SHAPE = Shape("User", {
    "id": Id(),
    "email": Text(),
    "username": Text(),
    "is_online": Bool(),
    "is_admin": Bool(default=None, description="GET /users/me only"),
}, closed=True)


@functools.cache
def dummy_hash(rounds: int) -> str:
    """Checked when the email is unknown, so that a miss costs as much as a wrong password."""
    return security.hash_password("not a real password", rounds)


def user_json(
    user: dict[str, Any], expose_hash: bool = False, show_email: bool = True
) -> dict[str, Any]:
    body = {
        "id": user["id"],
        "email": user["email"],
        "username": user["username"],
        "is_online": bool(user["is_online"]),
    }
    if not show_email:
        del body["email"]
    if expose_hash:
        body["password"] = user["password_hash"]
    return body


def _lower_priority() -> None:
    # A hash may wait; the event loop (and the database thread) should not.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


@functools.cache
def bcrypt_pool() -> ThreadPoolExecutor:
    """Threads for bcrypt: one per usable core, at a lower priority than the event loop."""
    return ThreadPoolExecutor(
        max_workers=len(os.sched_getaffinity(0)),
        thread_name_prefix="chatapi-bcrypt",
        initializer=_lower_priority,
    )


async def in_executor(func: Any, *args: Any) -> Any:
    """Run CPU-heavy work (bcrypt) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(bcrypt_pool(), func, *args)


def auth_json(request: web.Request, user: dict[str, Any]) -> dict[str, Any]:
    config = request.app[CONFIG]
    token = security.issue_token(
        user["id"], user["token_version"], request.app[SECRET], config.token_ttl
    )
    return {"token": token, "username": user["username"], "id": user["id"]}


def password_field(body: dict[str, Any]) -> str:
    return PASSWORD.read(body)["password"]


def registration_fields(body: dict[str, Any]) -> tuple[str, str, str]:
    """(email, username, password) of a registration, checked; ApiError 400 otherwise."""
    values = REGISTRATION.read(body)
    return values["email"], values["username"], values["password"]


@public
async def register(request: web.Request) -> web.Response:
    body = await json_object(request)
    email, username, password = registration_fields(body)
    # Checked before bcrypt runs: a refused registration costs no hashing.
    invite = await teams.check_registration(request.app, body)
    rounds = request.app[CONFIG].bcrypt_rounds
    password_hash = await in_executor(security.hash_password, password, rounds)
    if invite is None:
        user = await db.create_user(request.app[DB], email, username, password_hash)
    else:
        try:
            user = await db.create_user_with_invite(
                request.app[DB], email, username, password_hash, invite, teams.now_text()
            )
        except db.NotFound:
            raise ApiError(
                403, "registration is by invite: this invite code is invalid, expired or used up"
            ) from None
    return web.json_response(auth_json(request, user), status=201)


@public
async def login(request: web.Request) -> web.Response:
    credentials = CREDENTIALS.read(await json_object(request))
    email, password = credentials["email"], credentials["password"]
    # Counted before bcrypt runs: a flood of guesses costs no hashing, and guesses
    # sent at once meet the limit as if they came one after the other.
    reservation = await request.app[THROTTLE].reserve(email, request.remote or "unknown")
    if isinstance(reservation, int):
        raise ApiError(
            429, "too many failed logins: try again later", headers={"Retry-After": str(reservation)}
        )
    ok = False
    try:
        user = await db.user_by_email(request.app[DB], email)
        if user is None:
            password_hash = await in_executor(dummy_hash, request.app[CONFIG].bcrypt_rounds)
        else:
            password_hash = user["password_hash"]
        matches = await in_executor(security.check_password, password, password_hash)
        ok = user is not None and matches
    finally:
        await request.app[THROTTLE].settle(reservation, ok)
    if not ok:
        raise ApiError(401, "wrong email or password")
    return web.json_response(auth_json(request, user))


async def logout(request: web.Request) -> web.Response:
    """End every session of the user (API tokens stay: they are revoked one by one)."""
    user = request[USER]
    if user["api_token_id"] is not None:
        raise ApiError(403, "an API token cannot log out: revoke it with DELETE /auth/tokens/{id}")
    await db.revoke_tokens(request.app[DB], user["id"])
    request.app[HUB].disconnect_user(user["id"], code=REVOKED, reason="logged out")
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    user = request[USER]
    body = user_json(user, request.app[CONFIG].expose_password_hash)
    return web.json_response({**body, "is_admin": bool(user["is_admin"])})


async def list_users(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    me = request[USER]["id"]
    users = await db.list_users(request.app[DB])
    return web.json_response([
        user_json(user, config.expose_password_hash, config.show_emails or user["id"] == me)
        for user in users
    ])
