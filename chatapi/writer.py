"""Group commit: one task stores pending messages together, then publishes them."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import db
from .hub import Hub

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)


class MessageWriter:
    """Stores messages in batches (one transaction, one fsync each) and publishes
    each batch after its commit, in id order.

    Being the only task that inserts messages is what makes "every subscriber
    sees a chat's messages in increasing id order" hold: ids are assigned, then
    committed, then published in one sequence.
    """

    def __init__(
        self,
        database: db.Database,
        hub: Hub,
        max_batch: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = database
        self._hub = hub
        self._max_batch = max_batch
        self._metrics = metrics
        self._pending: asyncio.Queue[tuple[db.Draft, asyncio.Future[db.Stored]]] = asyncio.Queue()

    async def post(self, draft: db.Draft) -> db.Stored:
        """Store a message; returns once it is committed and published."""
        future = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((draft, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < self._max_batch:
                batch.append(self._pending.get_nowait())
            try:
                results = await db.insert_messages(self._db, [draft for draft, _ in batch])
            except Exception as exc:
                log.exception("storing %d messages failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            stored_count = 0
            for (_, future), stored in zip(batch, results):
                if stored.is_new:
                    self._hub.publish(stored.message)
                    stored_count += 1
                if not future.done():
                    future.set_result(stored)
            if stored_count and self._metrics is not None:
                self._metrics.messages_stored.inc(stored_count)
