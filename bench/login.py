"""Scenario 5, login storm: logins per second at the default bcrypt cost (12), while
/health keeps answering.

Capacity baseline, measured in the run: one bcrypt verification (chatapi.security's
own check_password, cost 12) timed in a subprocess on the server's core, median of 5.
The server is pinned to one core, so `cores` in the target is 1: the best a server on
that core can do is 1 ÷ (one verification time) logins per second.

Event-loop lag can only be seen approximately from outside: the generator requests
/health back to back (20 ms apart) during the storm; /health also reads the database
(one round trip to the aiosqlite thread), so its latency is an upper bound of the
loop's lag. The same probe on the idle server, just before, is shown for comparison,
and so is a second probe that touches no database (an unknown path, answered 404 by
the middlewares): closer to the loop's own lag.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiohttp

from . import profiler
from .common import (
    ROOT,
    SERVER_CORE,
    Meter,
    Outcome,
    Row,
    Server,
    chatapi_server,
    create_database,
    percentile,
    temp_dir,
)

CLIENTS = 16
NO_DB_PATH = "/bench-lag-probe"  # unknown route: a 404 from the middlewares, no database
RAMP = 2.0  # seconds before the first window: the first logins of 16 clients finish together
PASSWORD = "benchmark password"

_BCRYPT_PROBE = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from chatapi import security
password_hash = security.hash_password(sys.argv[2], 12)
times, cpu = [], []
for _ in range(5):
    t, c = time.perf_counter(), time.thread_time()
    assert security.check_password(sys.argv[2], password_hash)
    times.append(time.perf_counter() - t)
    cpu.append(time.thread_time() - c)
print(json.dumps({"hash": password_hash, "median": statistics.median(times), "all": times,
                  "cpu_median": statistics.median(cpu)}))
"""


def bcrypt_probe() -> dict:
    done = subprocess.run(
        ["taskset", "-c", str(SERVER_CORE), sys.executable, "-c", _BCRYPT_PROBE, str(ROOT),
         PASSWORD],
        capture_output=True,
        check=True,
        text=True,
    )
    return json.loads(done.stdout)


async def health_probe(
    http: aiohttp.ClientSession,
    server: Server,
    stop: asyncio.Event,
    interval: float = 0.02,
    path: str = "/health",
    status: int = 200,
) -> dict:
    times: list[float] = []
    failures = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with http.get(f"{server.url}{path}", timeout=aiohttp.ClientTimeout(5)) as r:
                await r.read()
                if r.status != status:
                    failures += 1
        except (TimeoutError, aiohttp.ClientError):
            failures += 1
        times.append(time.perf_counter() - t0)
        await asyncio.sleep(interval)
    return {
        "requests": len(times),
        "failures": failures,
        "p50_ms": 1e3 * percentile(times, 50),
        "p99_ms": 1e3 * percentile(times, 99),
        "max_ms": 1e3 * max(times),
    }


async def login_loop(
    http: aiohttp.ClientSession, server: Server, user: int, stop_at: float, results: dict
) -> None:
    """Log in again and again until `stop_at`; completion times go to results["done"]."""
    body = {"email": f"user{user}@example.com", "password": PASSWORD}
    while time.perf_counter() < stop_at:
        async with http.post(f"{server.url}/auth/login", json=body) as resp:
            await resp.read()
            finished = time.perf_counter()
            if resp.status == 200:
                results["done"].append(finished)
            else:
                results.setdefault("statuses", {}).setdefault(resp.status, 0)
                results["statuses"][resp.status] += 1


async def run(quick: bool = False) -> Outcome:
    """A ramp, then windows back to back: rates over all of them, lag from the least disturbed."""
    out = Outcome("login")
    windows_n, window_s = (1, 4.0) if quick else (3, 5.0)
    probe = bcrypt_probe()
    verify = probe["median"]
    capacity = 1 / verify  # cores = 1: the server's affinity
    print(f"  login: one bcrypt verification (cost 12) takes {1e3 * verify:.0f} ms "
          f"({1e3 * probe['cpu_median']:.0f} ms CPU) -> capacity {capacity:.2f} logins/s "
          "on one core", flush=True)
    windows = []
    with temp_dir("bench-login-") as d:
        db = str(d / "chat.db")
        create_database(db, users=CLIENTS, chats=1, password_hash=probe["hash"]).close()
        with chatapi_server(db, bcrypt_rounds=None) as server:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                stop = asyncio.Event()
                idle_task = asyncio.create_task(health_probe(http, server, stop))
                await asyncio.sleep(2.0)
                stop.set()
                idle = await idle_task

                results: dict = {"done": []}
                start = time.perf_counter()
                end = start + RAMP + windows_n * window_s
                storm = asyncio.gather(*(
                    login_loop(http, server, user, end, results)
                    for user in range(1, CLIENTS + 1)
                ))
                await asyncio.sleep(RAMP)
                overall = Meter(server)
                for i in range(windows_n):
                    stop = asyncio.Event()
                    with profiler.profile(server.pid, "login" + (f"-{i}" if i else "")):
                        meter = Meter(server)
                        w0 = time.perf_counter()
                        health_task = asyncio.create_task(health_probe(http, server, stop))
                        bare_task = asyncio.create_task(health_probe(
                            http, server, stop, path=NO_DB_PATH, status=404
                        ))
                        await asyncio.sleep(window_s)
                        stop.set()
                        w1 = time.perf_counter()
                        meter.stop()
                        health = await health_task
                        no_db = await bare_task
                    done = sum(1 for t in results["done"] if w0 <= t < w1)
                    w = {"logins": done, "per_s": done / (w1 - w0), "health": health,
                         "no_db": no_db, **meter.as_dict()}
                    windows.append(w)
                    print(
                        f"  login window {i + 1}: {w['per_s']:.2f} logins/s, /health p99 "
                        f"{health['p99_ms']:.1f} ms (max {health['max_ms']:.1f}), 404 probe p99 "
                        f"{no_db['p99_ms']:.1f} ms, "
                        f"{health['failures']} failures; server {w['server_util']:.0%}, "
                        f"generator {w['generator_util']:.0%}, others {w['other_load']:.2f} cores",
                        flush=True,
                    )
                overall.stop()
                await storm
    # Six verifications share the core and finish together, so logins arrive in waves:
    # the rate is taken from the first to the last login after the ramp (whole waves),
    # not as a count per window.
    after_ramp = sorted(t for t in results["done"] if start + RAMP <= t <= end)
    logins = len(after_ramp)
    rate = (logins - 1) / (after_ramp[-1] - after_ramp[0]) if logins > 1 else 0.0
    cpu_per_login = overall.server_cpu / logins if logins else float("inf")
    statuses = results.get("statuses", {})
    out.raw = {"bcrypt": probe, "windows": windows, "health_idle": idle, "statuses": statuses,
               "logins": logins, "rate": rate, "overall": overall.as_dict()}
    label = "5. login storm, bcrypt cost 12"
    whole = {
        "server_util": overall.server_util,
        "generator_util": overall.gen_util,
        "other_load": overall.as_dict()["other_load"],
    }
    notes = [(f"{CLIENTS} clients logging in back to back; {logins} logins over "
              f"{windows_n * window_s:.0f} s after a {RAMP:.0f} s ramp")]
    if statuses:
        notes.append(f"answers other than 200: {statuses}")
    ratio = rate / capacity
    out.rows.append(Row(
        label, "logins per second", rate, capacity, ratio, "≥ 0.8×", ratio >= 0.8,
        unit="/s", baseline_name=f"1 core ÷ {1e3 * verify:.0f} ms per verification",
        sensitive=True, notes=notes, **whole,
    ))
    cpu_capacity = 1 / probe["cpu_median"]
    per_cpu_s = 1 / cpu_per_login
    ratio = per_cpu_s / cpu_capacity
    out.rows.append(Row(
        label, "logins per server CPU-second", per_cpu_s, cpu_capacity, ratio, "≥ 0.8×",
        ratio >= 0.8, unit="/s",
        baseline_name=f"1 ÷ {1e3 * probe['cpu_median']:.0f} ms CPU per verification",
        notes=[(f"{1e3 * cpu_per_login:.0f} ms of server CPU per login: the same target with "
                "the core to itself, robust to other people's load")],
        **whole,
    ))
    w = min(windows, key=lambda w: w["other_load"])
    common = {
        "server_util": w["server_util"],
        "generator_util": w["generator_util"],
        "other_load": w["other_load"],
    }
    busy = w["health"]
    out.rows.append(Row(
        label, "/health p99 during the storm (loop-lag proxy)",
        busy["p99_ms"], idle["p99_ms"], busy["p99_ms"] / idle["p99_ms"], "< 10 ms",
        busy["p99_ms"] < 10, unit="ms", baseline_name="/health p99 on the idle server",
        sensitive=True,
        notes=[f"the least disturbed of {len(windows)} windows of {window_s:.0f} s",
               f"max {busy['max_ms']:.1f} ms over {busy['requests']} probes",
               f"p50 {busy['p50_ms']:.1f} ms",
               (f"a probe that touches no database (GET {NO_DB_PATH}, a 404): p99 "
                f"{w['no_db']['p99_ms']:.1f} ms")], **common,
    ))
    failures = sum(x["health"]["failures"] for x in windows)
    out.rows.append(Row(
        label, "/health failures during the storm", failures, 0, 0.0, "0", failures == 0,
        baseline_name="—", notes=[f"{sum(x['health']['requests'] for x in windows)} probes"],
        **common,
    ))
    return out
