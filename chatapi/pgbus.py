"""The bus of several processes on one PostgreSQL database.

Each commit of messages or of changes rings a doorbell (NOTIFY with chat ids
only, sent by the storing transaction) and every process reads the rows of the
chats its sockets follow from the table, in seq order, after the last seq it
delivered there: new messages and changed ones (as `update` frames). The table
is the truth: a lost doorbell (listener reconnect) costs a re-read, never a
message or a change, and a row is never delivered twice (seq values at or below
a chat's last delivered one are skipped). The same doorbells carry revoked tokens and
presence changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from . import typists
from .bus import Bus
from .hub import Hub
from .postgres import (
    API_TOKENS,
    CATCH_UP_ROWS,
    DOWN,
    MAX_PAYLOAD,
    ROUTED,
    TYPING,
    PostgresDatabase,
    event_payload,
    routed_payload,
    typing_payloads,
)

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

LOGGED_OUT = 4001


class PostgresBus(Bus):
    """Doorbells over LISTEN/NOTIFY, rows from the table, one reader task per process."""

    HEARTBEAT = 2.5  # seconds between lease renewals (and listener pings)
    MAX_BACKOFF = 5.0

    def __init__(self, database: PostgresDatabase, hub: Hub, metrics: Metrics | None) -> None:
        super().__init__(hub)
        self.db = database
        self.metrics = metrics
        # chat id -> last seq delivered here, for chats with local subscribers
        self.positions: dict[int, int] = {}
        # chat id -> (every message with an id up to this was delivered here, the ids
        # above it delivered since): a message is new to subscribers once (see _deliver)
        self._known: dict[int, tuple[int, set[int]]] = {}
        self._dirty: set[int] = set()
        self._rings: dict[int, float] = {}  # chat id -> when its oldest unread doorbell rang
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.origin = secrets.token_hex(6)  # tells this process's own events apart
        self._typing: list[dict[str, Any]] = []  # indications waiting for the next batch

    def published(self, messages: Sequence[dict[str, Any]]) -> None:
        # Read back from the table like any other process's commit: a row of
        # another process may precede ours in this chat and be unread yet.
        self._ring({message["chat_id"] for message in messages})

    def broadcast(self, frame: dict[str, Any]) -> None:
        super().broadcast(frame)  # this process's sockets now; the others by notification
        payload = event_payload(self.origin, frame)
        if len(payload.encode()) >= MAX_PAYLOAD:
            log.warning("event %r too large to reach other processes", frame.get("type"))
            return
        self._spawn(self.db.notify(payload))

    def route(self, event: dict[str, Any]) -> None:
        super().route(event)  # this process's sockets now; the others by notification
        payload = routed_payload(self.origin, event)
        if len(payload.encode()) >= MAX_PAYLOAD:
            log.warning("event %r too large to reach other processes", event["frame"].get("type"))
            return
        self._spawn(self.db.notify(payload))

    def typing(self, event: dict[str, Any]) -> None:
        super().typing(event)  # this process's sockets now; the others in the next batch
        if not self._typing:
            asyncio.get_running_loop().call_later(typists.BATCH_WINDOW, self._send_typing)
        self._typing.append(event)

    def _send_typing(self) -> None:
        """One notification for every indication of the window (more only past the
        payload limit)."""
        events, self._typing = self._typing, []
        for payload in typing_payloads(self.origin, events):
            self._spawn(self.db.notify(payload))

    async def follow(self, chat_id: int) -> None:
        if chat_id in self.positions:
            return
        last = await self.db.last_seq(chat_id)
        if chat_id not in self.positions:
            self.positions[chat_id] = last
            self._known[chat_id] = (last, set())
        # A doorbell may have rung while the chat was not followed yet.
        self._ring({chat_id})

    def _ring(self, chat_ids: set[int] | None) -> None:
        now = time.monotonic()
        chats = set(self.positions) if chat_ids is None else chat_ids
        for chat_id in chats:
            self._rings.setdefault(chat_id, now)
        self._dirty |= chats
        self._wake.set()

    def on_payload(self, payload: str) -> None:
        """A notification from any process (this one included)."""
        kind, _, rest = payload.partition(":")
        try:
            if kind == "m":
                self._ring({int(i) for i in rest.split(",")})
            elif kind == "u":
                self._spawn(self.check_tokens([int(rest)]))
            elif kind == API_TOKENS:
                self.hub.close_api_token(int(rest), LOGGED_OUT, "API token revoked")
            elif kind == "p":
                self._spawn(self.announce_presence([int(i) for i in rest.split(",")]))
            elif kind == ROUTED:
                origin, _, event = rest.partition(":")
                if origin != self.origin:
                    self.hub.route(json.loads(event))
            elif kind == TYPING:
                origin, _, batch = rest.partition(":")
                if origin != self.origin:
                    for chat_id, user_id, username in json.loads(batch):
                        typists.deliver(self.hub, typists.typing_event(chat_id, user_id, username))
            elif kind == "e":
                origin, _, frame = rest.partition(":")
                if origin != self.origin:  # this process delivered its own already
                    self.hub.broadcast(frame)
            else:
                log.warning("unknown notification kind %r", kind)
        except (ValueError, TypeError):
            log.warning("malformed notification %r", payload[:100])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(self._quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(coro: Any) -> None:
        # Background work that the database being away may fail: the next
        # listener reconnect re-checks tokens and presence anyway.
        try:
            await coro
        except DOWN as exc:
            log.warning("bus: %s failed (%s)", coro.__qualname__, type(exc).__name__)

    async def sockets_elsewhere(self, user_id: int) -> int:
        return await self.db.sockets_elsewhere(user_id)

    async def check_tokens(self, user_ids: Sequence[int]) -> None:
        """Close (4001) this process's sockets whose token was revoked meanwhile."""
        wanted = set(user_ids)
        tokens = {
            conn.api_token_id for conn in self.hub.connections
            if conn.user_id in wanted and conn.api_token_id is not None
        }
        current = await self.db.token_versions(list(wanted))
        live = await self.db.live_api_tokens(list(tokens)) if tokens else set()
        self.hub.close_revoked(current, checked=wanted, live_tokens=live, tokens_checked=tokens)

    async def announce_presence(self, user_ids: Sequence[int]) -> None:
        """Presence frames for users whose state changed on some process."""
        for user in await self.db.presence_of(user_ids):
            self.hub.note_presence(user["user_id"], user["username"], user["is_online"])

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._listen_loop()),
            asyncio.create_task(self._lease_loop()),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, *DOWN):
                    await task
            await self._finish_spawned()

    async def _finish_spawned(self, timeout: float = 2.0) -> None:
        """Let the notifications and re-checks in flight end (for at most `timeout`
        seconds), then cancel the rest: one left pending would be destroyed with the
        event loop, its database connection never closed."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _read_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            for chat_id in list(self.positions):
                if not self.hub.has_subscribers(chat_id):
                    del self.positions[chat_id]
                    self._known.pop(chat_id, None)
            chats = {c: self.positions[c] for c in self._dirty if c in self.positions}
            rung = self._rings
            self._dirty, self._rings = set(), {}
            if not chats:
                continue
            try:
                rows = await self.db.changes_after(chats, CATCH_UP_ROWS)
            except DOWN as exc:  # the database is away: keep the work, try again
                log.warning("reading new messages failed (%s); retrying", type(exc).__name__)
                self._dirty |= set(chats)
                for chat_id, at in rung.items():
                    self._rings.setdefault(chat_id, at)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                self._wake.set()
                continue
            backoff = 0.1
            complete = len(rows) < CATCH_UP_ROWS
            self._deliver(rows, rung, complete)
            if not complete:  # more are waiting
                self._ring(set(chats))

    def _deliver(self, rows: list[dict[str, Any]], rung: dict[int, float], complete: bool) -> None:
        """Publish rows read after the chats' positions, in seq order.

        A row is a `message` the first time its id is delivered here, else an
        `update`. After a complete read every message with an id up to the
        position has been delivered (seq and ids come from one allocation, which
        commits in order within a chat); after a read cut at the row limit, a
        message whose id is below the cut but whose new seq is above it comes
        later, so the ids delivered since the last complete read are remembered.
        """
        now = time.monotonic()
        for row in rows:
            chat_id = row["chat_id"]
            last = self.positions.get(chat_id)
            if last is None or row["seq"] <= last:
                continue
            self.positions[chat_id] = row["seq"]
            known, since = self._known.setdefault(chat_id, (last, set()))
            new = row["id"] > known and row["id"] not in since
            if new and not complete:
                since.add(row["id"])
            self.hub.publish(row, new)
            if self.metrics is not None and chat_id in rung:
                self.metrics.bus_delivery_lag.observe(now - rung.pop(chat_id))
        if complete:
            for chat_id in {row["chat_id"] for row in rows}:
                if chat_id in self.positions:
                    self._known[chat_id] = (self.positions[chat_id], set())

    async def _listen_loop(self) -> None:
        backoff = 0.1
        first = True
        while True:
            self._lost.clear()
            try:
                conn = await self.db.listen(self.on_payload, self._lost.set)
            except DOWN as exc:
                log.warning("bus listener cannot connect (%s); retrying in %.1fs",
                            type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                continue
            backoff = 0.1
            if not first:
                self.reconnects += 1
                if self.metrics is not None:
                    self.metrics.bus_reconnects.inc()
                log.info("bus listener reconnected: re-reading every followed chat")
            first = False
            self.connected.set()
            # Whatever was notified while no listener ran is gone: re-read from
            # the last delivered ids, re-check revoked tokens and presence.
            self._ring(None)
            self._spawn(self._recheck())
            try:
                await self._watch(conn)
            finally:
                self.connected.clear()
                with contextlib.suppress(*DOWN):
                    await asyncio.wait_for(conn.close(), 2.0)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return once the listener connection is lost (told, or found dead by a ping)."""
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.HEARTBEAT)
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self.HEARTBEAT)
            except DOWN:
                return

    async def _recheck(self) -> None:
        users = list({conn.user_id for conn in self.hub.connections})
        if users:
            await self.check_tokens(users)
            await self.announce_presence(users)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.HEARTBEAT)
            try:
                if not await self.db.renew_lease(self.hub.socket_counts()):
                    log.warning("this process's lease had lapsed: took a new one")
                gone = await self.db.reap_nodes()
            except DOWN as exc:
                log.warning("renewing the lease failed (%s)", type(exc).__name__)
                continue
            if gone:
                log.info("%d users went offline with a lapsed process", len(gone))
