"""The benchmark scenarios at a tiny size, so that they keep working (no figure is checked).

Each one starts its real servers (ChatAPI, the bare baselines, the FastAPI peer) and
drives them with the bench's own generator; the peer and uvloop need the bench extra
(`pip install -e '.[bench]'`) and are skipped without it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, fanout, ingest
from bench import shapes as shapes_bench
from bench.common import baseline_server, chatapi_server, commit_floor, temp_dir
from bench.common import create_database as bench_database
from bench.experiments import EXPERIMENTS
from bench.report import render

HAS_PEER = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn"))
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def delivered_everything(windows: dict[str, list[dict]]) -> None:
    for kind, ws in windows.items():
        for w in ws:
            assert w["delivered"] == w["expected"] > 0, kind
            assert w["closed_sockets"] == 0, kind


async def test_fanout_against_the_bare_broadcast_and_the_peer():
    kinds = fanout.KINDS if HAS_PEER else ("bare", "chatapi")
    outcome = await fanout.run(plan=[(3, 20.0, 0.3)], rounds=1, kinds=kinds)
    delivered_everything(outcome.raw["n3"])
    assert outcome.raw["commit_floor_us"] > 0
    metrics = {(row.scenario, row.metric) for row in outcome.rows}
    assert ("1. fan-out N=3, 20 msg/s", "server CPU per delivered frame") in metrics
    assert ("1. fan-out N=3, 20 msg/s", "p99 delivery latency") in metrics
    if HAS_PEER:
        assert ("1. fan-out N=3, 20 msg/s, vs the peer", "p99 delivery latency") in metrics
    for row in outcome.rows:
        assert row.ours > 0 and row.baseline > 0 and not math.isnan(row.ratio)
    cpu_row = outcome.rows[0]
    assert any("durable commit alone" in note for note in cpu_row.notes)
    assert "| 1. fan-out N=3, 20 msg/s |" in render([outcome], "smoke", "now", 1.0)


async def test_ingest_against_the_chat_broadcast_and_the_echo():
    outcome = await ingest.run(quick=True, seconds=0.3)
    for kind in ingest.KINDS:
        assert all(w["acked"] > 0 for w in outcome.raw[kind]), kind
    baselines = [row.baseline_name for row in outcome.rows]
    assert baselines[0] == "bare broadcast, 16 chats × 4 sockets"
    assert any(name.startswith("bare echo") for name in baselines)
    assert [row.met is None for row in outcome.rows] == [False, False, True, True]


def test_the_durable_commit_floor_is_measured(tmp_path):
    assert 0 < commit_floor(tmp_path, count=5) < 1e6


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop comes with the bench extra")
@pytest.mark.parametrize("server", ["bare", "chatapi"])
def test_loop_uvloop_runs_the_servers_on_uvloop(server, monkeypatch):
    monkeypatch.setenv("BENCH_LOOP", "uvloop")
    with temp_dir("bench-smoke-") as d:
        bench_database(str(d / "chat.db"), users=1, chats=1).close()
        starter = baseline_server("broadcast") if server == "bare" else chatapi_server(
            str(d / "chat.db"))
        with starter as running, open(f"/proc/{running.pid}/maps") as maps:
            assert "uvloop" in maps.read()


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
async def test_an_experiment_runs_side_by_side_with_chatapi_as_committed(
    experiment, monkeypatch
):
    if experiment == "orjson-frames":
        pytest.importorskip("orjson")
    monkeypatch.setattr(common, "EXPERIMENT", experiment)
    outcome = await fanout.run(plan=[(2, 20.0, 0.3)], rounds=1, kinds=("bare", "chatapi", "experiment"))
    delivered_everything(outcome.raw["n2"])
    label = f"1. fan-out N=2, 20 msg/s, experiment {experiment} vs as committed"
    assert label in {row.scenario for row in outcome.rows}


async def test_the_chat_list_with_unread_counts_against_the_list_without():
    from bench import unread

    outcome = await unread.run(quick=True)
    (row,) = outcome.rows
    assert row.ours > 0 and row.baseline > 0 and row.ratio == row.ours / row.baseline
    assert len(outcome.raw["counted_ms"]) == len(outcome.raw["plain_ms"]) > 0


async def test_catching_up_on_changes_against_catching_up_on_new_messages():
    from bench import changes

    outcome = await changes.run(count=50, rounds=1)
    (row,) = outcome.rows
    assert row.scenario == "8. catch-up of 50 changes"
    assert row.ours > 0 and row.baseline > 0 and row.ratio == row.ours / row.baseline
    assert len(outcome.raw["changes_ms"]) == len(outcome.raw["new_ms"]) == 1


async def test_the_trigger_cost_on_sqlite(capsys):
    from bench import trigger_cost

    await trigger_cost.main(postgres=False, batches=3)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "SQLite, batches of 1", "SQLite, batches of 64",
        "SQLite in memory, batches of 1", "SQLite in memory, batches of 64",
    ]


async def test_postgres_against_the_same_baselines_in_1_and_2_processes(monkeypatch):
    from conftest import POSTGRES_URL, in_thread, require_backend, run_sql

    from bench import postgres

    require_backend("postgres")  # skipped without PostgreSQL (failed when it is required)
    monkeypatch.setattr(common, "POSTGRES_URL", POSTGRES_URL)
    outcome = await postgres.run(plan=[(3, 20.0, 0.3)], seconds=0.3, rounds=1)
    one, two = "1 process", "2 processes (--workers 2)"
    for kind in ("bare", one, two):
        assert all(w["acked"] > 0 for w in outcome.raw["ingest"][kind]), kind
    delivered_everything(outcome.raw["n3"])
    for kind in (one, two):  # the backends serving the servers were found and counted
        assert all(w["server_database_cpu_s"] > 0 for w in outcome.raw["ingest"][kind]), kind
        assert all(w["server_database_cpu_s"] > 0 for w in outcome.raw["n3"][kind]), kind
    rows = {(row.scenario, row.metric): row for row in outcome.rows}
    for kind in (one, two):
        ingest_row = rows[(f"6. PostgreSQL ingest, 64 senders / 16 chats, {kind}",
                           "acknowledged messages per second")]
        assert ingest_row.baseline_name == "bare broadcast, 16 chats × 4 sockets"
        assert ingest_row.target == "≥ 0.6×" and ingest_row.met is not None
        fanout_row = rows[(f"6. PostgreSQL fan-out N=3, 20 msg/s, {kind}",
                           "server CPU per delivered frame")]
        assert fanout_row.baseline_name == "bare broadcast" and fanout_row.target == "≤ 1.15×"
        assert any("PostgreSQL backends" in note for note in fanout_row.notes)
    change = rows[(f"6. PostgreSQL ingest, 64 senders / 16 chats, {two} against {one}",
                   "acknowledged messages per second")]
    assert change.baseline_name == "ChatAPI on PostgreSQL, 1 process" and change.met is None
    assert (f"6. PostgreSQL fan-out N=3, 20 msg/s, {two} against {one}",
            "p99 delivery latency") in rows
    for row in outcome.rows:
        assert row.ours > 0 and row.baseline > 0 and not math.isnan(row.ratio)
    left = in_thread(run_sql(POSTGRES_URL, "SELECT count(*) FROM pg_namespace WHERE nspname "
                                           f"LIKE 'bench{os.getpid()}\\_%'"))
    assert left == [(0,)], left  # the schemas of the run were dropped


def test_the_shapes_benchmark_runs(capsys):
    assert shapes_bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| hand |" in out and "| own |" in out


async def test_search_against_the_sqlite3_command_line():
    from bench import search

    outcome = await search.run(quick=True)
    timed, cpu, ingest = outcome.rows
    assert timed.ours > 0 and timed.baseline > 0 and timed.ratio == timed.ours / timed.baseline
    assert len(outcome.raw["sqlite3_ms"]) == len(outcome.raw["server_ms"]) > 0
    assert cpu.ours > 0 and ingest.ours > 0 and ingest.baseline > 0


async def test_the_cpu_of_both_writer_paths(capsys):
    from bench import writer_paths

    await writer_paths.main(batches=3)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["batches of 1", "batches of 64"]
