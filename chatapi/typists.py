"""Typing indications: who is typing in which chat, never stored.

A socket sends `{"type": "typing", "chat_id": N}`; the chat's subscribers other than
the typist's own sockets get `{"type": "typing", "chat_id", "user_id", "username",
"expires_in"}`. The indication holds `expires_in` seconds on the client, and a
message from that user ends it there: no stop frame. Each process lets through at
most one indication per user and chat every INTERVAL seconds and drops the rest
silently. Between processes (PostgreSQL) the indications of a short window travel
together in one notification (chatapi/pgbus.py), not one per keystroke.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .hub import Hub

EXPIRES_IN = 5  # seconds an indication holds on the client
INTERVAL = 3.0  # seconds: at most one indication per user and chat this often
BATCH_WINDOW = 0.15  # seconds of indications gathered into one notification
_PRUNE_AT = 10_000  # remembered (user, chat) pairs before the stale ones are dropped


class Typists:
    """When each user last typed in each chat (this process): the rate limit."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._last: dict[tuple[int, int], float] = {}

    def admit(self, user_id: int, chat_id: int) -> bool:
        """True when an indication of the user in the chat may go out now."""
        now = time.monotonic()
        key = (user_id, chat_id)
        if now - self._last.get(key, -self.interval) < self.interval:
            return False
        if len(self._last) >= _PRUNE_AT:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        self._last[key] = now
        return True


def typing_event(chat_id: int, user_id: int, username: str) -> dict[str, Any]:
    """The frame the chat's other subscribers get."""
    return {
        "type": "typing",
        "chat_id": chat_id,
        "user_id": user_id,
        "username": username,
        "expires_in": EXPIRES_IN,
    }


def deliver(hub: Hub, event: dict[str, Any]) -> None:
    """Send a typing frame to this process's live subscribers of its chat, except the
    typist's own sockets (and sockets still catching up: typing is not replayed)."""
    frame = json.dumps(event, ensure_ascii=False)
    hub.send_to_subscribers(event["chat_id"], frame, but_user=event["user_id"])
