"""Prometheus metrics of one application: sockets, users, messages, request latency."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import hdrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from .hub import Hub

UNMATCHED = "unmatched"


class Metrics:
    """The instruments of one application, in a registry of its own.

    Not the global default registry: a process may hold several applications
    (tests build one per test), and each must count only its own traffic.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected_sockets = Gauge(
            "chatapi_connected_sockets", "Open websocket connections.", registry=self.registry
        )
        self.online_users = Gauge(
            "chatapi_online_users",
            "Users with at least one open websocket.",
            registry=self.registry,
        )
        self.messages_stored = Counter(
            "chatapi_messages_stored",
            "Messages committed to the database (a repeated nonce stores nothing).",
            registry=self.registry,
        )
        self.frames_delivered = Counter(
            "chatapi_frames_delivered",
            "Message frames queued to subscribed sockets by fan-out.",
            registry=self.registry,
        )
        self.slow_sockets_dropped = Counter(
            "chatapi_slow_sockets_dropped",
            "Websockets closed because their outgoing frames piled up.",
            registry=self.registry,
        )
        self.bus_reconnects = Counter(
            "chatapi_bus_listener_reconnects",
            "Times the PostgreSQL listener connection was lost and made again.",
            registry=self.registry,
        )
        self.bus_delivery_lag = Histogram(
            "chatapi_bus_delivery_lag_seconds",
            "From a doorbell (a commit on any process) to delivery to this process's sockets.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.pool_in_use = Gauge(
            "chatapi_db_pool_connections_in_use",
            "Database connections of the pool in use (PostgreSQL; 0 on SQLite).",
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "chatapi_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )

    def watch(self, hub: Hub, pool_in_use: Callable[[], int] | None = None) -> None:
        """Read the gauges from `hub` (and the pool) when scraped (nothing to keep in step)."""
        self.connected_sockets.set_function(lambda: len(hub.connections))
        self.online_users.set_function(hub.online_count)
        if pool_in_use is not None:
            self.pool_in_use.set_function(pool_in_use)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Labels are bounded: a route template (never the raw path, which may
        # carry ids or tokens), a known method, a status this server answers.
        if method not in hdrs.METH_ALL:
            method = "other"
        self.request_seconds.labels(route, method, str(status)).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The current values and their content type (OpenMetrics when the scraper asks)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
