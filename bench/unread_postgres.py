"""Scenario 7 on PostgreSQL: the chat list with unread counts (see bench/unread.py)."""

from __future__ import annotations

from . import unread
from .common import Outcome


async def run(quick: bool = False) -> Outcome:
    return await unread.run(quick, backend="postgres")
