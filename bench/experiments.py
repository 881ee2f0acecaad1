"""Proposed server changes, tried without touching chatapi/: the server is started with
a monkeypatch applied, then the usual scenarios run against it.

    python -m bench.experiments hub      # fanout + connections, hub fast path
    python -m bench.experiments bcrypt   # login, bcrypt on its own niced pool

These are prototypes of the changes proposed in BENCHMARKS.md, written against
chatapi/hub.py and chatapi/users.py as they were when the benchmarks were written;
they rot when those files change. The real change belongs in chatapi/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
from collections import deque
from typing import Any

# The patches (run inside the server process)


def patch_hub() -> None:
    """No pump task per idle socket. A frame is written straight to the transport when
    nothing is queued for the socket and its write buffer is empty, encoded once per
    message; a pump task exists only while a backlog does; Events are created lazily."""
    from aiohttp import WSMsgType

    from chatapi import hub

    last: list[Any] = [None, b""]  # the last frame str and its UTF-8 bytes

    def __init__(self, ws, transport, user, limit, metrics=None):
        self.ws = ws
        self.transport = transport
        self.user_id = user["id"]
        self.username = user["username"]
        self.subscriptions = {}
        self.dropped = False
        self._limit = limit
        self._metrics = metrics
        self._frames = None
        self._room = None
        self._pump = None
        self._closing = None

    def start(self) -> None:
        pass

    def send(self, frame: str) -> None:
        if self.dropped:
            return
        frames = self._frames
        if not frames:
            transport, writer = self.transport, self.ws._writer
            if (
                transport is not None and writer is not None and not transport.is_closing()
                and transport.get_write_buffer_size() == 0
            ):
                if frame is not last[0]:
                    last[0], last[1] = frame, frame.encode()
                try:
                    writer._write_websocket_frame(last[1], WSMsgType.TEXT, 0)
                except (ConnectionError, RuntimeError):
                    pass
                return
            if frames is None:
                frames = self._frames = deque()
        if len(frames) >= self._limit:
            self._drop_as_slow("too slow: outgoing frames piled up")
            return
        frames.append(frame)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self.pump())

    async def send_paced(self, frame: str) -> None:
        while self._frames and len(self._frames) >= self._limit // 2 and not self.dropped:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        self.send(frame)

    async def pump(self) -> None:
        try:
            while self._frames and not self.dropped:
                frame = self._frames.popleft()
                if self._room is not None and len(self._frames) < self._limit // 2:
                    self._room.set()
                await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self.dropped = True
            if self._room is not None:
                self._room.set()
            self._closing = asyncio.create_task(self._close(code, reason))

    def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()

    cls = hub.Connection
    for name, value in (("__init__", __init__), ("start", start), ("send", send),
                        ("send_paced", send_paced), ("pump", pump), ("close", close),
                        ("stop", stop)):
        setattr(cls, name, value)
    if not hasattr(cls, "_drop_as_slow"):
        cls._drop_as_slow = lambda self, reason: self.close(1008, reason)


def patch_bcrypt() -> None:
    """bcrypt on a pool of its own: one thread per core the process may use, at nice 19,
    so that the event loop's and aiosqlite's threads get the core whenever they wake."""
    from chatapi import users

    def lower_priority() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)

    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(os.sched_getaffinity(0)),
        initializer=lower_priority,
        thread_name_prefix="bcrypt",
    )

    async def in_executor(func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, func, *args)

    users.in_executor = in_executor


PATCHES = {"hub": patch_hub, "bcrypt": patch_bcrypt}
SCENARIOS = {"hub": ("fanout", "connections"), "bcrypt": ("login",)}


def serve(patch: str, argv: list[str]) -> None:
    PATCHES[patch]()
    from chatapi.cli import main

    sys.argv = ["chatapi", *argv]
    main()


def run(patch: str) -> None:
    import importlib
    import time

    from . import common
    from .report import render

    original = common.chatapi_server

    def patched(db_path: str, **kwargs: Any) -> common.Server:
        server = original(db_path, **kwargs)
        at = server.argv.index("-m")
        server.argv[at : at + 2] = ["-m", "bench.experiments", "serve", patch]
        server.name = f"chatapi+{patch}"
        return server

    common.pin_generator()
    outcomes = []
    t0 = time.perf_counter()
    for name in SCENARIOS[patch]:
        module = importlib.import_module(f"bench.{name}")
        module.chatapi_server = patched  # each scenario imported the name itself
        print(f"== {name} (server patched: {patch})", flush=True)
        started = time.perf_counter()
        outcome = asyncio.run(module.run())
        outcome.seconds = time.perf_counter() - started
        outcome.notes.append(f"EXPERIMENT: server monkeypatched with bench.experiments {patch}")
        outcomes.append(outcome)
    print(render(outcomes, f"python -m bench.experiments {patch}",
                 time.strftime("%Y-%m-%d %H:%M %Z"), time.perf_counter() - t0))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 2 and sys.argv[1] in PATCHES:
        run(sys.argv[1])
    else:
        sys.exit(f"usage: python -m bench.experiments {{{','.join(PATCHES)}}}")
