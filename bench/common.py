"""Shared pieces of the benchmarks: a lab of their own (prefix wgb), medians, and a JSON report."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from probe.lab import DEFAULT_IDENTITIES, fleet
from probe.lab.topology import LabPlan

PREFIX = "wgb"


@dataclass
class BenchLab:
    lab_dir: Path
    plan: LabPlan
    public_keys: dict[str, str]


@contextmanager
def bench_lab(servers: int, identities: int = DEFAULT_IDENTITIES) -> Iterator[BenchLab]:
    if os.geteuid() != 0:
        sys.exit("benchmarks build a lab: run as root")
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-") as tmp:
        lab_dir = Path(tmp)
        state = fleet.up(lab_dir, servers, identities=identities, prefix=PREFIX)
        try:
            doc = json.loads((lab_dir / "relays.json").read_text())
            keys = {r["hostname"]: r["public_key"] for r in doc["wireguard"]["relays"]}
            yield BenchLab(lab_dir, state.plan(), keys)
        finally:
            fleet.down(lab_dir, prefix=PREFIX, quiet=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(name: str, figures: dict[str, object]) -> None:
    """Print the figures and write them to bench/results/NAME.json (the README quotes these files)."""
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")


# Instructions retired in user space, counted by callgrind: slow (about 50x) but the same from run to run whatever
# else the machine is doing, so a change of a few percent shows that the CPU-time A/B cannot resolve. Not time:
# the X25519 assembly retires instructions several times faster than the interpreter does. Run with
# PYTHONHASHSEED=0: the same dict layouts in every run, so counts differ only by the work done.
VALGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")


def collected_instructions(stderr: str) -> int:
    """The instruction count callgrind printed on the stderr of a run under VALGRIND."""
    found = [line for line in stderr.splitlines() if "Collected :" in line]
    if not found:
        sys.exit(f"no instruction count from valgrind:\n{stderr[-2000:]}")
    return int(found[-1].rsplit(":", 1)[1].strip())
