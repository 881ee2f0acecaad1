"""`python -m bench [all|fanout|ingest|history|connections|login|unread|search|changes|postgres|unread_postgres ...]`.

The ChatAPI server (and each baseline server) runs pinned to core 0, this process
(the load generator) to core 1. Results: printed, written to bench/results/latest.md
and latest.json, and with --update-md into the results block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import os
import shlex
import sys
import time
import traceback

from . import common, profiler
from .common import RESULTS, Outcome, dump_json, pin_generator
from .experiments import EXPERIMENTS
from .launch import LOOPS
from .report import render, update_benchmarks

SCENARIOS = (
    "fanout", "ingest", "history", "connections", "login", "unread", "search", "changes",
    "postgres", "unread_postgres",
)
# `all`: the SQLite scenarios; the PostgreSQL ones need a PostgreSQL server and are run by name.
ALL = SCENARIOS[:-2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "scenarios", nargs="*", default=["all"], choices=("all", *SCENARIOS),
        metavar="SCENARIO", help=f"all (default: {', '.join(ALL)}) or any of: {', '.join(SCENARIOS)}",
    )
    p.add_argument("--quick", action="store_true", help="smaller and shorter (a smoke test)")
    p.add_argument(
        "--profile", action="store_true",
        help="sample the ChatAPI server with py-spy during the measurement windows "
        "(summaries in bench/results/profile-*.txt); figures of such a run are perturbed",
    )
    p.add_argument("--update-md", action="store_true",
                   help="write the results into BENCHMARKS.md (between its markers)")
    p.add_argument(
        "--loop", choices=LOOPS, default="asyncio",
        help="the event loop of every server of the run (ChatAPI, baselines, peer); "
        "uvloop needs the bench extra",
    )
    p.add_argument(
        "--experiment", choices=sorted(EXPERIMENTS),
        help="fan-out and ingest also run a ChatAPI with this proposed change patched in "
        "(bench/experiments.py), side by side with the one as committed",
    )
    args = p.parse_args(argv)
    os.environ["BENCH_LOOP"] = args.loop  # read by bench.launch in every server process
    common.EXPERIMENT = args.experiment  # fan-out and ingest add a patched ChatAPI
    names = list(ALL) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    if args.profile:
        profiler.enable()

    note = pin_generator()
    if note:
        print(f"warning: {note}", flush=True)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    t0 = time.perf_counter()
    outcomes = []
    failures = 0
    for name in names:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        t = time.perf_counter()
        try:
            outcome = asyncio.run(module.run(quick=args.quick))
        except Exception as exc:  # noqa: BLE001 (one failed scenario must not lose the others)
            traceback.print_exc()
            outcome = Outcome(name, notes=[f"FAILED: {type(exc).__name__}: {exc}"])
            failures += 1
        outcome.seconds = time.perf_counter() - t
        if note:
            outcome.notes.append(note)
        if args.profile:
            outcome.notes.append("profiled run (py-spy attached): figures are perturbed")
        if args.experiment and name in ("fanout", "ingest"):
            outcome.notes.append(f"experiment {args.experiment} (bench/experiments.py): its "
                                 "rows compare the patched ChatAPI with the one as committed")
        outcomes.append(outcome)
    seconds = time.perf_counter() - t0
    block = render(outcomes, command.strip(), started, seconds, args.loop)
    print("\n" + block)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # A PostgreSQL-only run has a block (and result files) of its own.
    block_key = "-".join(
        (["postgres"] if names == ["postgres"] else []) + ([] if args.loop == "asyncio" else [args.loop])
    ) or "asyncio"
    suffix = "" if block_key == "asyncio" else f"-{block_key}"
    suffix += f"-{args.experiment}" if args.experiment else ""
    (RESULTS / f"latest{suffix}.md").write_text(block)
    dump_json(RESULTS / f"latest{suffix}.json", {
        "command": command, "started": started, "seconds": seconds, "loop": args.loop,
        "outcomes": [dataclasses.asdict(o) for o in outcomes],
    })
    if args.update_md and args.experiment:
        print("not updating BENCHMARKS.md from an experiment run", flush=True)
    elif args.update_md:
        if update_benchmarks(block, block_key):
            print("BENCHMARKS.md updated", flush=True)
        else:
            print("BENCHMARKS.md has no results markers: not updated", flush=True)
    failed = [r for o in outcomes for r in o.rows if r.met is False]
    print(f"{sum(len(o.rows) for o in outcomes) - len(failed)} targets met, "
          f"{len(failed)} not met; {seconds:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
