"""One error shape for every failure, and authentication of private routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import db
from .auth import USER, authenticate, bearer_token
from .keys import CONFIG, METRICS
from .metrics import UNMATCHED
from .redaction import redact
from .validation import ApiError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


def error_response(
    status: int, body: dict, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes {"error": ...}; unknown exceptions are logged and become 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.body(), exc.headers)
    except db.NotFound as exc:
        return error_response(404, {"error": str(exc) or "not found"})
    except db.Unavailable:
        log.warning("%s %s: the database is unavailable", request.method, request.path)
        return error_response(
            503, {"error": "the database is unavailable: try again shortly"}, {"Retry-After": "1"}
        )
    except db.Conflict as exc:
        message = f"{exc.field} already taken"
        return error_response(409, {"error": message, "details": {exc.field: "already taken"}})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _HTTP_MESSAGES.get(exc.status, exc.reason.lower())
        if exc.status == 413:
            message = f"request body too large (at most {request.client_max_size} bytes)"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, {"error": message}, headers)
    except Exception:
        # The path only: the query string may carry a token.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, {"error": "internal error"})


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the configured origins only: such an origin is echoed, any other gets nothing."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in request.app[CONFIG].allowed_origins
    if allowed and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        })
    else:
        response = await handler(request)
    if allowed and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        response.headers.add("Vary", "Origin")
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Private routes need a valid bearer token; the user lands in request[USER]."""
    if request.match_info.http_exception is None and not getattr(handler, "public", False):
        request[USER] = await authenticate(request.app, bearer_token(request))
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request into the latency histogram (outermost: it sees the final status)."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        observe_request(request, exc.status, start)
        raise
    # A websocket session (101) lasts as long as the user stays: not a latency.
    if response.status != 101:
        observe_request(request, response.status, start)
    return response


def observe_request(request: web.Request, status: int, start: float) -> None:
    resource = request.match_info.route.resource
    # The route's template, never the raw path: a path may carry ids or tokens.
    route = UNMATCHED if resource is None else resource.canonical
    request.app[METRICS].observe_request(
        route, request.method, status, time.perf_counter() - start
    )


class RedactingAccessLogger(AbstractAccessLogger):
    """Access lines without credentials: a `token` query parameter (any case) is
    replaced, and so is anything shaped like a token anywhere in the URL."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        url = request.rel_url
        if any(key.lower() == "token" for key in url.query):
            url = url.with_query(
                [(k, "REDACTED" if k.lower() == "token" else v) for k, v in url.query.items()]
            )
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %s %.6f',
            request.remote,
            request.method,
            redact(str(url)),
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
        )
