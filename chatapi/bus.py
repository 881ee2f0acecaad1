"""The bus between processes: committed messages and events reach every process's sockets.

`LocalBus` is one process on its own (SQLite): a committed message goes straight
to the hub. `pgbus.PostgresBus` is one of several processes on one PostgreSQL
database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import typists
from .hub import Hub

if TYPE_CHECKING:
    from . import db
    from .metrics import Metrics


class Bus:
    """Publish after commit; deliver to this process's sockets."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def published(self, messages: Sequence[dict[str, Any]]) -> None:
        """Messages just committed by this process, in id order."""
        for message in messages:
            self.hub.publish(message)

    def broadcast(self, frame: dict[str, Any]) -> None:
        """An event frame (not a message: e.g. a chat was created) for every socket of
        every process."""
        self.hub.broadcast(json.dumps(frame, ensure_ascii=False))

    def route(self, event: dict[str, Any]) -> None:
        """An event of a chat or of some users (see Hub.route) for every process."""
        self.hub.route(event)

    def announce_chat(self, chat: dict[str, Any]) -> None:
        """Tell every open socket of every process that a chat was created (after its commit)."""
        fields = ("id", "name", "owner_id", "created_at", "kind")
        self.broadcast({"type": "chat_created", "chat": {field: chat[field] for field in fields}})

    def typing(self, event: dict[str, Any]) -> None:
        """A typing indication (chatapi/typists.py) for the chat's subscribers on every
        process."""
        typists.deliver(self.hub, event)

    async def follow(self, chat_id: int) -> None:
        """Called when a socket subscribes: from here on, new messages of the chat reach it."""

    async def sockets_elsewhere(self, user_id: int) -> int:
        """The user's open sockets on other processes."""
        return 0

    async def run(self) -> None:
        """Background work for as long as the application runs."""
        await asyncio.Event().wait()


class LocalBus(Bus):
    """One process on its own: the hub is the whole bus."""


def bus_for(database: db.Database, hub: Hub, metrics: Metrics | None = None) -> Bus:
    """The bus that suits the database: shared databases get the PostgreSQL bus."""
    if database.shared:
        from .pgbus import PostgresBus

        return PostgresBus(database, hub, metrics)  # type: ignore[arg-type]
    return LocalBus(hub)


