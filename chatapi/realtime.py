"""The websocket endpoint: posting, joining (with catch-up) and leaving chats."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from . import db, messages, teams, typists
from .auth import authenticate, bearer_token, public
from .hub import Connection, error_frame, message_frame
from .keys import BUS, CONFIG, DB, HUB, METRICS, TYPISTS, WRITER
from .shapes import Choice, FieldError, Id, Shape, is_utf8
from .validation import ApiError
from .writer import NOT_STORED

log = logging.getLogger(__name__)



class FrameError(Exception):
    """A frame the server cannot accept; answered with an error frame."""


# The frames a client sends. A refused field is answered "field reason" in an error frame.
CHAT_ID = Id(null=True, reason="must be a positive integer")


@functools.cache
def post_frame(max_text: int) -> Shape:
    """A message to post (`type` omitted or "message")."""
    return Shape("PostFrame", {
        "type": Choice(("message",), default="message"),
        "chat_id": CHAT_ID,
        **messages.new_message(max_text).fields,
    })


JOIN_FRAME = Shape("JoinFrame", {
    "type": Choice(("join",)),
    "chat_id": CHAT_ID,
    "since": Id(
        0, null=True, default=None, reason="must be a message id (an integer of 0 or more)",
        description="first every message with a greater seq (new ones, and changed ones as "
        "`update` frames), then live ones",
    ),
})
LEAVE_FRAME = Shape("LeaveFrame", {"type": Choice(("leave",)), "chat_id": CHAT_ID})
READ_FRAME = Shape("ReadFrame", {
    "type": Choice(("read",)),
    "chat_id": CHAT_ID,
    "message_id": teams.MESSAGE_ID,
})
TYPING_FRAME = Shape("TypingFrame", {"type": Choice(("typing",)), "chat_id": CHAT_ID})
# edit (with "text"), delete, react and unreact (with "emoji"): see change()
CHANGE_FRAME = Shape("ChangeFrame", {
    "type": Choice(("edit", "delete", "react", "unreact")),
    "chat_id": CHAT_ID,
    "message_id": Id(reason="must be a message id (a positive integer)"),
})


def read_frame(shape: Shape, frame: dict[str, Any]) -> dict[str, Any]:
    """The frame's fields, checked; FrameError "field reason" at the first refusal."""
    try:
        return shape.read(frame)
    except FieldError as exc:
        raise FrameError(exc.frame_text()) from None


def check_origin(request: web.Request) -> None:
    """Refuse cross-site handshakes (a browser always sends Origin; other clients need not)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin in request.app[CONFIG].allowed_origins:
        return
    if urlsplit(origin).netloc.lower() != request.host.lower():
        raise ApiError(403, "websocket origin not allowed")


@public  # authenticated here: the token may come in the query string
async def chat_socket(request: web.Request) -> web.WebSocketResponse:
    check_origin(request)
    user = await authenticate(request.app, request.query.get("token") or bearer_token(request))
    config = request.app[CONFIG]
    hub = request.app[HUB]
    open_sockets = hub.sockets_of(user["id"]) + await request.app[BUS].sockets_elsewhere(user["id"])
    if open_sockets >= config.max_sockets_per_user:
        raise ApiError(429, "too many open websockets for this user", headers={"Retry-After": "1"})
    ws = web.WebSocketResponse(
        # aiohttp refuses a frame of max_msg_size bytes; the contract, only larger ones.
        heartbeat=config.heartbeat, max_msg_size=config.max_frame + 1, compress=False
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "not a websocket handshake: send Upgrade: websocket")
    await ws.prepare(request)

    conn = Connection(
        ws, request.transport, user, config.outbox_limit, request.app.get(METRICS)
    )
    try:
        if hub.connect(conn):
            await record_presence(request.app, conn.user_id, True)
        budget = FrameBudget(config.frames_per_second, config.frame_burst)
        async for msg in ws:
            if conn.dropped:
                continue  # closing (logout, revoked, too slow): nothing more is taken from it
            if not budget.take():
                if budget.refused > config.frame_burst:
                    conn.close(1008, "too many frames")
                else:
                    conn.send(error_frame("rate limited: slow down"))
            elif msg.type == WSMsgType.TEXT:
                await handle_frame_safely(request.app, conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                conn.send(error_frame("binary frames are not supported: send JSON text frames"))
    finally:
        conn.stop()
        if hub.disconnect(conn):
            await record_presence(request.app, conn.user_id, False)
    return ws


class FrameBudget:
    """A token bucket: `rate` frames per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.refused = 0  # frames refused in a row
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        return False


async def handle_frame_safely(app: web.Application, conn: Connection, data: str) -> None:
    """handle_frame, with a bug answered by an error frame instead of ending the socket."""
    try:
        await handle_frame(app, conn, data)
    except db.Unavailable:
        conn.send(error_frame("the database is unavailable: try again shortly"))
    except Exception:
        log.exception("unhandled error on a frame of user %d", conn.user_id)
        conn.send(error_frame("internal error"))


_presence_writes: set[asyncio.Task[None]] = set()


async def record_presence(app: web.Application, user_id: int, online: bool) -> None:
    """Store a presence change, even when the handler is cancelled meanwhile.

    aiohttp cancels a websocket handler whose peer vanishes; a cancelled write
    here would leave the user online for good.
    """
    task = asyncio.create_task(db.set_online(app[DB], user_id, online))
    _presence_writes.add(task)
    task.add_done_callback(functools.partial(_presence_done, user_id, online))
    # Any backend's error: presence must not end the handler (the callback reports it,
    # also when this handler is gone before the write ends).
    with contextlib.suppress(Exception):
        await asyncio.shield(task)


def _presence_done(user_id: int, online: bool, task: asyncio.Task[None]) -> None:
    _presence_writes.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # The database may already be closing (shutdown marks everybody offline), or away.
        log.warning("could not record user %d as %s", user_id, "online" if online else "offline")


async def presence_written(timeout: float = 5.0) -> None:
    """Wait (bounded) for presence writes still in flight: they need the database open."""
    if _presence_writes:
        await asyncio.wait(list(_presence_writes), timeout=timeout)


async def handle_frame(app: web.Application, conn: Connection, data: str) -> None:
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        conn.send(error_frame("frame is not valid JSON"))
        return
    if not isinstance(frame, dict):
        conn.send(error_frame("frame must be a JSON object"))
        return
    kind = frame.get("type", "message")
    try:
        if kind == "message":
            await post_message(app, conn, frame)
        elif kind == "join":
            await join(app, conn, frame)
        elif kind == "leave":
            leave(app, conn, frame)
        elif kind == "read":
            await read(app, conn, frame)
        elif kind == "typing":
            await typing(app, conn, frame)
        elif isinstance(kind, str) and kind in CHANGES:
            await change(app, conn, frame, CHANGES[kind])
        else:
            raise FrameError(
                "unknown frame type: expected 'message', 'join', 'leave', 'read', 'typing', "
                "'edit', 'delete', 'react' or 'unreact'"
            )
    except FrameError as exc:
        nonce = frame.get("nonce")
        # A nonce that cannot be encoded (a lone surrogate) is not echoed back.
        extra = {"nonce": nonce} if isinstance(nonce, str) and is_utf8(nonce) else {}
        conn.send(error_frame(str(exc), **extra))


async def ensure_member(app: web.Application, conn: Connection, chat_id: int) -> None:
    """The check of every frame that acts in a chat: the socket's user may post there
    (joining a public chat makes them a member); FrameError as for an unknown chat."""
    if chat_id in conn.member_of:
        return
    if not await teams.enter_chat(app, conn.user_id, chat_id):
        raise FrameError(f"chat {chat_id} does not exist")
    conn.member_of.add(chat_id)


async def post_message(app: web.Application, conn: Connection, frame: dict[str, Any]) -> None:
    post = read_frame(post_frame(app[CONFIG].max_text), frame)
    chat_id, text, nonce = post["chat_id"], post["text"], post["nonce"]

    try:
        await ensure_member(app, conn, chat_id)
    except db.Unavailable:
        # As for a failed store: the error carries the nonce, so the client resends.
        raise FrameError(NOT_STORED) from None
    # Subscribe first: the sender's own copy of the broadcast is its acknowledgement.
    # (The bus follows the chat before the socket subscribes, with no await between:
    # a follow that fails leaves nothing half subscribed.)
    try:
        reply_to = await messages.check_reply(app, chat_id, post["reply_to"])
    except ApiError as exc:
        raise FrameError(exc.message) from None
    was_subscribed = chat_id in conn.subscriptions
    if not was_subscribed:
        await app[BUS].follow(chat_id)
    app[HUB].subscribe(chat_id, conn)
    draft = db.Draft(
        chat_id, conn.user_id, conn.username, text, nonce, conn.token_version, conn.api_token_id,
        reply_to=reply_to,
    )
    stored = await app[WRITER].post(draft)
    if stored.error:
        if not was_subscribed:
            app[HUB].unsubscribe(chat_id, conn)
        raise FrameError(stored.error)
    if not stored.is_new:
        # A repeated nonce: the original goes back to this socket only.
        conn.send(message_frame(stored.message))


async def join(app: web.Application, conn: Connection, frame: dict[str, Any]) -> None:
    wanted = read_frame(JOIN_FRAME, frame)
    chat_id, since = wanted["chat_id"], wanted["since"]
    # A private chat the user is not a member of answers as an unknown chat.
    newest = None
    if await teams.enter_chat(app, conn.user_id, chat_id):
        newest = await db.newest_seq(app[DB], chat_id)
    if newest is None:
        raise FrameError(f"chat {chat_id} does not exist")
    conn.member_of.add(chat_id)
    hub = app[HUB]
    joined: dict[str, Any] = {"type": "joined", "chat_id": chat_id}
    if since is not None and since > newest:
        # A cursor beyond the chat's newest message (a restored database, a
        # client bug) would hide every message up to it, the client's own
        # included: resume from the newest message instead, and say so.
        joined.update(cursor_reset=True, last_id=newest)
        since = newest
    await app[BUS].follow(chat_id)
    if since is None:
        hub.subscribe(chat_id, conn)
    else:
        # Subscribe (buffering) before reading: every change committed after the
        # read's snapshot is published after this point, so it lands in the
        # buffer. One that is in the read as well (committed before the read,
        # published after the subscribe, possibly even after go_live) is
        # dropped by its seq: go_live sets a floor of the last seq replayed.
        hub.subscribe(chat_id, conn, catch_up=True)
        last_sent = since
        # A message is new to the client (a `message` frame) once: a later page may
        # hold one this replay sent already, changed meanwhile (then an `update`).
        sent: set[int] = set()
        try:
            async for message in db.changes_since(app[DB], chat_id, since):
                await conn.wait_for_room()
                # A removal (from any process) unsubscribes the socket: stop at once.
                if conn.dropped or chat_id not in conn.subscriptions:
                    return
                new = message["id"] > since and message["id"] not in sent
                if new:
                    sent.add(message["id"])
                conn.send(message_frame(message, "message" if new else "update"))
                last_sent = message["seq"]
        except db.Unavailable:
            hub.unsubscribe(chat_id, conn)  # not left buffering: the client joins again
            raise
        if conn.dropped or chat_id not in conn.subscriptions:
            return
        conn.go_live(chat_id, last_sent)
    conn.send(json.dumps(joined))


def leave(app: web.Application, conn: Connection, frame: dict[str, Any]) -> None:
    chat_id = read_frame(LEAVE_FRAME, frame)["chat_id"]
    app[HUB].unsubscribe(chat_id, conn)
    conn.send(json.dumps({"type": "left", "chat_id": chat_id}))


CHANGES = {"edit": db.EDIT, "delete": db.DELETE, "react": db.REACT, "unreact": db.UNREACT}


async def change(app: web.Application, conn: Connection, frame: dict[str, Any], kind: str) -> None:
    """An edit, delete, react or unreact frame. The socket is subscribed to the chat, so
    the `update` frame every subscriber gets is its acknowledgement; a change that
    changes nothing is answered with the message's `update` frame to this socket only."""
    wanted = read_frame(CHANGE_FRAME, frame)
    chat_id, message_id = wanted["chat_id"], wanted["message_id"]
    text = emoji = None
    if kind == db.EDIT:
        text = read_frame(messages.message_edit(app[CONFIG].max_text), frame)["text"]
    elif kind in (db.REACT, db.UNREACT):
        emoji = read_frame(messages.REACTION, frame)["emoji"]
    user = {"id": conn.user_id, "username": conn.username}
    # Subscribed first (as a poster is) when the user may read the chat.
    chat = await teams.visible_chat(app, chat_id, user)
    subscribed = chat is not None and chat_id not in conn.subscriptions
    if subscribed:
        await app[BUS].follow(chat_id)
        app[HUB].subscribe(chat_id, conn)
    change = db.Change(kind, chat_id, message_id, conn.user_id, text=text, emoji=emoji,
                       token_version=conn.token_version, api_token_id=conn.api_token_id)
    try:
        stored = await messages.change_message(app, user, change)
    except ApiError as exc:
        if subscribed:
            app[HUB].unsubscribe(chat_id, conn)
        raise FrameError(exc.message) from None
    if stored.message is not None and (not stored.is_new or chat_id not in conn.subscriptions):
        conn.send(message_frame(stored.message, "update"))


async def read(app: web.Application, conn: Connection, frame: dict[str, Any]) -> None:
    """A read marker moved: every socket of the user (this one too) gets a `read` frame."""
    marker = read_frame(READ_FRAME, frame)
    try:
        await teams.mark_read(app, conn.user_id, marker["chat_id"], marker["message_id"])
    except ApiError as exc:
        raise FrameError(exc.message) from None


async def typing(app: web.Application, conn: Connection, frame: dict[str, Any]) -> None:
    """The user is typing in a chat: its other subscribers are told (chatapi/typists.py);
    more than one per user and chat every few seconds is dropped without an answer."""
    chat_id = read_frame(TYPING_FRAME, frame)["chat_id"]
    await ensure_member(app, conn, chat_id)
    if app[TYPISTS].admit(conn.user_id, chat_id):
        app[BUS].typing(typists.typing_event(chat_id, conn.user_id, conn.username))
