"""Login throttling: a sliding window per account and per client address."""

from __future__ import annotations

import asyncio
import time

from conftest import assert_error

from chatapi import create_app, db
from chatapi.throttle import LoginThrottle, SharedLoginThrottle, SlidingWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_limits_then_expires():
    clock = FakeClock()
    window = SlidingWindow(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert window.retry_after("a") == 0
        window.hit("a")
        clock.now += 1
    assert window.retry_after("a") == 57  # now 1003; the first hit leaves the window at 1060
    assert window.retry_after("b") == 0  # other keys are unaffected
    clock.now += 57
    assert window.retry_after("a") == 0  # no permanent lockout


def test_window_memory_is_bounded():
    window = SlidingWindow(limit=1, window=60, max_keys=100, clock=FakeClock())
    for n in range(1000):
        window.hit(f"key{n}")
    assert len(window._events) == 100


async def login(client, email: str, password: str):
    return await client.post("/auth/login", json={"email": email, "password": password})


async def test_failures_for_one_account_give_429_with_retry_after(aiohttp_client, config, register):
    client = await aiohttp_client(create_app(config.replace(login_failures_per_account=3)))
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    for _ in range(3):
        await assert_error(await login(client, alice["email"], "wrong-password"), 401)
    throttled = await login(client, alice["email"], alice["password"])  # even the right one
    await assert_error(throttled, 429)
    assert 1 <= int(throttled.headers["Retry-After"]) <= config.login_window
    # Another account from the same address is unaffected.
    assert (await login(client, bob["email"], bob["password"])).status == 200


async def test_throttled_logins_do_not_run_bcrypt(aiohttp_client, config, register, monkeypatch):
    client = await aiohttp_client(create_app(config.replace(login_failures_per_account=2)))
    alice = await register(client, "alice")
    for _ in range(2):
        await login(client, alice["email"], "wrong-password")
    from chatapi import security

    calls = []
    monkeypatch.setattr(security, "check_password", lambda *a: calls.append(a) or False)
    await assert_error(await login(client, alice["email"], "wrong-password"), 429)
    assert calls == []


async def test_failures_from_one_address_across_accounts_give_429(aiohttp_client, config):
    client = await aiohttp_client(create_app(config.replace(login_failures_per_address=5)))
    for n in range(5):
        await assert_error(await login(client, f"nobody{n}@example.com", "wrong-password"), 401)
    await assert_error(await login(client, "another@example.com", "wrong-password"), 429)


async def test_the_window_expires(aiohttp_client, config, register):
    client = await aiohttp_client(
        create_app(config.replace(login_failures_per_account=1, login_window=1.0))
    )
    alice = await register(client, "alice")
    await assert_error(await login(client, alice["email"], "wrong-password"), 401)
    await assert_error(await login(client, alice["email"], alice["password"]), 429)
    await asyncio.sleep(1.1)
    assert (await login(client, alice["email"], alice["password"])).status == 200


async def test_unknown_email_costs_a_hash_check_too(aiohttp_client, config, register):
    # Same status and body (test_users) and a bcrypt check on both paths: compare
    # durations loosely, against the cost of one check, not a wall-clock budget.
    client = await aiohttp_client(create_app(config.replace(bcrypt_rounds=10)))
    alice = await register(client, "alice")

    async def timed(email: str) -> float:
        start = time.perf_counter()
        await assert_error(await login(client, email, "wrong-password"), 401)
        return time.perf_counter() - start

    known = min([await timed(alice["email"]) for _ in range(3)])
    unknown = min([await timed(f"ghost{n}@example.com") for n in range(3)])
    assert unknown > known / 3  # without the dummy check, a miss costs ~1% of a hit


async def test_a_success_gives_back_only_its_own_reservation(backend, database):
    # In this process's memory (SQLite), or in the database every process shares.
    store = await db.open_database(database) if backend == "postgres" else None
    throttle = (
        SharedLoginThrottle(store, per_account=3, per_address=100, window=60)
        if store is not None
        else LoginThrottle(per_account=3, per_address=100, window=60)
    )
    try:
        await reservations_settle_their_own_places(throttle)
    finally:
        if store is not None:
            await store.close()


async def reservations_settle_their_own_places(throttle) -> None:
    first = await throttle.reserve("a@example.com", "10.0.0.1")
    second = await throttle.reserve("a@example.com", "10.0.0.2")
    third = await throttle.reserve("a@example.com", "10.0.0.3")
    # Three attempts are in flight: a fourth waits, though none has failed yet.
    assert await throttle.reserve("a@example.com", "10.0.0.4") > 0
    await throttle.settle(first, ok=False)
    await throttle.settle(second, ok=True)
    # The success freed its own place; the failure and the pending attempt still count.
    fourth = await throttle.reserve("a@example.com", "10.0.0.4")
    assert not isinstance(fourth, int)
    assert await throttle.reserve("a@example.com", "10.0.0.5") > 0
    await throttle.settle(third, ok=True)
    await throttle.settle(fourth, ok=False)
    assert not isinstance(await throttle.reserve("a@example.com", "10.0.0.5"), int)


async def test_parallel_guesses_meet_the_same_limit_at_production_cost(
    aiohttp_client, config, register
):
    # As the attacking client did: 30 guesses at once, the right password among
    # them, at bcrypt cost 12 and the default limits (5 per account).
    production = config.replace(bcrypt_rounds=12)
    assert production.login_failures_per_account == 5
    client = await aiohttp_client(create_app(production))
    alice = await register(client, "alice")
    guesses = [f"wrong-password-{n}" for n in range(29)] + [alice["password"]]
    answers = await asyncio.gather(*(login(client, alice["email"], p) for p in guesses))
    statuses = [answer.status for answer in answers]
    assert statuses.count(429) >= 30 - 5, statuses
    assert set(statuses) <= {200, 401, 429}, statuses
    # Whatever got through, the failures still count: the right password waits too.
    await assert_error(await login(client, alice["email"], alice["password"]), 429)


async def test_parallel_failures_from_one_address_meet_its_limit(aiohttp_client, config):
    production = config.replace(bcrypt_rounds=12)
    assert production.login_failures_per_address == 50
    client = await aiohttp_client(create_app(production))
    answers = await asyncio.gather(
        *(login(client, f"nobody{n}@example.com", "wrong-password") for n in range(150))
    )
    statuses = [answer.status for answer in answers]
    assert statuses.count(401) <= 50, statuses
    assert statuses.count(429) >= 100, statuses
    assert set(statuses) == {401, 429}
