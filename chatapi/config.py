"""Settings: defaults, the CHATAPI_* environment, and their validation."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

REGISTRATION_MODES = ("open", "invite", "closed")


class ConfigError(ValueError):
    """A setting is invalid; the message is one line naming the setting the user set."""


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
    # Teams: who may register ("open", "invite" or "closed"), whether members (not
    # only admins) create invite codes, whether other users' emails are shown.
    registration: str = "open"
    member_invites: bool = False
    show_emails: bool = True

    def __post_init__(self) -> None:
        for field, value in dataclasses.asdict(self).items():
            check_value(field, value, label=field)
        if self.db_path.startswith(("postgresql:", "postgres:")):
            check_postgres_url(self.db_path)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _whole(low: int, high: int | None = None) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        return is_int and value >= low and (high is None or value <= high)

    return ok


def _positive_number(value: Any) -> bool:
    # nan and inf are numbers to float(), but no sensible rate or interval.
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


_POSITIVE_WHOLE = ("a positive whole number", _whole(1))
_POSITIVE_SECONDS = ("a positive number of seconds", _positive_number)
_BOOLEAN = ("true or false (also yes/no, on/off, 1/0)", lambda value: isinstance(value, bool))

# field -> (what it must be, in plain words; the check)
REQUIREMENTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "port": ("a whole number from 0 to 65535", _whole(0, 65535)),
    "db_path": ("a file path, :memory: or a postgresql:// URL", lambda value: isinstance(value, str) and value != ""),
    "token_ttl": (
        "a positive duration: seconds, or a whole number with s, m, h or d (like 12h)",
        _whole(1),
    ),
    "expose_password_hash": _BOOLEAN,
    "heartbeat": _POSITIVE_SECONDS,
    "bcrypt_rounds": ("a whole number from 4 to 31", _whole(4, 31)),
    "max_body": _POSITIVE_WHOLE,
    "max_frame": _POSITIVE_WHOLE,
    "max_text": _POSITIVE_WHOLE,
    "outbox_limit": _POSITIVE_WHOLE,
    "presence_interval": _POSITIVE_SECONDS,
    "access_log": _BOOLEAN,
    "metrics": _BOOLEAN,
    "login_failures_per_account": _POSITIVE_WHOLE,
    "login_failures_per_address": _POSITIVE_WHOLE,
    "login_window": _POSITIVE_SECONDS,
    "frames_per_second": ("a positive number", _positive_number),
    "frame_burst": _POSITIVE_WHOLE,
    "max_sockets_per_user": _POSITIVE_WHOLE,
    "idle_timeout": _POSITIVE_SECONDS,
    "max_connections": ("0 (automatic) or a positive whole number", _whole(0)),
    "registration": (
        "one of " + ", ".join(REGISTRATION_MODES), lambda value: value in REGISTRATION_MODES
    ),
    "member_invites": _BOOLEAN,
    "show_emails": _BOOLEAN,
}


def check_value(field: str, value: Any, label: str, raw: str | None = None) -> None:
    """Raise ConfigError, naming `label`, when a field's value is not allowed."""
    if field == "secret":
        # The value is never echoed back.
        if value is not None and len(value.encode()) < 32:
            raise ConfigError(f"{label} must be at least 32 bytes long")
        return
    if field == "allowed_origins":
        for origin in value:
            try:
                normalised = normalise_origin(origin)
            except ValueError as exc:
                raise ConfigError(f"{label}: {exc}") from None
            if normalised != origin:
                raise ConfigError(f"{label}: write {origin!r} as a browser sends it: {normalised!r}")
        return
    requirement = REQUIREMENTS.get(field)
    if requirement is not None and not requirement[1](value):
        shown = raw if raw is not None else value
        raise ConfigError(f"{label} must be {requirement[0]}, got {shown!r}")


def check_postgres_url(url: str) -> None:
    """ConfigError (never echoing the password) unless `url` is a usable PostgreSQL URL."""
    setting = "CHATAPI_DB/--db"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError as exc:
        raise ConfigError(f"{setting} is not a valid PostgreSQL URL: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres") or not url.startswith(parts.scheme + "://"):
        raise ConfigError(f"{setting} must look like postgresql://user:password@host:port/dbname")
    if not parts.path.strip("/"):
        raise ConfigError(f"{setting} names no database: postgresql://user:password@host:port/dbname")


def shown_db(location: str) -> str:
    """The database setting as it may be logged: a URL's password replaced by ***."""
    parts = urlsplit(location) if "://" in location else None
    if parts is None or not parts.password:
        return location
    return location.replace(f":{parts.password}@", ":***@", 1)


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


def normalise_origin(text: str) -> str:
    """'https://chat.example.com[:port]' as a browser sends it in Origin (lower case).

    Anything else (no scheme, a path, a trailing slash, a default port) is refused
    with ValueError: such an entry would never match a browser's Origin header.
    """
    example = "write it as scheme://host[:port], like https://chat.example.com"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin: {example}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin: {example}")
    if parts.path or parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r} is not an origin (no path, not even a trailing /): {example}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} is not an origin (no user name): {example}")
    scheme = parts.scheme.lower()
    if port == {"http": 80, "https": 443}[scheme]:
        raise ValueError(f"{text!r} names the default port, which browsers leave out: "
                         f"drop ':{port}'")
    return f"{scheme}://{parts.netloc.lower()}"


def parse_origins(text: str) -> tuple[str, ...]:
    return tuple(normalise_origin(item) for item in parse_list(text))


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


# environment variable -> (Config field, parser)
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
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
    "CHATAPI_ALLOWED_ORIGINS": ("allowed_origins", parse_origins),
    "CHATAPI_LOGIN_FAILURES": ("login_failures_per_account", int),
    "CHATAPI_LOGIN_FAILURES_PER_ADDRESS": ("login_failures_per_address", int),
    "CHATAPI_FRAMES_PER_SECOND": ("frames_per_second", float),
    "CHATAPI_MAX_SOCKETS_PER_USER": ("max_sockets_per_user", int),
    "CHATAPI_REGISTRATION": ("registration", lambda text: text.strip().lower()),
    "CHATAPI_MEMBER_INVITES": ("member_invites", parse_bool),
    "CHATAPI_SHOW_EMAILS": ("show_emails", parse_bool),
    "CHATAPI_IDLE_TIMEOUT": ("idle_timeout", float),
    "CHATAPI_MAX_CONNECTIONS": ("max_connections", int),
}

# Config field -> command-line flag that sets it
FLAGS = {"host": "--host", "port": "--port", "db_path": "--db"}


def _parse(variable: str, field: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        if field == "secret":
            raise ConfigError(f"{variable} is invalid") from None
        if field == "allowed_origins":
            raise ConfigError(f"{variable}: {exc}") from None
        requirement = REQUIREMENTS.get(field)
        wanted = requirement[0] if requirement else str(exc)
        raise ConfigError(f"{variable} must be {wanted}, got {raw!r}") from None


def from_env(environ: Mapping[str, str] = os.environ, **overrides: Any) -> Config:
    """Build a Config from CHATAPI_* variables; keyword overrides win (command-line flags).

    An invalid value raises ConfigError naming the variable or flag the user set.
    """
    values: dict[str, Any] = {}
    for variable, (field, parse) in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is None or (raw == "" and field != "secret"):
            continue
        values[field] = _parse(variable, field, parse, raw)
        check_value(field, values[field], variable, raw if field != "secret" else None)
    for field, value in overrides.items():
        if value is not None:
            values[field] = value
            check_value(field, value, FLAGS.get(field, field))
    return Config(**values)
