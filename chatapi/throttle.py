"""Sliding-window counting of failed logins, per account and per client address."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable


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
    """Failed logins counted per email and per client address."""

    def __init__(self, per_account: int, per_address: int, window: float) -> None:
        self.accounts = SlidingWindow(per_account, window)
        self.addresses = SlidingWindow(per_address, window)

    def retry_after(self, email: str, address: str) -> int:
        return max(self.accounts.retry_after(email), self.addresses.retry_after(address))

    def failed(self, email: str, address: str) -> None:
        self.accounts.hit(email)
        self.addresses.hit(address)

    def succeeded(self, email: str) -> None:
        self.accounts.clear(email)
