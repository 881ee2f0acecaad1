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
    """Stores messages and their changes in batches (one transaction, one fsync each)
    and publishes each batch after its commit, in id (and seq) order.

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
        self._pending: asyncio.Queue[
            tuple[db.Draft | db.Change, asyncio.Future[db.Stored]]
        ] = asyncio.Queue()
        self._held: tuple[db.Draft | db.Change, asyncio.Future[db.Stored]] | None = None

    async def post(self, draft: db.Draft | db.Change) -> db.Stored:
        """Store a message (or a change of one); returns once it is committed and published."""
        future = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((draft, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [self._held or await self._pending.get()]
            self._held = None
            # One kind per batch: messages, or changes (their order kept); the first
            # item of the other kind waits for the next batch.
            kind = type(batch[0][0])
            while not self._pending.empty() and len(batch) < self._max_batch:
                item = self._pending.get_nowait()
                if type(item[0]) is not kind:
                    self._held = item
                    break
                batch.append(item)
            store = db.insert_messages if kind is db.Draft else db.apply_changes
            try:
                results = await store(self._db, [item for item, _ in batch])  # type: ignore[arg-type]
            except Exception:
                log.exception("storing %d messages failed", len(batch))
                failed = db.Stored(None, error=NOT_STORED)
                for _, future in batch:
                    if not future.done():
                        future.set_result(failed)
                continue
            new = [stored.message for stored in results if stored.is_new]
            try:
                self._bus.published(new)
            finally:  # committed: the posters hear so, whatever publishing met
                for (_, future), stored in zip(batch, results):
                    if not future.done():
                        future.set_result(stored)
            if new and kind is db.Draft and self._metrics is not None:
                self._metrics.messages_stored.inc(len(new))
