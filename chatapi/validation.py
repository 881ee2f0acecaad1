"""The error answered to a client, and reading a request body as a JSON object.

Fields are checked by the shapes of chatapi/shapes.py."""

from __future__ import annotations

import asyncio
import json
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
