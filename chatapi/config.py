"""Settings: defaults, the CHATAPI_* environment, and their validation."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A setting is invalid; the message is one line naming the setting."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    db_path: str = "./chatapi.db"
    # None: generate a secret once and keep it in the database.
    secret: str | None = None
    token_ttl: int = 7 * 24 * 3600  # seconds
    expose_password_hash: bool = False
    heartbeat: float = 30.0  # seconds between websocket pings
    bcrypt_rounds: int = 12
    max_body: int = 64 * 1024  # bytes of an HTTP request body
    max_frame: int = 64 * 1024  # bytes of a websocket frame
    max_text: int = 5000  # characters of a message
    outbox_limit: int = 1024  # frames queued for one socket before it is dropped as too slow
    presence_interval: float = 1.0  # seconds between presence frames to a socket
    access_log: bool = True
    metrics: bool = True  # GET /metrics; off: the route does not exist
    # Origins (e.g. "https://chat.example.com") allowed besides the server's own,
    # for websocket handshakes and CORS.
    allowed_origins: tuple[str, ...] = ()
    login_failures_per_account: int = 5  # within login_window, then 429
    login_failures_per_address: int = 50
    login_window: float = 300.0  # seconds
    frames_per_second: float = 20.0  # sustained client frames per socket
    frame_burst: int = 60  # client frames a socket may send at once
    max_sockets_per_user: int = 32
    # Seconds an idle keep-alive connection, or a request whose headers or body have
    # not all arrived, is kept open.
    idle_timeout: float = 15.0
    max_connections: int = 0  # open HTTP connections; 0: the descriptor limit minus a reserve

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if not self.db_path:
            raise ConfigError("database path must not be empty")
        if self.secret is not None and len(self.secret.encode()) < 32:
            raise ConfigError("CHATAPI_SECRET must be at least 32 bytes long")
        if self.token_ttl <= 0:
            raise ConfigError("token lifetime must be positive")
        if self.heartbeat <= 0:
            raise ConfigError("heartbeat must be positive")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise ConfigError("bcrypt rounds must be between 4 and 31")
        for name in (
            "max_body", "max_frame", "max_text", "outbox_limit", "login_failures_per_account",
            "login_failures_per_address", "login_window", "frames_per_second", "frame_burst",
            "max_sockets_per_user",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")
        if not self.idle_timeout > 0:
            raise ConfigError("idle timeout must be positive")
        if self.max_connections < 0:
            raise ConfigError("max connections must be 0 (automatic) or positive")

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from '3600', '90s', '15m', '12h' or '7d'."""
    text = text.strip().lower()
    unit = 1
    if text and text[-1] in _DURATION_UNITS:
        unit = _DURATION_UNITS[text[-1]]
        text = text[:-1]
    if not text.isdigit():
        raise ValueError("expected seconds or a number with s, m, h or d")
    return int(text) * unit


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


# environment variable -> (Config field, parser)
ENVIRONMENT = {
    "CHATAPI_HOST": ("host", str),
    "CHATAPI_PORT": ("port", int),
    "CHATAPI_DB": ("db_path", str),
    "CHATAPI_SECRET": ("secret", str),
    "CHATAPI_TOKEN_TTL": ("token_ttl", parse_duration),
    "CHATAPI_EXPOSE_PASSWORD_HASH": ("expose_password_hash", parse_bool),
    "CHATAPI_HEARTBEAT": ("heartbeat", float),
    "CHATAPI_BCRYPT_ROUNDS": ("bcrypt_rounds", int),
    "CHATAPI_ACCESS_LOG": ("access_log", parse_bool),
    "CHATAPI_METRICS": ("metrics", parse_bool),
    "CHATAPI_ALLOWED_ORIGINS": ("allowed_origins", parse_list),
    "CHATAPI_LOGIN_FAILURES": ("login_failures_per_account", int),
    "CHATAPI_FRAMES_PER_SECOND": ("frames_per_second", float),
    "CHATAPI_MAX_SOCKETS_PER_USER": ("max_sockets_per_user", int),
    "CHATAPI_IDLE_TIMEOUT": ("idle_timeout", float),
    "CHATAPI_MAX_CONNECTIONS": ("max_connections", int),
}


def from_env(environ: Mapping[str, str] = os.environ, **overrides: Any) -> Config:
    """Build a Config from CHATAPI_* variables; keyword overrides win (command-line flags)."""
    values: dict[str, Any] = {}
    for variable, (field, parse) in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is None or (raw == "" and field != "secret"):
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            # The secret's value is never echoed back.
            shown = "" if field == "secret" else f" {raw!r}"
            raise ConfigError(f"{variable}{shown} is invalid: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
