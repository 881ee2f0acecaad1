"""The results table (Markdown) and the BENCHMARKS.md update."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
from pathlib import Path

from .common import CONTENDED, GENERATOR_BOUND, ROOT, Outcome, Row

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def fmt(value: float, unit: str = "") -> str:
    if isinstance(value, float) and math.isnan(value):
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0%}"


def cpu_cell(row: Row) -> str:
    ours = f"{pct(row.server_util)} / {pct(row.generator_util)}"
    if math.isnan(row.baseline_server_util):
        return ours
    return f"{ours} (baseline {pct(row.baseline_server_util)} / {pct(row.baseline_generator_util)})"


def table(outcomes: list[Outcome]) -> str:
    lines = [
        (
            "| scenario | metric | ChatAPI | baseline | ratio | target | met | "
            "server / generator CPU | notes |"
        ),
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        for row in outcome.rows:
            met = "—" if row.met is None else ("**yes**" if row.met else "**no**")
            notes = list(row.notes)
            if row.contended:
                met += " (contended)"
                notes.insert(0, f"CONTENDED: other processes used {row.other_load:.1f} cores of "
                                "ours during the windows; this figure is unreliable")
            elif not math.isnan(row.other_load) and row.other_load >= 0.1:
                notes.append(f"other processes used {row.other_load:.1f} cores meanwhile")
            if row.generator_bound:
                notes.insert(0, "GENERATOR-BOUND: the load generator, not the server, "
                                "was the limit")
            baseline = fmt(row.baseline, row.unit)
            if row.baseline_name:
                baseline = f"{baseline} ({row.baseline_name})"
            lines.append(
                f"| {row.scenario} | {row.metric} | {fmt(row.ours, row.unit)} | {baseline} | "
                f"{fmt(row.ratio)}× | {row.target} | {met} | {cpu_cell(row)} | "
                f"{'; '.join(notes)} |"
            )
    return "\n".join(lines)


def bottleneck_summary(outcomes: list[Outcome]) -> str:
    rows = [row for outcome in outcomes for row in outcome.rows]
    saturated = [
        f"{row.scenario} ({row.metric})"
        for row in rows
        if any(u >= GENERATOR_BOUND for u in (row.generator_util, row.baseline_generator_util)
               if not math.isnan(u))
    ]
    bursts = [
        f"{row.scenario} ({row.metric})"
        for row in rows
        if row.generator_limited and f"{row.scenario} ({row.metric})" not in saturated
    ]
    parts = []
    if saturated:
        parts.append(
            f"The load generator used {GENERATOR_BOUND:.0%} or more of its core, so it was "
            "the bottleneck (the server's figure is a lower bound of what it can do), in: "
            + "; ".join(saturated) + "."
        )
    else:
        parts.append(
            f"The load generator stayed below {GENERATOR_BOUND:.0%} of its core in every "
            "measured window."
        )
    if bursts:
        parts.append(
            "It was the bottleneck for part of the latency in: " + "; ".join(bursts)
            + " (it spent as much CPU per message as the server, so it drained each burst "
            "of frames no faster than the server sent it; see the row's notes for which side)."
        )
    elif not saturated:
        parts.append("It was not the bottleneck.")
    return " ".join(parts)


def contention_summary(outcomes: list[Outcome]) -> str:
    rows = [row for o in outcomes for row in o.rows if row.contended]
    if not rows:
        return (
            f"Other processes used less than {CONTENDED} of a core of ours in every window "
            "that a throughput or latency figure came from."
        )
    return (
        f"{len(rows)} throughput or latency figures were measured while other processes "
        f"used at least {CONTENDED} of a core of ours (marked CONTENDED): run again on a "
        "quieter machine before trusting them; CPU-per-operation rows are much less affected."
    )


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import aiohttp

    try:
        sqlite_cli = subprocess.run(
            ["sqlite3", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError):
        sqlite_cli = "missing"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "chatapi", "schema.sql"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes under chatapi/)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"SQLite {sqlite3.sqlite_version} (module), sqlite3 CLI {sqlite_cli}; "
        f"ChatAPI at {commit}"
    )


def render(
    outcomes: list[Outcome], command: str, started: str, seconds: float, loop: str = "asyncio"
) -> str:
    notes = [f"- {o.name}: {n}" for o in outcomes for n in o.notes]
    durations = ", ".join(f"{o.name} {o.seconds:.0f} s" for o in outcomes)
    parts = [
        f"Run {started}: `{command}`, {seconds:.0f} s in all ({durations}).",
        "",
        f"Machine: {machine()}.",
        "",
        (f"Event loop: {loop} in every server of this run (ChatAPI, the bare baselines, "
         "the FastAPI peer); the load generator always runs on asyncio."),
        "",
        table(outcomes),
        "",
        bottleneck_summary(outcomes),
        "",
        contention_summary(outcomes),
    ]
    if notes:
        parts += ["", "Notes of this run:", *notes]
    return "\n".join(parts) + "\n"


def markers(key: str = "asyncio") -> tuple[str, str]:
    """The begin and end markers of a results block: "asyncio" the main one, else a
    loop's ("uvloop") or a PostgreSQL-only run's ("postgres")."""
    if key == "asyncio":
        return BEGIN, END
    return BEGIN.replace("results", f"results-{key}"), END.replace("results", f"results-{key}")


def update_benchmarks(block: str, key: str = "asyncio", path: Path = BENCHMARKS) -> bool:
    """Replace a generated block of BENCHMARKS.md (see `markers`); False when its
    markers are missing."""
    if not path.exists():
        return False
    begin, end = markers(key)
    text = path.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{block}{end}{tail}")
    return True
