"""Issue #10 benchmark: `probe verify` of ten servers, as a deploy pipeline runs it (a whole command, cold start
included), against a simulated fleet (no root) and the real lab (root).

- ten healthy servers: wall time of the command until it exits 0 (target <= 5 s), and, in the same run, the wall
  time of `probe servers` with the same config (start-up, config and inventory, no probing) as the baseline;
- ten servers of which one has a NAT fault (`nat`) or a closed extended port range (`ports`): the time until its
  FAILED line is printed, and until the command exits (at the first certain failure).

The configs are the ones `probe sim up` and `probe lab up` write (probe defaults: 1 s per stage), so a NAT fault
costs what it costs in the field: its forward stage waits out its timeout in two rounds. Medians over --runs.

    .venv/bin/python -m bench.bench_verify [--target sim|lab|both] [--runs 10] [--prefix wgb]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import median, report

SERVERS = 10
Breaker = Callable[[str, str | None], None]  # (relay, fault or None to heal)


def probe(*args: str) -> list[str]:
    return [sys.executable, "-m", "probe", *args]


def wall(argv: list[str], expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - started
    assert done.returncode == expect, (argv, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return seconds


def until_failed(argv: list[str], relay: str) -> tuple[float, float]:
    """(seconds until the FAILED line of `relay`, seconds until the command exited 1)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = float("nan")
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"FAILED {relay} "):
            reported = time.perf_counter() - started
    proc.communicate()
    exited = time.perf_counter() - started
    assert proc.returncode == 1 and not math.isnan(reported), (proc.returncode, reported)
    return reported, exited


def measure(config: Path, names: list[str], runs: int, breaker: Breaker, label: str) -> dict[str, object]:
    verify = probe("verify", *names, "--config", str(config))
    baseline, healthy = [], []
    for _ in range(runs):  # in turn, so both see the same machine
        baseline.append(wall(probe("servers", "--config", str(config)), 0))
        healthy.append(wall(verify, 0))
    figures: dict[str, object] = {
        f"{label}_ten_healthy_verify_wall_s": median(healthy),
        f"{label}_ten_healthy_verify_max_s": max(healthy),
        f"{label}_probe_servers_wall_s (baseline: start-up, config, inventory)": median(baseline),
    }
    broken = names[4]
    for fault in ("nat", "ports"):
        breaker(broken, fault)
        try:
            samples = [until_failed(verify, broken) for _ in range(runs)]
        finally:
            breaker(broken, None)
        figures[f"{label}_{fault}_one_of_ten_reported_s"] = median([s[0] for s in samples])
        figures[f"{label}_{fault}_one_of_ten_exit_s"] = median([s[1] for s in samples])
    return figures


@contextmanager
def sim_target() -> Iterator[tuple[Path, list[str], Breaker]]:
    from probe.sim.control import request

    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-verify-") as tmp:
        directory = Path(tmp)
        proc = subprocess.Popen(
            probe("sim", "up", "--dir", str(directory), "--relays", str(SERVERS)),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("ready"):
                    break

            def breaker(relay: str, fault: str | None) -> None:
                payload = {"op": "break", "relay": relay, "fault": fault} if fault else {"op": "heal", "relay": relay}
                request(directory, payload)

            names = [f"se-got-wg-{n:03d}" for n in range(1, SERVERS + 1)]
            yield directory / "agent.toml", names, breaker
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


@contextmanager
def lab_target(prefix: str) -> Iterator[tuple[Path, list[str], Breaker]]:
    from probe.lab import fleet
    from probe.lab.faults import Fault

    if os.geteuid() != 0:
        sys.exit("the lab target builds network namespaces: run as root")
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-verify-") as tmp:
        lab_dir = Path(tmp)
        state = fleet.up(lab_dir, SERVERS, prefix=prefix)
        try:

            def breaker(relay: str, fault: str | None) -> None:
                fleet.set_faults(lab_dir, relay, [Fault.parse(fault)] if fault else [])

            yield lab_dir / "agent.toml", [relay.name for relay in state.plan().relays], breaker
        finally:
            fleet.down(lab_dir, prefix=prefix, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", choices=("sim", "lab", "both"), default="sim")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--prefix", default="wgb", help="the lab's prefix (default wgb, the benchmarks')")
    args = parser.parse_args()
    figures: dict[str, object] = {"servers": SERVERS, "runs": args.runs, "cpus": os.cpu_count()}
    if args.target in ("sim", "both"):
        with sim_target() as (config, names, breaker):
            figures |= measure(config, names, args.runs, breaker, "sim")
    if args.target in ("lab", "both"):
        with lab_target(args.prefix) as (config, names, breaker):
            figures |= measure(config, names, args.runs, breaker, "lab")
    report("verify", figures)


if __name__ == "__main__":
    main()
