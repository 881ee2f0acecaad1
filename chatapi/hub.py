"""Live fan-out: this process's open sockets, their subscriptions, and presence.

Messages reach `Hub.publish`, and event frames (`chat_created`) `Hub.broadcast`,
through the bus (chatapi/bus.py), which decides whether they come straight from
this process or from the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .db import public_message

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

REVOKED = 4001  # close code of a socket whose user's tokens were revoked
CLOSE_TIMEOUT = 2.0  # seconds a close handshake may take before the connection is cut


def message_frame(message: dict[str, Any], kind: str = "message") -> str:
    """A `message` frame (a message new to the client) or an `update` frame (a change of
    one it has), with the whole current message."""
    frame: dict[str, Any] = {"type": "update"} if kind == "update" else {"type": "message"}
    frame.update(public_message(message))
    return json.dumps(frame, ensure_ascii=False)


def error_frame(error: str, **extra: Any) -> str:
    return json.dumps({"type": "error", "error": error, **extra}, ensure_ascii=False)


def _text_frame(payload: bytes) -> bytes:
    """`payload` as one unmasked, uncompressed websocket text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def _wire(frame: str) -> bytes:
    """`frame` encoded and framed, once per fan-out: every subscriber gets the same
    str object, and a server's frame is the same bytes for every socket."""
    global _last_frame, _last_wire
    if frame is not _last_frame:
        _last_frame, _last_wire = frame, _text_frame(frame.encode())
    return _last_wire


_last_frame: str | None = None
_last_wire = b""


def _write_now(
    ws: web.WebSocketResponse, transport: asyncio.WriteTransport | None, high_water: int, frame: str
) -> bool:
    """Write `frame` as a text frame without awaiting, if the socket takes it now.

    False (nothing written; the caller queues the frame) unless the websocket is
    open and its transport's write buffer is below `high_water`. aiohttp has no
    synchronous send (`send_str` is a coroutine), so the frame goes to the
    connection's transport as whole websocket frame bytes: public asyncio API,
    valid because ChatAPI's sockets never compress (no permessage-deflate) and a
    server never masks. aiohttp's own writes (pings, the queued path's `send_str`,
    the close) are whole frames on the same transport, so frames never interleave.
    A socket that ChatAPI is closing takes nothing more (`Connection.dropped`).
    """
    if transport is None or ws.closed or transport.is_closing():
        return False
    if transport.get_write_buffer_size() >= high_water:
        return False
    transport.write(_wire(frame))
    return True


async def _send_close_frame(ws: web.WebSocketResponse, code: int, reason: str) -> bool:
    """Send a close frame and nothing else; False if aiohttp offers no way to.

    `ws.close()` from a task other than the reader's sends the frame and then drops
    the TCP connection at once: the peer's frames still in flight make the kernel
    reset it, and the peer sees 1006 instead of `code`. Sending only the frame
    (aiohttp's private `WebSocketWriter.close`) lets the reading handler receive the
    peer's close reply, after which aiohttp ends the connection as usual.
    """
    send = _close_frame_sender(ws)
    if send is None or ws.closed:
        return False
    await send(code, reason.encode())
    return True


def _close_frame_sender(ws: web.WebSocketResponse) -> Callable[[int, bytes], Awaitable[Any]] | None:
    """aiohttp's private `ws._writer.close(code, message)`, or None when it is missing
    (then `Connection._close` falls back to the public `ws.close`). The only use of it."""
    return getattr(getattr(ws, "_writer", None), "close", None)


class Connection:
    """One open websocket: its user, its subscriptions and its bounded outbox.

    A frame is written at once when nothing is queued for the socket and its
    transport takes it without piling up; otherwise it is queued, and a pump task
    writes the queue, awaiting the peer, until it is empty. So a slow peer stalls
    nothing but its own pump, frames keep their order (none goes straight out while
    an older one waits), and once `limit` frames are waiting the socket is dropped.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        user: dict[str, Any],
        limit: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        # Frames are written straight to the transport while its buffer is below its
        # high-water mark. (uvloop's transports are not asyncio.WriteTransport
        # subclasses: the methods are what counts.)
        limits = getattr(transport, "get_write_buffer_limits", None)
        self._direct: Any = transport if limits is not None else None
        self._high_water: int = limits()[1] if limits is not None else 0
        self.user_id: int = user["id"]
        self.username: str = user["username"]
        # The API token the socket authenticated with (None: a session token), or
        # else the version of its session token (see Hub.close_revoked).
        self.api_token_id: int | None = user.get("api_token_id")
        self.token_version: int | None = (
            user["token_version"] if self.api_token_id is None else None
        )
        # chat id -> None when live, or the (seq, frame, message id, update frame)
        # buffered during a catch-up
        self.subscriptions: dict[int, list[tuple[int, str, int, str | None]] | None] = {}
        # chat id -> the last seq a catch-up sent: older ones are not sent again
        self.floors: dict[int, int] = {}
        # chats this socket's user was found to be a member of; a removal clears it
        self.member_of: set[int] = set()
        self.dropped = False
        self._limit = limit
        self._metrics = metrics
        # Created when first needed: most sockets never queue a frame nor pace one.
        self._frames: deque[str] | None = None
        self._room: asyncio.Event | None = None  # set when the outbox is below half full
        self._pump: asyncio.Task[None] | None = None  # running only while frames are queued
        self._closing: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()  # set by stop()

    def send(self, frame: str) -> None:
        """Send a frame without waiting: at once, or queued behind the frames
        already waiting; a full outbox drops the socket (1008)."""
        if self.dropped:
            return
        frames = self._frames
        if not frames:
            try:
                if _write_now(self.ws, self._direct, self._high_water, frame):
                    return
            except (ConnectionError, RuntimeError):
                self._lost()
                return
            if frames is None:
                frames = self._frames = deque()
        if len(frames) >= self._limit:
            log.info("dropping socket of user %d: %d frames unsent", self.user_id, self._limit)
            self._drop_as_slow("too slow: outgoing frames piled up")
            return
        frames.append(frame)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self.pump())

    async def send_paced(self, frame: str) -> None:
        """Send a frame, first waiting while the outbox is half full (bulk replays)."""
        await self.wait_for_room()
        self.send(frame)  # a no-op once the socket is dropped

    async def wait_for_room(self) -> None:
        """Wait while the outbox is half full."""
        while not self.dropped and self._frames and len(self._frames) >= self._limit // 2:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def deliver(
        self, chat_id: int, seq: int, frame: str, message_id: int = 0, update: str | None = None
    ) -> None:
        """Send a frame of a chat unless a catch-up already sent its seq. `update`: the
        `update` variant of a `message` frame of a message created and changed before
        this process read it, sent instead if the catch-up sent the message."""
        buffer = self.subscriptions.get(chat_id)
        if buffer is None:
            floor = self.floors.get(chat_id, 0)
            if seq > floor:
                self.send(update if update is not None and message_id <= floor else frame)
        elif len(buffer) >= self._limit:
            self._drop_as_slow("too slow: could not catch up")
        else:
            buffer.append((seq, frame, message_id, update))

    def go_live(self, chat_id: int, last_sent: int) -> None:
        """End a catch-up that sent changes up to seq `last_sent`: send what was
        buffered after it, then deliver directly, skipping seq values up to it.

        A change committed before the catch-up read but published after this
        point was already replayed; the floor keeps it from arriving twice. The
        catch-up sent every message with an id up to the floor (seq and ids come
        from one allocation, committed in order within a chat), so a `message`
        frame of one of them goes out as its `update`.
        """
        buffered = self.subscriptions.get(chat_id) or []
        self.subscriptions[chat_id] = None
        self.floors[chat_id] = last_sent
        for seq, frame, message_id, update in buffered:
            if seq > last_sent:
                self.send(update if update is not None and message_id <= last_sent else frame)

    async def pump(self) -> None:
        """Write the queued frames in order, awaiting the peer; ends once none is left."""
        frames = self._frames
        try:
            while frames and not self.dropped:
                frame = frames.popleft()
                if self._room is not None and len(frames) < self._limit // 2:
                    self._room.set()
                await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            self._lost()
        finally:
            if self._room is not None:
                self._room.set()  # a paced sender re-checks the outbox

    def _lost(self) -> None:
        # The socket is gone or going: stop queueing and release a paced sender
        # (a catch-up), so the handler gets back to its read loop and ends.
        self.dropped = True
        if self._room is not None:
            self._room.set()

    def _drop_as_slow(self, reason: str) -> None:
        if not self.dropped and self._metrics is not None:
            self._metrics.slow_sockets_dropped.inc()
        self.close(1008, reason)

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code` (once); cut it if the peer does not answer."""
        if self._closing is None:
            self._lost()
            self._closing = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # The pump is not cancelled here: a task cancelled while waiting for the
        # transport to drain cancels the drain future it shares with close().
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if not await _send_close_frame(self.ws, code, reason):
                    await self.ws.close(code=code, message=reason.encode())
                    return
                # The handler, still reading, gets the peer's answer and ends
                # the connection then; frames that arrive meanwhile are dropped.
                await self._ended.wait()
        except (TimeoutError, ConnectionError, RuntimeError):
            # A peer that stopped reading never answers the close: cut it.
            if self.transport is not None:
                self.transport.abort()

    async def closed(self) -> None:
        """Wait until a close started by `close` has finished."""
        if self._closing is not None:
            await asyncio.wait([self._closing])

    def stop(self) -> None:
        """The handler is done with the socket (its read loop has ended)."""
        if self._pump is not None:
            self._pump.cancel()
        self._ended.set()


class Hub:
    """Who listens to which chat, who is online, and the fan-out between them."""

    def __init__(self, presence_interval: float = 1.0, metrics: Metrics | None = None) -> None:
        self.connections: set[Connection] = set()
        self._by_user: dict[int, set[Connection]] = {}
        self._subscribers: dict[int, set[Connection]] = {}
        self._presence_interval = presence_interval
        self._presence_changes: dict[int, dict[str, Any]] = {}
        self._metrics = metrics

    # Sockets and presence

    def connect(self, conn: Connection) -> bool:
        """Register a socket; True when its user just came online."""
        self.connections.add(conn)
        sockets = self._by_user.setdefault(conn.user_id, set())
        sockets.add(conn)
        if len(sockets) == 1:
            self._note_presence(conn, True)
            return True
        return False

    def disconnect(self, conn: Connection) -> bool:
        """Forget a socket and its subscriptions; True when its user just went offline."""
        self.connections.discard(conn)
        for chat_id in list(conn.subscriptions):
            self.unsubscribe(chat_id, conn)
        sockets = self._by_user.get(conn.user_id, set())
        sockets.discard(conn)
        if not sockets:
            self._by_user.pop(conn.user_id, None)
            self._note_presence(conn, False)
            return True
        return False

    def sockets_of(self, user_id: int) -> int:
        return len(self._by_user.get(user_id, ()))

    def is_online(self, user_id: int) -> bool:
        return user_id in self._by_user

    def online_count(self) -> int:
        return len(self._by_user)

    def socket_counts(self) -> dict[int, int]:
        """User id -> sockets open on this process, for users with any."""
        return {user_id: len(sockets) for user_id, sockets in self._by_user.items()}

    def _note_presence(self, conn: Connection, online: bool) -> None:
        self.note_presence(conn.user_id, conn.username, online)

    def note_presence(self, user_id: int, username: str, online: bool) -> None:
        """Queue a presence change for the next presence frame."""
        # The latest state wins: a user who flaps within one interval is listed once.
        self._presence_changes[user_id] = {
            "user_id": user_id,
            "username": username,
            "is_online": online,
        }

    async def run_presence(self) -> None:
        """Send the batched presence changes: at most one frame per interval per socket."""
        while True:
            await asyncio.sleep(self._presence_interval)
            self.flush_presence()

    def flush_presence(self) -> None:
        if not self._presence_changes:
            return
        users = list(self._presence_changes.values())
        self._presence_changes.clear()
        self.broadcast(json.dumps({"type": "presence", "users": users}, ensure_ascii=False))

    def broadcast(self, frame: str) -> None:
        """Send a frame to every socket of this process."""
        for conn in list(self.connections):
            conn.send(frame)

    # Subscriptions and fan-out

    def subscribe(self, chat_id: int, conn: Connection, catch_up: bool = False) -> None:
        """Subscribe a socket; with catch_up, live messages are buffered until go_live."""
        self._subscribers.setdefault(chat_id, set()).add(conn)
        if catch_up:
            conn.subscriptions[chat_id] = []
        elif chat_id not in conn.subscriptions:
            conn.subscriptions[chat_id] = None

    def has_subscribers(self, chat_id: int) -> bool:
        return chat_id in self._subscribers

    def unsubscribe(self, chat_id: int, conn: Connection) -> None:
        conn.subscriptions.pop(chat_id, None)
        conn.floors.pop(chat_id, None)
        subscribers = self._subscribers.get(chat_id)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[chat_id]

    def publish(self, message: dict[str, Any], new: bool | None = None) -> None:
        """Fan a committed message or change out to the subscribers of its chat: as a
        `message` frame when `new` (by default: when it has not changed since it was
        created), else as an `update`."""
        seq = message.get("seq") or message["id"]
        if new is None:
            new = seq == message["id"]
        if not new:
            self._fan_out(message["chat_id"], seq, message_frame(message, "update"))
        elif seq == message["id"]:
            self._fan_out(message["chat_id"], seq, message_frame(message))
        else:  # created and changed before this process read it
            self._fan_out(
                message["chat_id"], seq, message_frame(message), message["id"],
                message_frame(message, "update"),
            )

    def _fan_out(
        self, chat_id: int, seq: int, frame: str, message_id: int = 0, update: str | None = None
    ) -> None:
        subscribers = self._subscribers.get(chat_id, ())
        for conn in subscribers:
            conn.deliver(chat_id, seq, frame, message_id, update)
        # One increment per message, not one per socket: this loop is the hot path.
        if subscribers and self._metrics is not None:
            self._metrics.frames_delivered.inc(len(subscribers))

    def send_to_subscribers(self, chat_id: int, frame: str, but_user: int) -> None:
        """An ephemeral frame (typing) for the chat's live subscribers except one user's."""
        for conn in list(self._subscribers.get(chat_id, ())):
            if conn.user_id != but_user and conn.subscriptions.get(chat_id, ()) is None:
                conn.send(frame)

    # Closing

    def user_ids(self) -> list[int]:
        """The users with a socket open in this process."""
        return list(self._by_user)

    def api_token_ids(self) -> list[int]:
        """The API tokens that sockets of this process authenticated with."""
        return list({c.api_token_id for c in self.connections if c.api_token_id is not None})

    def close_revoked(
        self,
        versions: dict[int, int],
        checked: Collection[int] | None = None,
        live_tokens: Collection[int] | None = None,
        tokens_checked: Collection[int] = (),
    ) -> int:
        """Close with 4001 each socket whose token was revoked. Returns how many.

        A session socket is revoked when its token version is not its user's current
        one (`versions`; a user missing from it no longer exists); an API token's
        socket, when its user no longer exists or, if `live_tokens` is given, its
        token is among `tokens_checked` but not among `live_tokens`.

        `checked`: the users whose versions were read; a socket of anybody else (a
        user who came online while the versions were read) is left alone until the
        next check. None: every user with a socket was checked.
        """
        def revoked(conn: Connection) -> bool:
            if conn.api_token_id is None:
                return versions.get(conn.user_id) != conn.token_version
            if conn.user_id not in versions:
                return True
            return (
                live_tokens is not None
                and conn.api_token_id in tokens_checked
                and conn.api_token_id not in live_tokens
            )

        stale = [
            conn for conn in self.connections
            if not conn.dropped and (checked is None or conn.user_id in checked) and revoked(conn)
        ]
        for conn in stale:
            conn.close(REVOKED, "tokens revoked")
        return len(stale)

    def close_api_token(self, token_id: int, code: int, reason: str) -> None:
        """Start closing every socket that authenticated with one API token (revoked)."""
        for conn in list(self.connections):
            if conn.api_token_id == token_id:
                conn.close(code, reason)

    def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        """Start closing every socket of one user opened with a session token (logout:
        API tokens' sockets stay); from now on they take nothing.

        Not awaited: a peer that does not answer the close must not hold up the logout.
        """
        for conn in list(self._by_user.get(user_id, ())):
            if conn.api_token_id is None:
                conn.close(code, reason)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every socket (server shutdown)."""
        sockets = list(self.connections)
        for conn in sockets:
            conn.close(code, reason)
        await asyncio.gather(*(conn.closed() for conn in sockets))

    # Teams: events of a chat or of some users

    def route(self, event: dict[str, Any]) -> None:
        """Deliver an event to this process's sockets.

        `event`: "frame" (the frame to send), "chat_id", "to_subscribers" (the chat's
        subscribers get it), "users" (ids whose sockets get it), "revoke" (a user id
        whose sockets first lose the chat: unsubscribed at once, which also ends a
        catch-up that is running).
        """
        chat_id = event.get("chat_id")
        revoke = event.get("revoke")
        if revoke is not None and chat_id is not None:
            for conn in list(self._by_user.get(revoke, ())):
                conn.member_of.discard(chat_id)
                self.unsubscribe(chat_id, conn)
        targets: set[Connection] = set()
        if event.get("to_subscribers") and chat_id is not None:
            targets |= self._subscribers.get(chat_id, set())
        for user_id in event.get("users", ()):
            targets |= self._by_user.get(user_id, set())
        frame = json.dumps(event["frame"], ensure_ascii=False)
        for conn in targets:
            conn.send(frame)
