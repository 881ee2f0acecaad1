"""A real ChatAPI server for other projects' tests: `with ChatServer() as server: ...`.

The server runs in a background thread with its own event loop, on 127.0.0.1 and a free
port, over a temporary database unless told otherwise. It works the same from
synchronous tests and from asynchronous ones (whose loop it never touches). Starting
one takes milliseconds, so a test can have its own; `seed()` fills it with users,
chats and messages (fixed timestamps allowed) and hands out the users' tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from . import db, security, users
from .app import create_app
from .client import error_of_answer
from .config import Config
from .keys import CONFIG, DB, SECRET
from .runner import CappedSite, make_runner
from .validation import ApiError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0  # seconds a call into the server's thread may take (generous: slow CI)
PASSWORD = "password-123"  # of every test user not given one
T = TypeVar("T")
_numbers = itertools.count(1)


class SeedError(ValueError):
    """Seed data the server would not accept, or that names something not in the seed."""


@dataclass
class Seeded:
    """What seed() stored: users by username (with "token" and "password"), chats by
    name, and messages in the order given (each as the history shows it)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    chats: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)


class ChatServer:
    """A ChatAPI server in a background thread.

    Keyword arguments are Config settings, e.g. ``ChatServer(bcrypt_rounds=4)``;
    ``db_path`` defaults to a file in a temporary directory removed on stop.
    """

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        self._tempdir: str | None = None
        if config is None:
            settings.setdefault("host", "127.0.0.1")
            settings.setdefault("port", 0)
            if "db_path" not in settings:
                self._tempdir = tempfile.mkdtemp(prefix="chatapi-")
                settings["db_path"] = str(Path(self._tempdir) / "chat.db")
            config = Config(**settings)
        elif settings:
            config = config.replace(**settings)
        self.config = config
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: web.Application | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base HTTP URL, e.g. http://127.0.0.1:41234."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The websocket endpoint, e.g. ws://127.0.0.1:41234/chats/ws (add ?token=...)."""
        return "ws" + self.url[len("http"):] + "/chats/ws"

    def start(self) -> ChatServer:
        """Start serving; returns once the port is bound (raises if the start failed)."""
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        self._thread = threading.Thread(target=self._run, name="chatapi-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("the ChatAPI server did not start in time")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Shut down gracefully (sockets closed with 1001) and remove the temporary database."""
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._thread = None
        self.port = None
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def register(
        self, username: str | None = None, password: str = PASSWORD, email: str | None = None
    ) -> dict[str, Any]:
        """Register a user through POST /auth/reg -> {id, username, token, email, password}.

        The email defaults to one made from the username. A refusal raises
        chatapi.client.ChatAPIError with the server's status and reason.
        """
        username = username or f"user-{next(_numbers)}"
        email = email or email_for(username)
        body = {"email": email, "username": username, "password": password}
        request = urllib.request.Request(
            self.url + "/auth/reg",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as response:
                user = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise error_of_answer(exc.code, exc.read(), exc.reason) from None
        return {**user, "email": email, "password": password}

    def seed(
        self,
        *,
        users: Sequence[str | Mapping[str, Any]] = (),
        chats: Sequence[str | Mapping[str, Any]] = (),
        messages: Sequence[Mapping[str, Any]] = (),
    ) -> Seeded:
        """Store users, chats and messages at once (all or nothing), and issue tokens.

        users: "alice" or {"username", "email"?, "password"?};
        chats: "general" or {"name", "owner"?} (owner: a seeded username, else the first);
        messages: {"chat", "user", "text", "created_at"?, "nonce"?}, naming a seeded chat
        and user; created_at is ISO 8601 with a time zone ("2026-01-01T09:00:00Z").
        Seeded messages are stored, not broadcast: seed before clients join.
        """
        return self._call(self._seed(users, chats, messages))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        if self._loop is None or self._app is None:
            coro.close()
            raise RuntimeError("the server is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    async def _seed(
        self,
        users_given: Sequence[str | Mapping[str, Any]],
        chats_given: Sequence[str | Mapping[str, Any]],
        messages_given: Sequence[Mapping[str, Any]],
    ) -> Seeded:
        app = self._app
        assert app is not None
        user_rows, passwords = await _user_rows(users_given, app[CONFIG].bcrypt_rounds)
        usernames = [username for _, username, _ in user_rows]
        chat_rows = _chat_rows(chats_given, usernames)
        message_rows = _message_rows(messages_given, usernames, [name for name, _ in chat_rows])
        try:
            stored_users, stored_chats, stored_messages = await db.insert_seed(
                app[DB], user_rows, chat_rows, message_rows
            )
        except db.Conflict as exc:
            if exc.field == "nonce":
                raise SeedError("messages: a user used the same nonce twice") from None
            raise SeedError(f"users: {exc}") from None
        config, secret = app[CONFIG], app[SECRET]
        seeded = Seeded()
        for user, password in zip(stored_users, passwords):
            token = security.issue_token(user["id"], user["token_version"], secret,
                                         config.token_ttl)
            seeded.users[user["username"]] = {
                **users.user_json(user), "token": token, "password": password,
            }
        seeded.chats = {chat["name"]: chat for chat in stored_chats}
        seeded.messages = [db.public_message(message) for message in stored_messages]
        return seeded

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            runner = loop.run_until_complete(self._setup())
        except BaseException as exc:  # noqa: BLE001 (re-raised by start() in the caller's thread)
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _setup(self) -> web.AppRunner:
        self._app = create_app(self.config)
        runner = make_runner(self.config, self._app)
        await runner.setup()
        try:
            await CappedSite(runner, self.config).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        return runner

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def email_for(username: str) -> str:
    """A test email made from a username: "Named User" -> "named-user@example.com"."""
    local = re.sub(r"[^a-z0-9._-]+", "-", username.casefold()).strip("-.") or "user"
    return f"{local}@example.com"


async def _user_rows(
    given: Sequence[str | Mapping[str, Any]], rounds: int
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(email, username, password hash) of each seeded user, checked like a registration;
    and their passwords."""
    rows, passwords = [], []
    for n, spec in enumerate(given):
        fields = {"username": spec} if isinstance(spec, str) else dict(spec)
        fields.setdefault("password", PASSWORD)
        if isinstance(fields.get("username"), str):
            fields.setdefault("email", email_for(fields["username"]))
        try:
            email, username, password = users.registration_fields(fields)
        except ApiError as exc:
            raise SeedError(f"users[{n}]: {exc.message}") from None
        password_hash = await users.in_executor(security.hash_password, password, rounds)
        rows.append((email, username, password_hash))
        passwords.append(password)
    return rows, passwords


def _chat_rows(
    given: Sequence[str | Mapping[str, Any]], usernames: list[str]
) -> list[tuple[str, int]]:
    """(name, owner's index in usernames) of each seeded chat."""
    rows: list[tuple[str, int]] = []
    for n, spec in enumerate(given):
        fields = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = fields.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SeedError(f"chats[{n}]: a chat needs a name")
        if any(name.strip() == other for other, _ in rows):
            raise SeedError(f"chats[{n}]: two chats named {name.strip()!r} in one seed")
        if not usernames:
            raise SeedError(f"chats[{n}]: a chat needs an owner: seed a user too")
        owner = _lookup(usernames, fields.get("owner", usernames[0]), f"chats[{n}].owner", "user")
        rows.append((name.strip(), owner))
    return rows


def _message_rows(
    given: Sequence[Mapping[str, Any]], usernames: list[str], chat_names: list[str]
) -> list[tuple[int, int, str, str | None, str | None]]:
    """(chat index, user index, text, nonce, created_at) of each seeded message."""
    rows = []
    for n, spec in enumerate(given):
        text = spec.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SeedError(f"messages[{n}]: text must be a string, not only white space")
        rows.append((
            _lookup(chat_names, spec.get("chat"), f"messages[{n}].chat", "chat"),
            _lookup(usernames, spec.get("user"), f"messages[{n}].user", "user"),
            text,
            spec.get("nonce"),
            _timestamp(spec.get("created_at"), f"messages[{n}].created_at"),
        ))
    return rows


def _lookup(names: list[str], name: Any, where: str, kind: str) -> int:
    if name not in names:
        raise SeedError(f"{where}: no {kind} {name!r} in this seed")
    return names.index(name)


def _timestamp(value: Any, where: str) -> str | None:
    """The server's own timestamp format (UTC, milliseconds) of an ISO 8601 time."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        moment = None
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise SeedError(f"{where}: expected an ISO 8601 time with a time zone, got {value!r}")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
