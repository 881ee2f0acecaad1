"""A real ChatAPI server for other projects' tests: `with ChatServer() as server: ...`.

The server runs in a background thread with its own event loop, on 127.0.0.1 and a free
port, over a temporary database unless told otherwise. It works the same from
synchronous tests and from asynchronous ones (whose loop it never touches).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from .config import Config
from .runner import CappedSite, make_runner

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0


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
        runner = make_runner(self.config)
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
