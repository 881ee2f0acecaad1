"""A minimal websocket client for the load generator.

aiohttp's client costs tens of microseconds per received frame (message objects, a
queue, a task wake-up per socket). With thousands of sockets in one process the
generator would become the bottleneck before the server, so the generator speaks
the protocol itself: a plain asyncio.Protocol, an HTTP/1.1 upgrade, and a frame
parser that hands each payload with its arrival time to a callback.

Client frames are masked with the all-zero key (valid per RFC 6455: the key is
arbitrary), so masking costs nothing. Pings are answered; a close frame is answered
and recorded. Fragmented messages are not needed (neither server fragments).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterable

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_ZERO_MASK = b"\x00\x00\x00\x00"

OnFrame = Callable[["WSClient", bytes, float], None]


class HandshakeError(Exception):
    """The server did not answer the upgrade with 101."""


def _frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + _ZERO_MASK + payload


class WSClient(asyncio.Protocol):
    """One websocket connection; `on_frame(client, payload, arrival_time)` per data frame."""

    def __init__(self, request: bytes, on_frame: OnFrame | None) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self.on_frame = on_frame
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self.tag: object = None  # free for the caller (e.g. a sender's state)
        self._upgraded = False
        self._buf = bytearray()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._upgraded:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            status = head.split(b" ", 2)[1] if b" " in head else b"?"
            if status != b"101":
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(head.split(b"\r\n", 1)[0].decode()))
                self.transport.close()  # type: ignore[union-attr]
                return
            self._upgraded = True
            self.opened.set_result(None)
            if not self._buf:
                return
            data = bytes(self._buf)
            self._buf.clear()
        elif self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        self._parse(data, now)

    def _parse(self, data: bytes, now: float) -> None:
        pos = 0
        end = len(data)
        on_frame = self.on_frame
        while end - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            stop = start + length
            if stop > end:
                break
            payload = data[start:stop]
            pos = stop
            opcode = b0 & 0x0F
            if opcode <= 2:
                if on_frame is not None:
                    on_frame(self, payload, now)
            elif opcode == OP_PING:
                self._write(_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._write(_frame(payload[:2], OP_CLOSE))
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < end:
            self._buf += data[pos:]

    # sending

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, payload: bytes) -> None:
        self._write(_frame(payload, OP_TEXT))

    def abort(self) -> None:
        """Drop the connection at once (RST, no TIME_WAIT left behind)."""
        if self.transport is not None:
            self.transport.abort()


def upgrade_request(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


async def connect(
    host: str, port: int, path: str, on_frame: OnFrame | None = None, timeout: float = 30.0
) -> WSClient:
    loop = asyncio.get_running_loop()
    request = upgrade_request(host, port, path)
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WSClient(request, on_frame), host, port), timeout
    )
    await asyncio.wait_for(asyncio.shield(client.opened), timeout)
    return client


async def connect_many(
    host: str,
    port: int,
    paths: Iterable[str],
    on_frame: OnFrame | None = None,
    concurrency: int = 128,
    attempts: int = 3,
) -> list[WSClient]:
    """Open one socket per path, at most `concurrency` handshakes in flight."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(path: str) -> WSClient:
        async with semaphore:
            for attempt in range(attempts):
                try:
                    return await connect(host, port, path, on_frame)
                except (TimeoutError, OSError):
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(path) for path in paths)))


def abort_all(clients: Iterable[WSClient]) -> None:
    for client in clients:
        client.abort()
