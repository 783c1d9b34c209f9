"""How much probing one simulated-fleet process serves: handshakes/s, paths/s, its CPU and its memory.

A `probe sim up --relays N` runs as its own process (as the agent's benchmark will use it); this process is the
load: wgprobe's real client. Both share the machine, and the client costs more CPU per path than the sim, so the
sim cannot be driven to its limit from here: its capacity is measured as the sim's own CPU (from /proc) per
handshake and per path, and one core divided by that is what one sim process sustains. The paths-per-second phase
runs at the agent's target load (DESIGN.md "Sizes": ~160 paths/s for 1,000 relays) and reports the sim's CPU share.
Figures are medians over windows. No root needed.

    .venv/bin/python -m bench.bench_sim [--relays 1000] [--rate 160] [--windows 5] [--big 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import median, report
from probe.agent_config import load_config
from probe.inventory import Inventory, Relay, load_inventory
from probe.runner import Prober
from probe.sim.control import request
from probe.tunnel import Tunnel
from probe.wireguard import Identity, PrivateKey, PublicKey

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    directory: Path
    ready_seconds: float

    def cpu(self) -> float:
        """User + system CPU seconds of the sim process so far."""
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds; system time includes delivering every datagram the sim sends on loopback."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) / _TICK, int(fields[12]) / _TICK

    def memory_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for the sim")

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = request(self.directory, {"op": "status"})["totals"]
        return totals

    def stop(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.communicate(timeout=60)
        return self.proc.returncode


def start_sim(directory: Path, relays: int, identities: int) -> Sim:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "probe.sim", "up", "--dir", str(directory)),
            "--relays",
            str(relays),
            "--identities",
            str(identities),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = b""
    while b"\nready" not in b"\n" + seen:
        readable, _, _ = select.select([proc.stdout.fileno()], [], [], 120)
        chunk = os.read(proc.stdout.fileno(), 65536) if readable else b""
        if not chunk:
            proc.kill()
            sys.exit(f"probe sim up failed: {seen.decode()} {proc.communicate()[1].decode()}")
        seen += chunk
    return Sim(proc, directory, time.perf_counter() - started)


async def handshake_windows(
    sim: Sim, inventory: Inventory, keys: list[Identity], windows: int, seconds: float
) -> list[dict[str, float]]:
    """Handshakes as fast as the client makes them (16 in flight, keys spread over relays)."""
    relays = [(PublicKey(r.public_key_bytes), r.ipv4_addr_in) for r in inventory.relays]
    pairs = itertools.cycle([(k, r) for r in range(len(relays)) for k in range(len(keys))])
    out = []
    for _ in range(windows):
        before_cpu, before = sim.cpu(), sim.totals()["handshakes"]
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                key, relay = next(pairs)
                public, address = relays[relay]
                tunnel = await Tunnel.open(keys[key], public, address, 51820, timeout=1.0)
                tunnel.close()

        await asyncio.gather(*(worker(deadline) for _ in range(16)))
        wall = time.perf_counter() - started
        done = sim.totals()["handshakes"] - before
        cpu = sim.cpu() - before_cpu
        out.append(
            {
                "handshakes_per_s": done / wall,
                "sim_cpu_ms_per_handshake": 1000 * cpu / done,
                "sim_cpu_share": cpu / wall,
            }
        )
    return out


async def path_windows(
    sim: Sim, prober: Prober, inventory: Inventory, rate: float, windows: int, seconds: float
) -> list[dict[str, float]]:
    """Whole paths (handshake + 4 stages) started at `rate` per second, round robin over relays, ports, families."""
    ports = [
        inventory.relays[0].main_port,
        *(p for low, high in inventory.relays[0].port_ranges for p in range(low, high + 1)),
    ]
    plan = itertools.cycle(
        [(relay, port, family) for port in ports for family in ("ipv4", "ipv6") for relay in inventory.relays]
    )
    out = []
    for _ in range(windows):
        before_cpu, before = sim.cpu_split(), sim.totals()
        results: list[bool] = []
        started = time.perf_counter()
        tasks = []

        async def one(relay: Relay, port: int, family: str, n: int, results: list[bool]) -> None:
            result = await prober.probe_relay(relay, rotation=n, only_port=port, family=family)
            results.append(result.ok)

        for n in range(int(rate * seconds)):
            due = started + n / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.ensure_future(one(*next(plan), n, results)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
        user_now, system_now = sim.cpu_split()
        user, system = user_now - before_cpu[0], system_now - before_cpu[1]
        cpu = user + system
        after = sim.totals()
        out.append(
            {
                "paths_per_s": len(results) / wall,
                "paths_ok_share": sum(results) / len(results),
                "sim_cpu_ms_per_path": 1000 * cpu / len(results),
                "sim_cpu_share": cpu / wall,
                "sim_system_share_of_cpu": system / cpu,
                "sim_datagrams_per_path": (
                    after["received"]
                    + after["valid_sent"]
                    + after["raw_sent"]
                    - before["received"]
                    - before["valid_sent"]
                    - before["raw_sent"]
                )
                / len(results),
            }
        )
    return out


def medians(rows: list[dict[str, float]], prefix: str) -> dict[str, float]:
    return {f"{prefix}{key}_median": median([row[key] for row in rows]) for key in rows[0]}


async def load(sim: Sim, args: argparse.Namespace) -> dict[str, float]:
    config = load_config(sim.directory / "agent.toml")
    inventory = load_inventory(config.inventory.source)
    keys = [Identity(PrivateKey(ident.private_key)) for ident in config.identities]
    figures: dict[str, float] = {}
    figures |= medians(await handshake_windows(sim, inventory, keys, args.windows, args.seconds), "handshake_")
    prober = Prober(config, inventory, evidence=False)
    figures |= medians(await path_windows(sim, prober, inventory, args.rate, args.windows, args.seconds), "target_")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relays", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=160.0, help="paths per second in the target-load phase")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one measuring window")
    parser.add_argument("--big", type=int, default=2000, help="a larger fleet: start-up and memory only (0: skip)")
    args = parser.parse_args()
    figures: dict[str, object] = {"relays": args.relays, "sockets_per_relay": 9}
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-sim-") as tmp:
        sim = start_sim(Path(tmp) / "sim", args.relays, identities=6)
        try:
            figures["ready_seconds"] = sim.ready_seconds
            figures["rss_mb_idle"] = sim.memory_mb()
            result = asyncio.run(load(sim, args))
            figures |= result
            figures["rss_mb_after_load"] = sim.memory_mb()
            figures["rss_mb_peak"] = sim.memory_mb("VmHWM")
            figures["sim_handshakes_per_core_s"] = 1000 / result["handshake_sim_cpu_ms_per_handshake_median"]
            figures["sim_paths_per_core_s"] = 1000 / result["target_sim_cpu_ms_per_path_median"]
        finally:
            figures["sim_exit_code"] = sim.stop()
        if args.big:
            big = start_sim(Path(tmp) / "big", args.big, identities=6)
            try:
                figures["big_relays"] = args.big
                figures["big_ready_seconds"] = big.ready_seconds
                figures["big_rss_mb_idle"] = big.memory_mb()
            finally:
                big.stop()
    report("sim", figures)


if __name__ == "__main__":
    main()
