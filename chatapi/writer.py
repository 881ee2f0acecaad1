"""Group commit: one task stores pending messages together, then publishes them."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import db
from .bus import Bus

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)
NOT_STORED = "message not stored: the database failed; send it again"


class MessageWriter:
    """Stores messages in batches (one transaction, one fsync each) and publishes
    each batch after its commit, in id order.

    Within one process, being the only task that inserts messages is what makes
    "every subscriber sees a chat's messages in increasing id order" hold: ids
    are assigned, then committed, then published in one sequence. Across
    processes the database orders each chat's ids and the bus delivers them.
    """

    def __init__(
        self,
        database: db.Database,
        bus: Bus,
        max_batch: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = database
        self._bus = bus
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
            except Exception:
                log.exception("storing %d messages failed", len(batch))
                failed = db.Stored(None, error=NOT_STORED)
                for _, future in batch:
                    if not future.done():
                        future.set_result(failed)
                continue
            new = [stored.message for stored in results if stored.is_new]
            self._bus.published(new)
            for (_, future), stored in zip(batch, results):
                if not future.done():
                    future.set_result(stored)
            if new and self._metrics is not None:
                self._metrics.messages_stored.inc(len(new))
