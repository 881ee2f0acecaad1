"""Sliding-window counting of login attempts, per account and per client address.

An attempt is counted (reserved) before its password is checked and settled after:
a failure keeps its place in the window, a success gives back only its own. So N
guesses sent at once meet the same limit as N sent one after the other.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


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

    def hit(self, key: str) -> float:
        """Count an event for `key` now; returns its time stamp (for `forget`)."""
        events = self._recent(key)
        if events is None:
            events = self._events[key] = deque()
        self._events.move_to_end(key)
        stamp = self._clock()
        events.append(stamp)
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)
        return stamp

    def forget(self, key: str, stamp: float) -> None:
        """Take back one event of `key` counted at `stamp`, and no other."""
        events = self._events.get(key)
        if events is not None and stamp in events:
            events.remove(stamp)
            if not events:
                del self._events[key]


@dataclass(frozen=True)
class Reservation:
    """One login attempt counted before its password is checked."""

    account: str
    address: str
    account_stamp: float
    address_stamp: float


@dataclass(frozen=True)
class SharedReservation:
    """One login attempt counted in the shared database: the ids of its rows."""

    ids: tuple[int, ...]


class Throttle(Protocol):
    """What the login handler needs; an implementation shared by several processes
    (in the database) stands in for the in-memory one."""

    async def reserve(self, account: str, address: str) -> Any:
        """Count an attempt (a reservation), or return the seconds to wait as an int
        (over the limit: nothing counted)."""
        ...

    async def settle(self, reservation: Any, ok: bool) -> None:
        """A failed attempt stays counted; a successful one gives back its own place only."""
        ...


class LoginThrottle:
    """Login attempts counted per email and per client address, in this process's memory."""

    def __init__(self, per_account: int, per_address: int, window: float) -> None:
        self.accounts = SlidingWindow(per_account, window)
        self.addresses = SlidingWindow(per_address, window)

    async def reserve(self, account: str, address: str) -> Reservation | int:
        """Count an attempt, or return the seconds to wait (over the limit: nothing counted)."""
        # Check and count with no await between: concurrent attempts cannot all
        # pass the check before any of them is counted.
        retry_after = max(self.accounts.retry_after(account), self.addresses.retry_after(address))
        if retry_after:
            return retry_after
        return Reservation(account, address, self.accounts.hit(account), self.addresses.hit(address))

    async def settle(self, reservation: Reservation, ok: bool) -> None:
        """A failed attempt stays counted; a successful one gives back its own place only."""
        if ok:
            self.accounts.forget(reservation.account, reservation.account_stamp)
            self.addresses.forget(reservation.address, reservation.address_stamp)


class SharedLoginThrottle:
    """The same counting kept in a shared database, so that N processes do not allow
    N times the guesses (`store` is a PostgresDatabase: its login attempt methods).

    The check and the count are one transaction in the database, so guesses sent
    at once to several processes meet the same limit as guesses sent in turn.
    """

    def __init__(self, store: Any, per_account: int, per_address: int, window: float) -> None:
        self.store = store
        self.per_account = per_account
        self.per_address = per_address
        self.window = window
        self._attempts = 0

    async def reserve(self, account: str, address: str) -> SharedReservation | int:
        """Count an attempt in the database, or return the seconds to wait."""
        limits = {"account:" + account: self.per_account, "address:" + address: self.per_address}
        waits, ids = await self.store.reserve_login_attempt(limits, self.window)
        if waits:
            return max(max(1, math.ceil(wait)) for wait in waits)
        self._attempts += 1
        if self._attempts % 1000 == 0:  # keys never tried again are forgotten too
            await self.store.prune_login_failures(self.window)
        return SharedReservation(tuple(ids))

    async def settle(self, reservation: SharedReservation, ok: bool) -> None:
        """A failed attempt stays counted; a successful one gives back its own rows only."""
        if ok:
            await self.store.release_login_attempt(reservation.ids)
