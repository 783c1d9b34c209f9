"""Issue #4 benchmark: `probe server` cold start (whole command, wall) and the wall time of one healthy path
against the tunnel's own round-trip time, measured in the same run.

A healthy path should cost about two round trips plus a millisecond: the handshake, then every stage's packets at
once. The cold start is compared, run by run in turn, with the start-up of what `probe server` cannot avoid
(importing pydantic, asyncio and cryptography's X25519), and with the first pydantic model class definition added
to that (pydantic's internals load then, not at `import pydantic`). Run as root:
.venv/bin/python -m bench.bench_server [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_engine import identities
from bench.common import BenchLab, bench_lab, median, report
from probe.config import load_config
from probe.inventory import load_inventory
from probe.lab import fleet
from probe.lab.faults import Fault
from probe.packets import build_icmp_echo
from probe.runner import Prober
from probe.tunnel import Tunnel
from probe.wireguard import PublicKey

BASELINE = "import pydantic, asyncio; from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey"
WITH_MODEL = BASELINE + "\nclass M(pydantic.BaseModel):\n    a: int\nM(a=1)"


def paired(first: list[str], second: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds of two commands run in turn, A B A B ..., so both see the same machine."""
    a, b = [], []
    for _ in range(runs):
        a += wall(first, 1)
        b += wall(second, 1)
    return a, b


def wall(argv: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        samples.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr.decode()
    return samples


async def tunnel_rtts(lab: BenchLab, count: int, relay_index: int = 0) -> list[float]:
    """Round trips of an echo to the outside target through an established tunnel: the path's unit of time."""
    ident, src = identities(lab)[0]
    relay = lab.plan.relays[relay_index]
    tunnel = await Tunnel.open(
        ident, PublicKey.from_base64(lab.public_keys[relay.name]), relay.ipv4, 51820, netns=lab.plan.agents[0].netns
    )
    samples = []
    for seq in range(1, count + 1):
        started = time.perf_counter()
        tunnel.send(build_icmp_echo(src, lab.plan.outside_ipv4, 999, seq, b"rtt-baseline-000"))
        assert await tunnel.recv(1.0) is not None
        samples.append(time.perf_counter() - started)
    tunnel.close()
    return samples


async def path_walls(config: Path, count: int, relay_index: int = 0) -> tuple[list[float], list[float]]:
    """(one path, all paths of the relay) wall seconds of Prober.probe_relay in a warm process."""
    agent = load_config(config)
    inventory = load_inventory(agent.inventory.source)
    prober = Prober(agent, inventory, evidence=False)
    relay = inventory.relays[relay_index]
    one, full = [], []
    for n in range(count):
        started = time.perf_counter()
        result = await prober.probe_relay(relay, rotation=n, only_port=51820, family="ipv4")
        one.append(time.perf_counter() - started)
        assert result.ok, result
        await asyncio.sleep(0.03)  # past the per-key flood limit, so no probe waits for its turn
    for n in range(max(5, count // 10)):
        started = time.perf_counter()
        result = await prober.probe_relay(relay, rotation=n)
        full.append(time.perf_counter() - started)
        assert result.ok, result
        await asyncio.sleep(0.03)
    return one, full


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with bench_lab(3) as lab:
        config = lab.lab_dir / "agent.toml"
        probe_cmd = [sys.executable, "-m", "probe", "server", "se-got-wg-001", "--config", str(config)]
        python_only = wall([sys.executable, "-c", "pass"], args.runs)
        import_only = wall([sys.executable, "-c", "import probe.cli, probe.runner"], args.runs)
        cold, baseline = paired(probe_cmd, [sys.executable, "-c", BASELINE], args.runs)
        _cold2, with_model = paired(probe_cmd, [sys.executable, "-c", WITH_MODEL], args.runs)
        rtts = asyncio.run(tunnel_rtts(lab, 200))
        one, full = asyncio.run(path_walls(config, 200))
        # The lab's round trips are ~0.2 ms, so a path there is bound by its own CPU. A relay 10 ms away each way
        # (the delay fault holds every packet leaving it) shows what bounds a path in the field.
        fleet.set_faults(lab.lab_dir, lab.plan.relays[1].name, [Fault.parse("delay:10")])
        far_rtts = asyncio.run(tunnel_rtts(lab, 30, relay_index=1))
        far_one, _ = asyncio.run(path_walls(config, 30, relay_index=1))
    rtt = median(rtts)
    far_rtt = median(far_rtts)
    report(
        "server",
        {
            "cold_start_runs": args.runs,
            "probe_server_cold_wall_s_median": median(cold),
            "python_startup_wall_s_median": median(python_only),
            "imports_wall_s_median": median(import_only),
            "cold_over_python_startup": median(cold) / median(python_only),
            "baseline_imports_wall_s_median": median(baseline),
            "cold_over_baseline_imports": median([c / b for c, b in zip(cold, baseline, strict=True)]),
            "baseline_with_first_model_wall_s_median": median(with_model),
            "cold_over_baseline_with_first_model": median([c / b for c, b in zip(_cold2, with_model, strict=True)]),
            "tunnel_rtt_ms_median": rtt * 1000,
            "one_path_wall_ms_median": median(one) * 1000,
            "one_path_in_rtts": median(one) / rtt,
            "one_path_minus_2rtt_ms": (median(one) - 2 * rtt) * 1000,
            "all_paths_wall_ms_median": median(full) * 1000,
            "far_relay_tunnel_rtt_ms_median": far_rtt * 1000,
            "far_relay_one_path_wall_ms_median": median(far_one) * 1000,
            "far_relay_one_path_in_rtts": median(far_one) / far_rtt,
            "far_relay_one_path_minus_2rtt_ms": (median(far_one) - 2 * far_rtt) * 1000,
        },
    )


if __name__ == "__main__":
    main()
