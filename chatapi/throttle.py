"""Sliding-window counting of failed logins, per account and per client address."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any


class SlidingWindow:
    """At most `limit` events per key within the last `window` seconds.

    Keys are forgotten once their events expire, and at most `max_keys` are kept
    (the least recently used go first), so memory stays bounded under a flood.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = self._clock() - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it is under the limit."""
        events = self._recent(key)
        if events is None or len(events) < self.limit:
            return 0
        return max(1, math.ceil(events[0] + self.window - self._clock()))

    def hit(self, key: str) -> None:
        events = self._recent(key)
        if events is None:
            events = self._events[key] = deque()
        self._events.move_to_end(key)
        events.append(self._clock())
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)


class LoginThrottle:
    """Failed logins counted per email and per client address, in this process."""

    def __init__(self, per_account: int, per_address: int, window: float) -> None:
        self.accounts = SlidingWindow(per_account, window)
        self.addresses = SlidingWindow(per_address, window)

    async def retry_after(self, email: str, address: str) -> int:
        """Seconds until this email and address may try again; 0 when both may now."""
        return max(self.accounts.retry_after(email), self.addresses.retry_after(address))

    async def failed(self, email: str, address: str) -> None:
        self.accounts.hit(email)
        self.addresses.hit(address)

    async def succeeded(self, email: str) -> None:
        self.accounts.clear(email)


class SharedLoginThrottle(LoginThrottle):
    """The same counting kept in a shared database, so that N processes do not allow
    N times the guesses (`store` is a PostgresDatabase: its login_failures methods)."""

    def __init__(self, store: Any, per_account: int, per_address: int, window: float) -> None:
        super().__init__(per_account, per_address, window)
        self.store = store
        self.limits = {"account": per_account, "address": per_address}
        self.window = window
        self._failures = 0

    async def retry_after(self, email: str, address: str) -> int:
        recent = await self.store.recent_login_failures(
            {"account:" + email: self.limits["account"], "address:" + address: self.limits["address"]},
            self.window,
        )
        return max((max(1, math.ceil(wait)) for wait in recent), default=0)

    async def failed(self, email: str, address: str) -> None:
        await self.store.record_login_failure(["account:" + email, "address:" + address], self.window)
        self._failures += 1
        if self._failures % 1000 == 0:  # keys never tried again are forgotten too
            await self.store.prune_login_failures(self.window)

    async def succeeded(self, email: str) -> None:
        await self.store.clear_login_failures("account:" + email)
