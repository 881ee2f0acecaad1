"""Scenario 2, durable ingest: 64 senders over 16 chats, each waiting for its ack.

ChatAPI acknowledges a message by broadcasting it (after the commit, synchronous=FULL)
to the chat's subscribers, the sender included: 4 senders share each chat, so every
message is delivered 4 times. The baseline is the bare broadcast server with the same
16 chats of 4 sockets (each chat's sockets connect to a path of their own, and each
frame goes to the sockets of its path): the same 64 clients, each waiting for its
frame to come back before sending the next, the same 4 deliveries per message, no
auth, no database. The bare echo server (1 delivery per message) stays as a
reference row.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from . import common, profiler
from .common import (
    HOST,
    Meter,
    Outcome,
    Row,
    Server,
    Target,
    baseline_server,
    temp_dir,
)
from .common import token as make_token
from .wsclient import WSClient, abort_all, connect_many

SENDERS = 64
CHATS = 16
PADDING = b"y" * 60


class Sender:
    """One sender: sends its next message from the callback that sees its ack.

    No task and no future per round trip: the generator's cost per message is one
    parse and one write, so it stays ahead of the bare echo server as long as it can.
    """

    def __init__(self, client: WSClient, index: int) -> None:
        self.client = client
        self.index = index
        self.chat = index % CHATS + 1
        self.seq = 0
        self.acked = 0
        self.running = False
        self.idle: asyncio.Future[None] | None = None
        self.marker = b""

    def send_next(self) -> None:
        self.seq += 1
        self.marker = b'"s%d#%d#' % (self.index, self.seq)
        self.client.send_text(
            b'{"chat_id": %d, "text": "s%d#%d# %s"}' % (self.chat, self.index, self.seq, PADDING)
        )

    def start(self) -> asyncio.Future[None]:
        self.running = True
        self.idle = asyncio.get_running_loop().create_future()
        self.send_next()
        return self.idle

    def on_frame(self, payload: bytes) -> None:
        if self.marker and self.marker in payload:
            self.marker = b""
            self.acked += 1
            if self.running:
                self.send_next()
            elif self.idle is not None and not self.idle.done():
                self.idle.set_result(None)


def on_frame(client: WSClient, payload: bytes, now: float) -> None:
    # A frame can come before the connecting is done (presence of the users connected
    # so far, on a slow machine): no sender waits for it yet.
    if client.tag is not None:
        client.tag.on_frame(payload)  # type: ignore[attr-defined]


async def drive(senders: list[Sender], seconds: float) -> float:
    """Every sender loops for `seconds`; returns the wall time until the last ack."""
    start = time.perf_counter()
    idle = [s.start() for s in senders]
    await asyncio.sleep(seconds)
    for s in senders:
        s.running = False
    _, pending = await asyncio.wait(idle, timeout=30)
    if pending:
        waiting = [s.index for s in senders if s.idle in pending]
        closed = [s.index for s in senders if s.client.close_code is not None]
        for future in pending:
            future.cancel()
        raise RuntimeError(
            f"{len(waiting)} senders got no acknowledgement of their last message in 30 s "
            f"(senders {waiting[:10]}; closed sockets: {closed[:10]})"
        )
    return time.perf_counter() - start


async def open_side(server: Server, kind: str) -> list[Sender]:
    """The 64 senders on `server`: kind "bare" and "echo" are those baselines, any
    other kind a ChatAPI (e.g. "chatapi", "experiment")."""
    if kind == "bare":
        paths = [f"/ws/{i % CHATS + 1}" for i in range(SENDERS)]  # the sender's chat
    elif kind == "echo":
        paths = ["/ws"] * SENDERS
    else:
        paths = [f"/chats/ws?token={make_token(i + 1)}" for i in range(SENDERS)]
    clients = await connect_many(HOST, server.port, paths, on_frame)
    senders = [Sender(client, i) for i, client in enumerate(clients)]
    for client, sender in zip(clients, senders, strict=True):
        client.tag = sender
    return senders


async def window(server: Server, senders: list[Sender], seconds: float, name: str) -> dict:
    for s in senders:
        s.acked = 0
    with profiler.profile(server.pid, name):
        meter = Meter(server)
        await drive(senders, seconds)
        meter.stop()
    acked = sum(s.acked for s in senders)
    return {"acked": acked, "per_s": acked / meter.wall, **meter.as_dict()}


async def alternate(
    servers: dict[str, Server], warmup: float, seconds: float, rounds: int
) -> dict[str, list[dict]]:
    """The 64 senders on each server (a kind as in `open_side`), a warm-up, then
    `rounds` windows of `seconds` for each server in turn; the windows of each."""
    sides = {kind: await open_side(server, kind) for kind, server in servers.items()}
    windows: dict[str, list[dict]] = {kind: [] for kind in servers}
    try:
        await asyncio.sleep(1.2)  # presence of 64 users coming online is flushed
        for senders in sides.values():
            await drive(senders, warmup)
        for r in range(rounds):
            for kind, senders in sides.items():
                name = re.sub(r"[^\w]+", "-", f"ingest-{kind}") + (f"-{r}" if r else "")
                w = await window(servers[kind], senders, seconds, name)
                windows[kind].append(w)
                print(
                    f"  ingest {kind:7s}: {w['per_s']:6.0f}/s acknowledged, "
                    f"{1e6 / per_cpu_s(w):4.0f} µs CPU each; server "
                    f"{w['server_util']:.0%}, generator {w['generator_util']:.0%}, "
                    f"others {w['other_load']:.2f} cores",
                    flush=True,
                )
        return windows
    finally:
        for senders in sides.values():
            abort_all(s.client for s in senders)


KINDS = ("bare", "echo", "chatapi")
NAMES = {"bare": "bare broadcast, 16 chats × 4 sockets", "echo": "bare echo, round trips",
         "chatapi": "ChatAPI as committed"}


def per_cpu_s(w: dict) -> float:
    return w["acked"] / w["server_cpu_s"]


async def run(
    quick: bool = False, target: Target | None = None, seconds: float | None = None
) -> Outcome:
    """The servers side by side; windows alternate; each side's best window counts."""
    out = Outcome("ingest")
    target = target or Target()
    warmup, window_s, rounds = (0.5, 1.5, 1) if quick else (1.0, 2.5, 3)
    window_s = seconds or window_s
    kinds = KINDS + (("experiment",) if common.EXPERIMENT else ())
    with temp_dir("bench-ingest-") as d, contextlib.ExitStack() as stack:
        database = target.database(d, users=SENDERS, chats=CHATS)
        starters = {
            "bare": lambda: baseline_server("broadcast"), "echo": lambda: baseline_server("echo"),
            "chatapi": lambda: target.server(database),
            "experiment": lambda: target.experiment(database),
        }
        servers = {kind: stack.enter_context(starters[kind]()) for kind in kinds}
        windows = await alternate(servers, warmup, window_s, rounds)
    out.raw = windows
    label = "2. durable ingest, 64 senders / 16 chats"
    for kind, target_text, limit in (("bare", "≥ 0.6×", 0.6), ("echo", "— (reference)", None)):
        out.rows += ingest_rows(label, windows, kind, target_text, limit)
    if "experiment" in windows:
        out.rows += ingest_rows(label, windows, "experiment", "—", None)
    return out


def ingest_rows(
    label: str, windows: dict[str, list[dict]], kind: str, target_text: str, limit: float | None
) -> list[Row]:
    """ChatAPI against the `kind` server (the experiment: it against ChatAPI)."""
    rows = []
    subject = "chatapi"
    if kind == "experiment":
        subject, kind = "experiment", "chatapi"
    # Throughput, and the same per CPU-second of the server's one core: what each
    # would sustain with the core to itself (robust to other people's load).
    for metric, figure, unit_name in (
        ("acknowledged messages per second", lambda w: w["per_s"], "/s"),
        ("acknowledged messages per server CPU-second", per_cpu_s, "per CPU-second"),
    ):
        ours = max(windows[subject], key=figure)
        base = max(windows[kind], key=figure)
        ratio = figure(ours) / figure(base)
        notes = []
        if unit_name != "/s":
            notes.append(
                f"{1e6 / figure(ours):.0f} µs of server CPU per message (event loop "
                f"{1e6 * ours['server_loop_cpu_s'] / ours['acked']:.0f} µs), "
                f"{1e6 / figure(base):.0f} µs for the {NAMES[kind].split(',')[0]}"
            )
        suffix = {"bare": "", "echo": ", vs the echo",
                  "chatapi": f", experiment {common.EXPERIMENT} vs as committed"}[kind]
        rows.append(Row(
            label + suffix, metric, figure(ours), figure(base),
            ratio, target_text, (ratio >= limit) if limit else None, unit="/s",
            baseline_name=f"{NAMES[kind]}{'' if unit_name == '/s' else ' per CPU-second'}",
            server_util=ours["server_util"], generator_util=ours["generator_util"],
            baseline_server_util=base["server_util"],
            baseline_generator_util=base["generator_util"],
            other_load=max(ours["other_load"], base["other_load"]),
            sensitive=unit_name == "/s", notes=notes,
        ))
    return rows
