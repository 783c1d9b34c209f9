"""The aggregator's store ingest in user-space instructions (callgrind): what `ResultStore.ingest_result` costs a
result, its metrics lines written on arrival (the HTTP app's renderer follows the store) and the judging pass after
each round included, for this checkout and another in turn.

CPU time of the same code moves by ±15% from run to run on this shared 2-core machine (bench_service's paired
aggregator runs), more than a change of a few percent; instructions are the same from run to run. Each figure is
the difference between two runs of one worker under valgrind, one ingesting the first `--warm` rounds and one
ingesting every round, divided by the results in between, so start-up, imports and the first (record-creating)
rounds fall out. The payloads are built once, by this checkout, and handed to every worker in a file.

    .venv/bin/python -m bench.bench_ingest                        # this checkout
    .venv/bin/python -m bench.bench_ingest --ab /work/main        # another checkout's store, then this one's

A worker imports `probe` from the tree it measures (PYTHONPATH), and checks it did.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import VALGRIND, collected_instructions, report

ROOT = Path(__file__).resolve().parent.parent
RELAYS = 50  # small, so a run under valgrind takes about a minute; the work per result does not depend on it
AGENTS = 3

_WORKER = """
import gc, pickle, sys
from pathlib import Path
import probe
from probe.aggregator.metrics import MetricsRenderer
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory

tree, payloads, rounds, interval = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
assert Path(probe.__file__).resolve().is_relative_to(tree.resolve()), probe.__file__
gc.set_threshold(20_000, *gc.get_threshold()[1:])  # as `probe aggregator` runs (probe/aggregator/cli.py)
with open(payloads, "rb") as file:
    names, start, every = pickle.load(file)
clock = FakeClock(start)
store = ResultStore(make_inventory(names), now=clock)
MetricsRenderer(store).follow()
for batch in every[:rounds]:
    clock.advance(interval)
    for data, topic in batch:
        store.ingest_result(data, topic)
    store.refresh()
"""


def instructions(tree: Path, payloads: Path, rounds: int, interval: float) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")  # the same dict layouts in every run
    command = [*VALGRIND, sys.executable, "-c", _WORKER, str(tree), str(payloads), str(rounds), str(interval)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=tree)
    if done.returncode != 0:
        sys.exit(f"the worker failed in {tree}:\n{done.stderr[-3000:]}")
    return collected_instructions(done.stderr)


def per_result(tree: Path, payloads: Path, warm: int, rounds: int, interval: float) -> float:
    results = (rounds - warm) * RELAYS * AGENTS
    return (instructions(tree, payloads, rounds, interval) - instructions(tree, payloads, warm, interval)) / results


def main() -> None:
    from bench.bench_aggregator import INTERVAL, make_rounds, relay_names

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ab", type=Path, help="another checkout whose store is measured too")
    parser.add_argument("--warm", type=int, default=2, help="rounds before the ones measured")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in all")
    args = parser.parse_args()
    names = relay_names(RELAYS)
    start = 1_800_000_000.0
    every = make_rounds(names, args.rounds, start + 1)
    measured = (args.rounds - args.warm) * RELAYS * AGENTS
    figures: dict[str, Any] = {"relays": RELAYS, "agents": AGENTS, "results_measured": measured}
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-ingest-") as tmp:
        payloads = Path(tmp) / "payloads.pickle"
        payloads.write_bytes(pickle.dumps((names, start, every)))
        this = per_result(ROOT, payloads, args.warm, args.rounds, INTERVAL)
        figures["this_instructions_per_result"] = round(this)
        if args.ab is not None:
            other = per_result(args.ab.resolve(), payloads, args.warm, args.rounds, INTERVAL)
            figures["ab_other"] = str(args.ab)
            figures["other_instructions_per_result"] = round(other)
            figures["this_over_other"] = this / other
    report("ingest", figures)


if __name__ == "__main__":
    main()
