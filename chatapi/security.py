"""Password hashing and tokens, as small pure functions."""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from typing import Any

import bcrypt
import jwt

ALGORITHM = "HS256"


def _prehash(password: str) -> bytes:
    # bcrypt reads at most 72 bytes. Hashing first keeps every character of a
    # long password significant; base64 keeps NUL bytes out of bcrypt's input.
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash of the password (slow on purpose: run it in an executor)."""
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    """True when the password matches the hash (slow: run it in an executor)."""
    try:
        return bcrypt.checkpw(_prehash(password), password_hash.encode("ascii"))
    except ValueError:
        return False


def issue_token(user_id: int, token_version: int, secret: bytes, ttl: int) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "ver": token_version, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class InvalidToken(Exception):
    """The token is malformed, forged, expired or incomplete."""


def read_token(token: str, secret: bytes) -> tuple[int, int]:
    """(user id, token version) from a token this server signed; InvalidToken otherwise."""
    user_id, version, expires = _verified(token, secret)
    # A token's signature and claims never change, its validity does: checked each time.
    if expires <= time.time():
        raise InvalidToken("Signature has expired")
    return user_id, version


@functools.lru_cache(maxsize=4096)
def _verified(token: str, secret: bytes) -> tuple[int, int, int]:
    """(user id, token version, expiry) of a token whose signature and claims were
    checked, once per token: verifying costs more than the rest of a small request's
    Python. Refused tokens are not remembered (an exception is never cached)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub"]},
        )
        user_id = int(claims["sub"])
        version = claims.get("ver", 0)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(str(exc)) from None
    if not isinstance(version, int) or user_id < 1 or not isinstance(claims["exp"], int | float):
        raise InvalidToken("bad claims")
    return user_id, version, claims["exp"]
