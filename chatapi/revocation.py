"""Closing the sockets of users whose tokens were revoked by another process.

Logout closes its user's sockets itself. A revocation written by another process
(the `reset-password` command, another server on the same database) is noticed here:
every second, one query reads the token version of the users with open sockets, and
each socket that authenticated with an older version is closed with 4001. A backend
that is told about changes (PostgreSQL notifications) runs the same check after
each reconnect of its listener.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from . import db
from .hub import Hub

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between checks


async def close_revoked_sockets(database: db.Database, hub: Hub) -> int:
    """One check: close the sockets whose token version is stale; returns how many."""
    user_ids = hub.user_ids()
    if not user_ids:
        return 0
    versions = await db.token_versions(database, user_ids)
    # Only the users read: one who came online meanwhile is not a deleted user.
    closed = hub.close_revoked(versions, checked=set(user_ids))
    if closed:
        log.info("closed %d websockets whose tokens were revoked", closed)
    return closed


async def watch_revocations(database: db.Database, hub: Hub, interval: float = INTERVAL) -> None:
    """Run the check every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await close_revoked_sockets(database, hub)
        except (sqlite3.Error, ValueError, db.Unavailable):
            log.warning("could not check for revoked tokens; trying again")
