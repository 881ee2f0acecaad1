"""`python -m bench.launch MODULE ARGS...`: run a server module on the bench's event loop.

Every server of a run (ChatAPI, the bare baselines, the FastAPI peer) starts through
this, so all of them use the same loop: the standard asyncio loop, or uvloop when
BENCH_LOOP=uvloop (`python -m bench --loop uvloop`). ChatAPI itself has no loop
setting: installing uvloop's policy before it starts is all it takes.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys

LOOPS = ("asyncio", "uvloop")


def loop_name() -> str:
    """The loop the servers of this run use (BENCH_LOOP; asyncio when unset)."""
    name = os.environ.get("BENCH_LOOP", "asyncio")
    if name not in LOOPS:
        raise SystemExit(f"BENCH_LOOP must be one of {', '.join(LOOPS)}, not {name!r}")
    return name


def install_loop() -> str:
    """Make asyncio.run use the chosen loop in this process; returns its name."""
    name = loop_name()
    if name == "uvloop":
        import uvloop  # the bench extra: pip install -e '.[bench]'

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return name


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench.launch MODULE [ARGS...]")
    install_loop()
    module = sys.argv[1]
    experiment = os.environ.get("BENCH_EXPERIMENT")
    if experiment and module == "chatapi":
        from .experiments import apply

        apply(experiment)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
