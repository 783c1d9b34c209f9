"""Loss is not an outage: how often `probe server` calls a healthy but lossy relay failed.

A relay of the lab drops PCT% of the packets on its public link each way (`loss:PCT`) and is otherwise healthy.
Every run is a fresh prober, as each `probe server` is a new process (so the first initiation of each key has no
round-trip estimate yet), probing all 12 paths of the relay. The figures are how many runs said FAILED, with the
reasons, and the handshake's own loss as the stage reports it.

Run as root:  .venv/bin/python -m bench.bench_loss [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path

from bench.common import bench_lab, report
from probe.agent_config import load_config
from probe.inventory import load_inventory
from probe.lab import fleet
from probe.lab.faults import Fault
from probe.results import StageName
from probe.runner import Prober


async def runs(config_path: str, count: int) -> tuple[int, Counter[str], list[float], int]:
    """(failed runs, reasons of the failed paths, handshake loss of every path, paths) over `count` runs."""
    config = load_config(Path(config_path))
    inventory = load_inventory(config.inventory.source)
    relay = inventory.relays[0]
    failed, reasons, losses, paths = 0, Counter[str](), [], 0
    for n in range(count):
        result = await Prober(config, inventory, evidence=False).probe_relay(relay, rotation=n)
        failed += not result.ok
        for path in result.paths:
            paths += 1
            if not path.ok:
                reasons[f"{path.family}:{path.port} {path.reason}"] += 1
            losses += [s.loss for s in path.stages if s.name is StageName.handshake]
        await asyncio.sleep(0.03)  # past the flood limit: the next run's first initiations are not held back
    return failed, reasons, losses, paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100, help="runs at 20%% loss (a fifth of them at 5%%)")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    with bench_lab(1) as lab:
        relay = lab.plan.relays[0].name
        for percent, count in ((20, args.runs), (5, max(20, args.runs // 5))):
            fleet.set_faults(lab.lab_dir, relay, [Fault.parse(f"loss:{percent}")])
            failed, reasons, losses, paths = asyncio.run(runs(str(lab.lab_dir / "agent.toml"), count))
            figures[f"loss_{percent}_runs"] = count
            figures[f"loss_{percent}_paths"] = paths
            figures[f"loss_{percent}_failed_runs"] = failed
            figures[f"loss_{percent}_failed_share"] = failed / count
            figures[f"loss_{percent}_failed_path_reasons"] = dict(reasons)
            figures[f"loss_{percent}_handshake_loss_mean"] = sum(losses) / len(losses)
    report("loss", figures)


if __name__ == "__main__":
    main()
