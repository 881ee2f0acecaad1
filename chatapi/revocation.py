"""Closing the sockets of users whose tokens were revoked by another process.

Logout closes its user's sockets itself. A revocation written by another process
(the `reset-password` command, another server on the same database) is noticed here:
every second, one query reads the token version of the users with open sockets, and
each socket that authenticated with an older version is closed with 4001; another
reads which API tokens of open sockets still exist, and closes the sockets of those
that do not (a password reset deletes the user's API tokens). A backend
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
    token_ids = hub.api_token_ids()
    versions = await db.token_versions(database, user_ids)
    live = await db.live_api_tokens(database, token_ids) if token_ids else set()
    # Only the users and tokens read: one who came online meanwhile is not revoked.
    closed = hub.close_revoked(
        versions, checked=set(user_ids), live_tokens=live, tokens_checked=set(token_ids)
    )
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
