"""Scenario 1, fan-out: one chat, N subscribers, one sender at a fixed rate.

The servers (the bare broadcast, the FastAPI peer, ChatAPI) run side by side, each
with its N subscribers connected, and the measurement windows alternate between them
(bare, peer, ChatAPI, bare, ...), so that a burst of other people's load on this
shared machine does not favour one. Every figure is the best window of each side
(noise only ever makes a window worse).

Against ChatAPI every subscriber socket joins chat 1 (`{"type": "join"}`); the subscriber
sockets belong to users of 32 sockets each (ChatAPI's per-user socket limit); against the
bare broadcast server every connected socket is a subscriber. The sender is subscribed
too (ChatAPI subscribes a socket to the chat it posts in), so each message is delivered
N + 1 times by both servers. Per delivered frame: server CPU (all threads, from
/proc/<pid>/task/*/schedstat) over the window; latency from the send to the arrival at
the generator of every copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from dataclasses import dataclass, field

from . import common, profiler
from .common import (
    CHATAPI_KINDS,
    HOST,
    SOCKETS_PER_USER,
    Meter,
    Outcome,
    Row,
    Server,
    Target,
    baseline_server,
    commit_floor,
    peer_server,
    percentile,
    sleep_until,
    temp_dir,
    token,
    users_for,
)
from .wsclient import WSClient, abort_all, connect, connect_many

PADDING = "x" * 60  # a message of about 70 characters


def frame(seq: int) -> bytes:
    return json.dumps({"chat_id": 1, "text": f"bench#{seq}# {PADDING}"}).encode()


@dataclass
class Side:
    """One server with its subscribers and sender."""

    kind: str
    server: Server
    sent: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    expected: int = 0
    joined: int = 0
    errors: list[str] = field(default_factory=list)  # error frames the server sent
    seq: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    clients: list[WSClient] = field(default_factory=list)
    sender: WSClient | None = None
    sender_port: int = 0  # the sender on another process of the same database (0: the same)
    chatapi: bool = True  # speaks ChatAPI's protocol (False: a baseline's bare one)
    setup_s: float = 0.0

    def on_frame(self, client: WSClient, payload: bytes, now: float) -> None:
        i = payload.find(b"bench#")
        if i < 0:
            if b'"joined"' in payload:
                self.joined += 1
            elif b'"error"' in payload:
                self.errors.append(payload[:200].decode(errors="replace"))
            return
        sent = self.sent.get(int(payload[i + 6 : payload.find(b"#", i + 6)]))
        if sent is None:
            return  # a warm-up message, or one of an earlier window
        self.latencies.append(now - sent)
        self.delivered += 1
        if self.delivered >= self.expected:
            self.done.set()

    async def setup(self, n: int) -> None:
        t = time.perf_counter()
        if self.chatapi:
            # user 1 sends; users 2, 3, ... hold SOCKETS_PER_USER subscriber sockets each
            sub_paths = [f"/chats/ws?token={token(2 + i // SOCKETS_PER_USER)}" for i in range(n)]
            send_path = f"/chats/ws?token={token(1)}"
        else:
            sub_paths = ["/ws"] * n
            send_path = "/ws"
        subscribers = await connect_many(HOST, self.server.port, sub_paths, self.on_frame)
        self.clients = subscribers
        self.sender = await connect(
            HOST, self.sender_port or self.server.port, send_path, self.on_frame
        )
        self.clients.append(self.sender)
        if self.chatapi:
            join = json.dumps({"type": "join", "chat_id": 1}).encode()
            for client in subscribers:
                client.send_text(join)
            deadline = time.perf_counter() + 60
            while self.joined < n and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            if self.joined < n:
                closed = [c.close_code for c in subscribers if c.close_code is not None]
                raise RuntimeError(
                    f"only {self.joined} of {n} subscribers joined; error frames: "
                    f"{self.errors[:3]}; closed sockets: {len(closed)} {sorted(set(closed))[:5]};"
                    f" server stderr: {self.server.stderr_tail(1000)!r}"
                )
        self.setup_s = time.perf_counter() - t

    async def warm_up(self) -> None:
        # The sender becomes a subscriber; first-use costs are paid.
        assert self.sender is not None
        for seq in (-1, -2, -3):
            self.sender.send_text(frame(seq))
            await asyncio.sleep(0.2)

    async def window(self, n: int, rate: float, seconds: float, name: str) -> dict:
        assert self.sender is not None
        messages = max(1, round(rate * seconds))
        self.sent.clear()
        self.latencies = []
        self.delivered = 0
        self.expected = messages * (n + 1)
        self.done.clear()
        first = self.seq
        self.seq += messages
        with profiler.profile(self.server.pid, name):
            meter = Meter(self.server)
            start = time.perf_counter()
            for k in range(messages):
                await sleep_until(start + k / rate)
                self.sent[first + k] = time.perf_counter()
                self.sender.send_text(frame(first + k))
            try:
                await asyncio.wait_for(self.done.wait(), timeout=10)
            except TimeoutError:
                pass
            meter.stop()
        return {
            "messages": messages,
            "delivered": self.delivered,
            "expected": self.expected,
            "closed_sockets": sum(1 for c in self.clients if c.close_code is not None),
            "cpu_per_frame_us": 1e6 * meter.server_cpu / max(1, self.delivered),
            "loop_cpu_per_message_us": 1e6 * meter.loop_cpu / messages,
            "other_cpu_per_message_us": 1e6 * (meter.server_cpu - meter.loop_cpu) / messages,
            "p50_ms": 1e3 * percentile(self.latencies, 50),
            "p99_ms": 1e3 * percentile(self.latencies, 99),
            **meter.as_dict(),
        }


def best(windows: list[dict], key: str) -> dict:
    return min(windows, key=lambda w: w[key])


# Each N with a rate at which the generator keeps up with the N + 1 deliveries.
PLAN = [(10, 200.0, 3.0), (100, 50.0, 3.0), (200, 50.0, 3.0), (1000, 10.0, 3.0), (5000, 2.0, 4.0)]
QUICK_PLAN = [(10, 200.0, 1.5), (100, 50.0, 1.5), (1000, 10.0, 2.0)]
KINDS = ("bare", "peer", "chatapi")
NAMES = {"bare": "bare broadcast", "peer": "FastAPI peer", "chatapi": "ChatAPI",
         "experiment": "ChatAPI with the experiment"}


async def point(
    n: int, rate: float, seconds: float, rounds: int, target: Target | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, list[dict]]:
    """Alternating windows of every server in `kinds` at one N; the windows of each."""
    target = target or Target()
    with temp_dir("bench-fanout-") as d, contextlib.ExitStack() as stack:
        database = target.database(d, users=1 + users_for(n), chats=1)
        starters = {"bare": lambda: baseline_server("broadcast"), "peer": peer_server,
                    "chatapi": lambda: target.server(database),
                    "experiment": lambda: target.experiment(database)}
        sides = [
            Side(kind, stack.enter_context(starters[kind]()), chatapi=kind in CHATAPI_KINDS)
            for kind in kinds
        ]
        return await alternate(sides, n, rate, seconds, rounds)


async def alternate(
    sides: list[Side], n: int, rate: float, seconds: float, rounds: int
) -> dict[str, list[dict]]:
    """Each side's N subscribers and sender, a warm-up, then `rounds` windows of each
    side in turn; the windows of each kind. The sides' sockets are closed after."""
    try:
        for side in sides:
            await side.setup(n)
            await side.warm_up()
        await asyncio.sleep(1.0)
        windows: dict[str, list[dict]] = {side.kind: [] for side in sides}
        for r in range(rounds):
            for side in sides:
                name = re.sub(r"[^\w]+", "-", f"fanout-{side.kind}-{n}")
                w = await side.window(n, rate, seconds, name if r == 0 else name + f"-{r}")
                w["setup_s"] = side.setup_s
                windows[side.kind].append(w)
                print(
                    f"  fanout N={n} {side.kind:7s}: {w['cpu_per_frame_us']:5.1f} µs/frame,"
                    f" p50 {w['p50_ms']:6.1f} ms, p99 {w['p99_ms']:6.1f} ms, "
                    f"{w['delivered']}/{w['expected']} delivered; server "
                    f"{w['server_util']:.0%}, generator {w['generator_util']:.0%}, "
                    f"others {w['other_load']:.2f} cores",
                    flush=True,
                )
        return windows
    finally:
        for side in sides:
            abort_all(side.clients)


def floor_note(n: int, ours: dict, bare: dict, floor_us: float) -> str:
    """Where ChatAPI's extra CPU per message goes, against one durable commit alone."""
    frames = n + 1
    extra = (ours["cpu_per_frame_us"] - bare["cpu_per_frame_us"]) * frames
    budget = 0.15 * bare["cpu_per_frame_us"] * frames
    reach = ("out of reach while each message is committed on its own"
             if floor_us >= budget else "within reach of the commit alone")
    ours_us = ours["loop_cpu_per_message_us"] + ours["other_cpu_per_message_us"]
    return (
        f"per message ChatAPI used {ours_us:.0f} µs of CPU (event loop "
        f"{ours['loop_cpu_per_message_us']:.0f} µs, database thread "
        f"{ours['other_cpu_per_message_us']:.0f} µs), the bare broadcast "
        f"{bare['loop_cpu_per_message_us']:.0f} µs: {abs(extra):.0f} µs "
        f"{'more' if extra >= 0 else 'less'} per message, over {frames} frames; "
        f"one durable commit alone costs {floor_us:.0f} µs "
        f"(bench/floor.py, this run): the target allows {budget:.0f} µs more per message "
        f"at this N, {reach}"
    )


def rows_for(label: str, n: int, windows: dict[str, list[dict]], floor_us: float) -> list[Row]:
    """The rows of one N: ChatAPI against the bare broadcast (targets), the peer, and
    (with --experiment) the patched ChatAPI against the one as committed."""
    rows = []
    for other, targets in (("bare", True), ("peer", False), ("experiment", False)):
        if other not in windows or "chatapi" not in windows:
            continue
        for metric, key, unit, target, limit, sensitive in (
            ("server CPU per delivered frame", "cpu_per_frame_us", "µs", "≤ 1.15×", 1.15, False),
            ("p99 delivery latency", "p99_ms", "ms", "≤ 1.2×", 1.2, True),
        ):
            ours, base = best(windows["chatapi"], key), best(windows[other], key)
            notes = [
                f"{NAMES[kind]}: only {w['delivered']} of {w['expected']} frames arrived"
                for kind in ("chatapi", other)
                for w in windows[kind]
                if w["delivered"] < w["expected"]
            ]
            ratio = ours[key] / base[key]
            # A burst of N frames leaves the server as fast as it can write them and is
            # drained by the generator as fast as it can read them; when the generator
            # spends as much CPU per message as the server, the latency is its draining.
            limited = [
                NAMES[kind] for kind, w in (("chatapi", ours), (other, base))
                if sensitive and w["generator_cpu_s"] >= w["server_cpu_s"]
            ]
            if limited:
                notes.append(
                    f"latency of {' and '.join(limited)} measured while the generator used as "
                    "much CPU per message as the server: it drains each burst no faster than "
                    "the server sends it, so that latency is partly the generator's"
                )
            if other == "bare" and not sensitive and not math.isnan(floor_us):
                notes.append(floor_note(n, ours, base, floor_us))
            if other == "experiment":  # the experiment is the one measured
                ours, base = base, ours
            suffix = {"bare": "", "peer": ", vs the peer",
                      "experiment": f", experiment {common.EXPERIMENT} vs as committed"}[other]
            rows.append(Row(
                label + suffix, metric, ours[key], base[key],
                ours[key] / base[key], target if targets else "—",
                (ratio <= limit) if targets else None, unit=unit,
                baseline_name=NAMES["chatapi" if other == "experiment" else other],
                server_util=ours["server_util"], generator_util=ours["generator_util"],
                baseline_server_util=base["server_util"],
                baseline_generator_util=base["generator_util"],
                other_load=max(ours["other_load"], base["other_load"]),
                sensitive=sensitive, notes=notes, generator_limited=bool(limited),
            ))
    return rows


async def run(
    quick: bool = False, target: Target | None = None,
    plan: list[tuple[int, float, float]] | None = None, rounds: int | None = None,
    kinds: tuple[str, ...] | None = None,
) -> Outcome:
    """Every N of the plan (or `plan`: (N, messages per second, window seconds)),
    against the servers in `kinds` (the bare broadcast, the peer, ChatAPI)."""
    out = Outcome("fanout")
    if plan is None:
        plan = QUICK_PLAN if quick else PLAN
        if quick:
            out.notes.append("quick run: N=200 and N=5000 skipped, one short window per side")
    rounds = rounds or (1 if quick else 3)
    if kinds is None:
        kinds = KINDS + (("experiment",) if common.EXPERIMENT else ())
    with temp_dir("bench-floor-") as d:
        floor_us = commit_floor(d)
    out.raw["commit_floor_us"] = floor_us
    for n, rate, seconds in plan:
        windows = await point(n, rate, seconds, rounds, target, kinds)
        out.raw[f"n{n}"] = windows
        out.rows += rows_for(f"1. fan-out N={n}, {rate:g} msg/s", n, windows, floor_us)
    return out
