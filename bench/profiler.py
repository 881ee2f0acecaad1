"""Optional sampling profiles of the server (`--profile`): py-spy on the server's pid.

py-spy runs on the generator's core and writes collapsed stacks; `summarize` turns
them into where the time goes: per thread, the hottest functions by own samples
and by inclusive samples. Profiled runs are slower: their figures are not the
table's (the table comes from a run without --profile).
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .common import RESULTS

ENABLED = False


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profile(pid: int, name: str, rate: int = 200) -> Iterator[None]:
    """Sample `pid` while the block runs (when profiling is enabled); then summarize."""
    exe = py_spy()
    if not ENABLED or exe is None:
        if ENABLED:
            print("  (py-spy not found: `pip install py-spy` into the venv)", flush=True)
        yield
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"profile-{name}.collapsed"
    proc = subprocess.Popen(
        [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "--threads", "--nonblocking",
         "--subprocesses",  # `chatapi --workers N`: the supervisor's workers
         "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if raw.exists():
            text = summarize(raw.read_text())
            (RESULTS / f"profile-{name}.txt").write_text(text)
            print(text, flush=True)
        else:
            print(f"  py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", flush=True)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


# Functions whose own samples may be a thread waiting for work: py-spy's idle detection
# does not see those as idle on this machine. A sample is set apart only when its line
# is the waiting call (aiosqlite's thread also runs C calls such as fetchmany() from
# the same function: those samples are work).
WAITING_FUNCTIONS = {"_connection_worker_thread", "_worker", "EpollSelector.select",
                     "Condition.wait", "Thread.join", "_wait_for_tstate_lock"}
WAITING_CALLS = (".get(", ".poll(", ".select(", "waiter.acquire(", "lock.acquire(")


def _source_line(path: str, lineno: int) -> str:
    candidates = [Path(path)] + [Path(p) / path for p in sys.path if p]
    for candidate in candidates:
        if candidate.is_file():
            return linecache.getline(str(candidate), lineno)
    return ""


def _is_waiting(frame: str) -> bool:
    m = _FRAME.match(frame)
    if not m or m.group("func") not in WAITING_FUNCTIONS or not m.group("line"):
        return False
    line = _source_line(m.group("file"), int(m.group("line")))
    return any(call in line for call in WAITING_CALLS)


def summarize(collapsed: str, top: int = 15) -> str:
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    main_own: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    busy = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        thread = re.sub(r"^thread \(\d+\): ", "", thread)
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        leaf = _short(frames[-1])
        if _is_waiting(frames[-1]):
            idle[thread] += count
            continue
        busy += count
        threads[thread] += count
        own[leaf] += count
        if thread == "MainThread":
            main_own[leaf] += count
        for f in {_short(f) for f in frames}:
            inclusive[f] += count
    if not busy:
        return "no busy samples\n"

    def share(c: int) -> str:
        return f"{100 * c / busy:5.1f}%"

    lines = [
        (f"busy samples: {busy} (percentages below are of these); samples of threads "
        f"waiting for work, set apart: {sum(idle.values())}"),
        "",
        "busy samples by thread:",
    ]
    lines += [f"  {share(c)}  {t}" for t, c in threads.most_common()]
    lines += ["", "own time (the function itself; C calls and syscalls count to their caller):"]
    lines += [f"  {share(c)}  {f}" for f, c in own.most_common(top)]
    if main_own and len(threads) > 1:
        lines += ["", "own time on the event loop's thread (MainThread):"]
        lines += [f"  {share(c)}  {f}" for f, c in main_own.most_common(top)]
    lines += ["", "inclusive time (the function and what it calls):"]
    lines += [f"  {share(c)}  {f}" for f, c in inclusive.most_common(top + 12)]
    return "\n".join(lines) + "\n"


def enable() -> None:
    global ENABLED
    ENABLED = True
    os.environ.setdefault("PYSPY_QUIET", "1")
