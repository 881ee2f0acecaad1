"""Reading and checking client input; failures become ApiError with a clear message."""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from typing import Any

from aiohttp import web

from .keys import CONFIG


class ApiError(Exception):
    """An error answered as {"error": message, "details"?: {...}} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        details: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.details:
            body["details"] = self.details
        return body


def invalid(field: str, reason: str) -> ApiError:
    """A 400 naming one field."""
    return ApiError(400, f"{field}: {reason}", {field: reason})


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 (413 when over the size limit, 408
    when it does not arrive within the idle timeout)."""
    try:
        async with asyncio.timeout(request.app[CONFIG].idle_timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "request body did not arrive in time") from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ApiError(400, "request body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


# U+0000: refused in everything stored (PostgreSQL's text cannot hold it; SQLite
# would, but both backends keep the same contract).
NUL = "\x00"


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def string_field(
    body: dict[str, Any],
    field: str,
    *,
    min_len: int = 1,
    max_len: int,
    strip: bool = False,
) -> str:
    """body[field] as a str of min_len..max_len characters (after stripping if asked)."""
    if field not in body:
        raise invalid(field, "is required")
    value = body[field]
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if strip:
        value = value.strip()
    if len(value) < min_len:
        reason = "must not be empty" if min_len == 1 else f"must be at least {min_len} characters"
        raise invalid(field, reason)
    if len(value) > max_len:
        raise invalid(field, f"must be at most {max_len} characters")
    if not is_utf8(value):
        raise invalid(field, "must be valid Unicode text (no lone surrogates)")
    return value


def is_utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates like \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def int_query(
    request: web.Request,
    name: str,
    *,
    required: bool = False,
    min_value: int = 1,
    max_value: int = 2**63 - 1,
) -> int | None:
    """Query parameter `name` as an int in range, None when absent and optional; else 400."""
    raw = request.query.get(name)
    if raw is None:
        if required:
            raise invalid(name, "query parameter is required")
        return None
    # int() would also take " 5", "5_0" and non-ASCII digits.
    if not re.fullmatch(r"-?[0-9]{1,100}", raw):
        raise invalid(name, "must be an integer")
    value = int(raw)
    if not min_value <= value <= max_value:
        raise invalid(name, f"must be between {min_value} and {max_value}")
    return value


def is_int(value: Any) -> bool:
    """A JSON integer (true and false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)
