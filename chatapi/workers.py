"""`chatapi --workers N`: N server processes on one port (SO_REUSEPORT), one PostgreSQL database.

The parent only supervises: it starts the workers (the first one picks the port
when it is 0), prints the URL, passes SIGTERM/SIGINT on, and starts a worker
again if one dies. Each worker is a whole `chatapi` serving its own sockets; the
database and its notifications join them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
RESTART_DELAY = 1.0


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM when the supervisor dies, even by SIGKILL, instead of
    # serving on as an orphan nobody supervises. Elsewhere a no-op.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """A worker process could not be started."""


class Worker:
    """One `python -m chatapi --reuse-port` child."""

    def __init__(self, number: int, env: dict[str, str]) -> None:
        self.number = number
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, port: int) -> str:
        """Start it; its URL (the first line it prints) once it listens."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatapi", "--reuse-port", "--port", str(port),
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            preexec_fn=_die_with_parent,  # one prctl call: safe between fork and exec
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = (await self.proc.stdout.readline()).decode().strip()
        except TimeoutError:
            line = ""
        if not line:
            await self.stop()
            raise WorkerError(f"worker {self.number} did not start (see its log above)")
        self._drain = asyncio.create_task(self._read_rest(self.proc.stdout))
        return line

    @staticmethod
    async def _read_rest(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()


async def run_workers(count: int, host: str, port: int, db: str) -> None:
    """Serve from `count` worker processes until SIGINT or SIGTERM."""
    env = {**os.environ, "CHATAPI_DB": db, "CHATAPI_HOST": host}
    workers = [Worker(n + 1, env) for n in range(count)]
    url = await workers[0].start(port)
    port = int(url.rsplit(":", 1)[1])
    try:
        await asyncio.gather(*(worker.start(port) for worker in workers[1:]))
    except WorkerError:
        await asyncio.gather(*(worker.stop() for worker in workers))
        raise
    print(url, flush=True)
    log.info("%d workers serving on port %d", count, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def supervise(worker: Worker) -> None:
        while not stop.is_set():
            assert worker.proc is not None
            code = await worker.proc.wait()
            if stop.is_set():
                return
            log.warning("worker %d exited with %s; starting it again", worker.number, code)
            await asyncio.sleep(RESTART_DELAY)
            with contextlib.suppress(WorkerError):
                await worker.start(port)

    supervisors = [asyncio.create_task(supervise(worker)) for worker in workers]
    await stop.wait()
    log.info("stopping %d workers", count)
    await asyncio.gather(*(worker.stop() for worker in workers))
    for task in supervisors:
        task.cancel()
