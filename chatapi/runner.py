"""The HTTP server around the application: timeouts, a connection cap, JSON parser errors.

aiohttp keeps an idle keep-alive connection, or one whose request headers never
finish, for an hour by default, and accepts connections until the process runs out of
file descriptors; then every `accept` fails, `/health` times out for everybody and each
failure logs a traceback. Here an idle or incomplete connection is closed after
`idle_timeout`, and past `max_connections` (kept below the descriptor limit) a new
connection gets a one-line 503 and is closed at once, while the connections already
open keep being served. One log line per burst of refusals (at most one a minute), not one per refusal.

aiohttp answers requests its parser rejects itself, in plain text quoting the raw
request line (with any token in it); `ChatRequestHandler` answers them with the JSON
error shape and logs one line without the request. Both use aiohttp internals
(`RequestHandler.handle_error`, `Server._kwargs`, `TCPSite` fields), all in this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import resource
import socket
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .app import create_app
from .config import Config
from .middlewares import RedactingAccessLogger
from .redaction import redact_logs

log = logging.getLogger(__name__)

# The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). They
# hold no descriptor of ours; a queue that overflows during a burst drops handshakes, and a
# client whose final ACK was dropped believes it is connected to a server that never hears
# of it, so the queue is made long enough for a burst and drained quickly.
BACKLOG = 1024
ACCEPT_BATCH = 128  # connections accepted per wake-up before other work runs
# Descriptors kept free besides the cap: the database, the log, the event loop, the bus,
# and the one connection being refused at any moment.
RESERVE = 200
WARNING_INTERVAL = 60.0  # seconds between two log lines about refused connections

_PARSER_ERRORS = {
    "BadStatusLine": "malformed request line",
    "BadHttpMethod": "unknown method",
    "InvalidURLError": "malformed URL",
    "LineTooLong": "request line or header too long",
    "InvalidHeader": "malformed header",
    "ContentLengthError": "malformed Content-Length",
    "TransferEncodingError": "malformed Transfer-Encoding",
}


def connection_cap(config: Config) -> int:
    """config.max_connections, or (0) the descriptor limit minus a reserve."""
    if config.max_connections:
        return config.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(soft - RESERVE, soft // 2)


def make_runner(config: Config, app: web.Application | None = None) -> web.AppRunner:
    """The production runner of `app` (create_app(config) when None); serve it with CappedSite."""
    redact_logs()
    return web.AppRunner(
        app if app is not None else create_app(config),
        access_log_class=RedactingAccessLogger,
        access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
        # Also bounds a connection whose request headers never finish.
        keepalive_timeout=config.idle_timeout,
        shutdown_timeout=3.0,
    )


def json_error(status: int, message: str, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 error response with the contract's JSON body, closing the connection."""
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}Connection: close\r\n\r\n"
    ).encode() + body


_REFUSAL = json_error(503, "server busy: too many connections, try again", "Retry-After: 1\r\n")
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def refuse(conn: socket.socket) -> None:
    """Answer 503 and close, at once: the descriptor is free again before the next accept."""
    conn.setblocking(False)
    with contextlib.suppress(OSError):
        conn.send(_REFUSAL)
    conn.close()


class MaskCheck:
    """Follows the frame boundaries of a client's websocket stream (RFC 6455 5.2);
    `feed` is False from the first frame that is not masked.

    aiohttp's frame reader takes unmasked client frames, which RFC 6455 5.1 forbids
    (masking is what keeps a page's frames from poisoning a proxy's cache).
    """

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # the start of a frame header, split across reads
        self._skip = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> bool:
        pos = 0
        while pos < len(data):
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            head = self._head + data[pos:pos + 14]
            if len(head) < 2:
                self._head = head
                return True
            if not head[1] & 0x80:
                return False
            length = head[1] & 0x7F
            extended = {126: 2, 127: 8}.get(length, 0)
            size = 2 + extended + 4  # the header, its extended length, the masking key
            if len(head) < size:
                self._head = head
                return True
            if extended:
                length = int.from_bytes(head[2:2 + extended])
            pos += size - len(self._head)
            self._head = b""
            self._skip = length
        return True


# The close frame of a failed connection: 1002, protocol error (RFC 6455 7.1.7).
_UNMASKED_CLOSE = b"\x88\x1e\x03\xeaclient frames must be masked"


def _handler_settings(server: web.Server) -> dict[str, Any] | None:
    """The settings aiohttp's Server gives each connection handler (its private
    `_kwargs`), or None when this aiohttp has none: each connection then gets aiohttp's
    own handler, which serves every route alike but answers parser errors in plain text
    and logs them with the raw request line, takes unmasked client frames, and is
    counted at accept only (SECURITY.md's promises assume ChatAPI's handler, which
    every aiohttp 3.x that setup.cfg allows has). tests/test_fallbacks.py serves through
    both."""
    return getattr(server, "_kwargs", None)


class ChatRequestHandler(RequestHandler):
    """aiohttp's connection handler, counted by its site, answering errors in JSON
    and failing a websocket whose client does not mask its frames."""

    __slots__ = ("_masks", "_site")

    def __init__(self, site: CappedSite, server: web.Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._site: CappedSite | None = site
        self._masks: MaskCheck | None = None

    def set_parser(self, parser: Any, data_received_cb: Any = None) -> None:
        """After a websocket handshake: check the masking of every client frame."""
        self._masks = MaskCheck()
        # Frames that came with the handshake are fed to the parser from here.
        if not self._masks.feed(getattr(self, "_message_tail", b"")):
            self._fail_unmasked()
            return
        super().set_parser(parser, data_received_cb)

    def _fail_unmasked(self) -> None:
        self._masks = None
        if self.transport is not None:
            self.transport.write(_UNMASKED_CLOSE)
        self.force_close()

    def data_received(self, data: bytes) -> None:
        if self._masks is not None and not self._masks.feed(data):
            self._fail_unmasked()
            return
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._site is not None:
            self._site.released()
            self._site = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON error shape; one log line for a rejected request, a traceback for a bug."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error")
        if status >= 500:
            if status == 500:
                log.error("unhandled error on a request", exc_info=exc)
            reason = "internal error" if status == 500 else HTTPStatus(status).phrase.lower()
        else:
            # The exception's text quotes the raw request: only its kind is logged.
            kind = type(exc).__name__ if exc is not None else "unknown"
            reason = f"bad request: {_PARSER_ERRORS.get(kind, 'malformed HTTP request')}"
            log.info("rejected a malformed request from %s (%s)", request.remote, kind)
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response


class CappedSite(web.TCPSite):
    """A TCP site that accepts connections itself, to count and cap them.

    asyncio's own accept loop takes up to a backlog of connections at a time and hands
    each to a task, so refused connections would still hold descriptors for a few loop
    iterations while more are accepted; here a refused one is answered and closed
    before the next `accept`. Should descriptors run out all the same, accepting
    pauses for a second, with one log line.
    """

    __slots__ = (
        "_cap", "_last_warning", "_listener", "_open", "_refused", "_reuse_port", "_serving"
    )

    def __init__(self, runner: web.AppRunner, config: Config, reuse_port: bool = False) -> None:
        super().__init__(runner, config.host, config.port, backlog=BACKLOG)
        # SO_REUSEPORT: several processes (--workers) accept on one port.
        self._reuse_port = reuse_port
        self._cap = connection_cap(config)
        self._open = 0
        self._refused = 0  # connections refused since the last warning
        self._last_warning = -WARNING_INTERVAL
        self._listener: socket.socket | None = None
        self._serving: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return self._open

    def released(self) -> None:
        self._open -= 1

    async def start(self) -> None:
        """Listen on host and port, accepting with `_accept`."""
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        family, _, _, _, address = (await loop.getaddrinfo(
            self._host or None, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ))[0]
        listener = socket.create_server(
            address, family=family, backlog=self._backlog, reuse_port=self._reuse_port
        )
        listener.setblocking(False)
        self._listener = listener
        # An asyncio.Server that never serves: it holds the socket for aiohttp
        # (runner.addresses, and closing it on stop, which removes the reader too).
        self._server = await loop.create_server(
            self._new_handler, sock=listener, start_serving=False
        )
        self._bound_port = listener.getsockname()[1]
        loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(exc)
                    return
                continue  # the peer gave up before it was accepted
            if self._open >= self._cap:
                refuse(conn)
                self._warn(f"{self._open} connections open, the cap: refusing new ones with 503")
                continue
            self._open += 1
            task = asyncio.create_task(self._serve(conn))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    def _warn(self, what: str) -> None:
        # One line per burst (at most one a minute), however many connections it refuses.
        self._refused += 1
        now = time.monotonic()
        if now - self._last_warning >= WARNING_INTERVAL:
            log.warning("%s (%d refused since the last such line)", what, self._refused)
            self._last_warning, self._refused = now, 0

    def _pause(self, exc: OSError) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener
        assert listener is not None
        self._warn(f"out of descriptors ({exc.strerror}): not accepting for a second")
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if self._listener is not None and self._listener.fileno() >= 0:
                loop.add_reader(self._listener.fileno(), self._accept)

        loop.call_later(1.0, resume)

    async def _serve(self, conn: socket.socket) -> None:
        created = False

        def handler() -> asyncio.Protocol:
            nonlocal created
            created = True
            return self._new_handler()

        try:
            await asyncio.get_running_loop().connect_accepted_socket(handler, conn)
        except OSError:
            conn.close()
            if not created:  # else the handler's connection_lost has released it
                self.released()

    def _new_handler(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        kwargs = _handler_settings(server)
        if kwargs is None:  # an aiohttp without it: aiohttp's own handler (see below)
            handler = server()
            self.released()  # uncounted: the cap then counts accepts only
            return handler
        return ChatRequestHandler(self, server, loop=asyncio.get_running_loop(), **kwargs)

    async def stop(self) -> None:
        """Stop listening (aiohttp closes the connections)."""
        self._listener = None
        await super().stop()
