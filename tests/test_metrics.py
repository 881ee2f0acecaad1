"""GET /metrics: Prometheus counters and gauges that follow real traffic."""

from __future__ import annotations

import asyncio

from conftest import assert_error, connect, create_chat, next_frame
from prometheus_client.parser import text_string_to_metric_families

from chatapi import create_app
from chatapi.config import from_env
from chatapi.hub import Connection
from chatapi.keys import METRICS
from chatapi.metrics import Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def requests_of(samples: Samples, route: str, method: str, status: int) -> float | None:
    return value(
        samples,
        "chatapi_http_request_duration_seconds_count",
        route=route,
        method=method,
        status=str(status),
    )


async def eventually(client, name: str, expected: float) -> None:
    """Scrape until metric `name` shows `expected` (socket handlers clean up on their own time)."""
    for _ in range(100):
        current = value(await scrape(client), name)
        if current == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} is {current}, expected {expected}")


async def test_metrics_need_no_token(client):
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert "chatapi_connected_sockets" in await resp.text()


async def three_messages_to_a_subscriber(client, register) -> None:
    """alice posts three messages to a chat bob joined; both sockets receive them."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    chat = await create_chat(client, alice)
    ws_a, ws_b = await connect(client, alice), await connect(client, bob)
    await ws_b.send_json({"type": "join", "chat_id": chat})
    await next_frame(ws_b, "joined")

    for n in range(3):
        await ws_a.send_json({"text": f"hello {n}", "chat_id": chat})
    for ws in (ws_a, ws_b):
        for _ in range(3):
            await next_frame(ws, "message")


async def test_messages_stored_and_frames_delivered_follow_the_traffic(client, register):
    await three_messages_to_a_subscriber(client, register)
    samples = await scrape(client)
    assert value(samples, "chatapi_messages_stored_total") == 3
    # Two subscribed sockets (the sender and bob) times three messages.
    assert value(samples, "chatapi_frames_delivered_total") == 6
    assert value(samples, "chatapi_connected_sockets") == 2
    assert value(samples, "chatapi_online_users") == 2
    assert value(samples, "chatapi_slow_sockets_dropped_total") == 0


async def test_a_repeated_nonce_stores_nothing_new(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    for _ in range(2):
        await ws.send_json({"text": "once", "chat_id": chat, "nonce": "n-1"})
        await next_frame(ws, "message")

    samples = await scrape(client)
    assert value(samples, "chatapi_messages_stored_total") == 1
    # The repeat goes back to the sender only, outside the fan-out.
    assert value(samples, "chatapi_frames_delivered_total") == 1


async def test_socket_gauges_follow_opening_and_closing(client, register):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    sockets = [await connect(client, user) for user in (alice, alice, bob)]
    await eventually(client, "chatapi_connected_sockets", 3)
    assert value(await scrape(client), "chatapi_online_users") == 2

    await sockets[0].close()
    await eventually(client, "chatapi_connected_sockets", 2)
    assert value(await scrape(client), "chatapi_online_users") == 2

    await sockets[1].close()
    await eventually(client, "chatapi_connected_sockets", 1)
    assert value(await scrape(client), "chatapi_online_users") == 1


async def test_requests_are_counted_by_route_template_method_and_status(client, register):
    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    resp = await client.get("/chats/messages", params={"id": chat}, headers=alice.headers)
    assert resp.status == 200
    resp = await client.get("/chats/messages", params={"id": chat + 1}, headers=alice.headers)
    assert resp.status == 404
    resp = await client.get("/chats/messages", params={"id": chat})
    assert resp.status == 401

    samples = await scrape(client)
    assert requests_of(samples, "/auth/reg", "POST", 201) == 1
    assert requests_of(samples, "/chats/create", "POST", 201) == 1
    assert requests_of(samples, "/chats/messages", "GET", 200) == 1
    assert requests_of(samples, "/chats/messages", "GET", 404) == 1
    assert requests_of(samples, "/chats/messages", "GET", 401) == 1


async def test_route_labels_never_carry_the_raw_path(client, register):
    alice = await register(client, "alice")
    resp = await client.get("/users/12345/private-part")
    assert resp.status == 404
    resp = await client.get("/chats/messages", params={"id": "1", "token": alice["token"]})
    assert resp.status == 401  # the query token is not a way in; nor is it a label
    resp = await client.request("PROPFIND", "/health")
    assert resp.status == 405

    samples = await scrape(client)
    assert requests_of(samples, "unmatched", "GET", 404) == 1
    assert requests_of(samples, "/chats/messages", "GET", 401) == 1
    # A method outside the usual set is one label value, not one per spelling.
    assert requests_of(samples, "unmatched", "other", 405) == 1
    labels = " ".join(str(key) for key in samples)
    assert "private-part" not in labels and alice["token"] not in labels


async def test_a_websocket_session_is_not_a_request_latency(client, register):
    alice = await register(client, "alice")
    ws = await connect(client, alice)
    await ws.close()
    with_token_refused = await client.get("/chats/ws", params={"token": "nope"})
    assert with_token_refused.status == 401

    samples = await scrape(client)
    assert requests_of(samples, "/chats/ws", "GET", 101) is None
    assert requests_of(samples, "/chats/ws", "GET", 401) == 1


async def test_openmetrics_when_the_scraper_asks(client):
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.status == 200
    assert resp.content_type == "application/openmetrics-text"
    assert (await resp.text()).endswith("# EOF\n")


async def test_each_application_counts_only_its_own_traffic(aiohttp_client, config, register):
    # Two applications of one process on one database: counting is per application.
    busy = await aiohttp_client(create_app(config))
    quiet = await aiohttp_client(create_app(config))
    await register(busy, "alice")

    assert requests_of(await scrape(busy), "/auth/reg", "POST", 201) == 1
    assert requests_of(await scrape(quiet), "/auth/reg", "POST", 201) is None


async def test_metrics_turned_off_is_a_404_and_nothing_breaks(aiohttp_client, config, register):
    app = create_app(config.replace(metrics=False))
    client = await aiohttp_client(app)
    await assert_error(await client.get("/metrics"), 404)
    assert METRICS not in app

    alice = await register(client, "alice")
    chat = await create_chat(client, alice)
    ws = await connect(client, alice)
    await ws.send_json({"text": "still here", "chat_id": chat})
    assert (await next_frame(ws, "message"))["text"] == "still here"


def test_the_environment_turns_metrics_off():
    assert from_env({"CHATAPI_METRICS": "off"}).metrics is False
    assert from_env({}).metrics is True


def dropped(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("chatapi_slow_sockets_dropped_total")


class StalledSocket:
    """Stands in for a websocket whose peer never reads: nothing is ever sent."""

    closed_with: int | None = None

    async def close(self, code: int, message: bytes) -> None:
        self.closed_with = code


async def test_a_socket_dropped_as_slow_is_counted_once():
    metrics = Metrics()
    ws = StalledSocket()
    # The pump is not started: queued frames pile up as for a peer that never reads.
    user = {"id": 1, "username": "idle", "token_version": 0}
    conn = Connection(ws, None, user, limit=2, metrics=metrics)
    for n in range(5):
        conn.send(f"frame {n}")
    await conn.closed()

    assert conn.dropped and ws.closed_with == 1008
    assert dropped(metrics) == 1


async def test_a_catch_up_that_overflows_is_counted_as_slow():
    metrics = Metrics()
    user = {"id": 1, "username": "idle", "token_version": 0}
    conn = Connection(StalledSocket(), None, user, limit=2, metrics=metrics)
    conn.subscriptions[7] = []  # catching up: live messages are buffered
    for message_id in range(1, 6):
        conn.deliver(7, message_id, "{}")
    await conn.closed()

    assert conn.dropped
    assert dropped(metrics) == 1


async def test_a_socket_closed_for_another_reason_is_not_counted():
    metrics = Metrics()
    user = {"id": 1, "username": "u", "token_version": 0}
    conn = Connection(StalledSocket(), None, user, limit=2, metrics=metrics)
    conn.close(4001, "logged out")
    for n in range(5):
        conn.send(f"frame {n}")
    await conn.closed()

    assert dropped(metrics) == 0


async def test_bus_metrics_follow_the_traffic(client, register, backend):
    """Listener reconnects, doorbell-to-delivery lag and pool use (the PostgreSQL bus);
    present on SQLite too, where nothing rings and no pool exists."""
    await three_messages_to_a_subscriber(client, register)
    samples = await scrape(client)
    lag_count = value(samples, "chatapi_bus_delivery_lag_seconds_count")
    lag_sum = value(samples, "chatapi_bus_delivery_lag_seconds_sum")
    assert value(samples, "chatapi_bus_listener_reconnects_total") == 0
    # Once the background work (presence, token checks) is done, every connection is back
    # in the pool: none leaked. (On SQLite there is no pool: always 0.)
    await eventually(client, "chatapi_db_pool_connections_in_use", 0)
    if backend == "postgres":
        # Each message was delivered through a doorbell (three, or fewer when batched).
        assert lag_count is not None and 1 <= lag_count <= 3, samples
        assert lag_sum is not None and 0 < lag_sum < 5 * lag_count
    else:
        assert (lag_count, lag_sum) == (0, 0)
