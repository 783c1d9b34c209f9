"""The CPU of one full path (handshake, then the tunnel, forward, egress and mtu stages with their answers, verdicts
and result models) measured in-process against the simulated fleet, with the X25519 floor measured in the same
process; and of one probe (handshake + one echo through the NAT). No root, no lab: quick enough to measure every
change.

The simulated fleet (`probe sim up`) runs as its own process; each measurement is a fresh worker process that
imports `probe` from the tree being measured, warms up, then probes every relay's paths for some rounds and
divides its own CPU time by the paths probed. Noise on a shared machine is large (the same code has measured 4.8x
and 5.0x in one session), so two code versions are compared in the same run, their workers alternating:

    .venv/bin/python -m bench.bench_path                      # this tree: path CPU and its ratio to the floor
    .venv/bin/python -m bench.bench_path --ab main            # main (A) against this tree (B), alternating
    .venv/bin/python -m bench.bench_path --ab /some/checkout  # any directory holding a probe/ package as A
    .venv/bin/python -m bench.bench_path --profile path.prof  # cProfile of this tree's paths, grouped by part
    .venv/bin/python -m bench.bench_path --what probe         # one probe (handshake + one echo) instead
    .venv/bin/python -m bench.bench_path --ab main --instructions --rounds 5   # instructions, under valgrind

`--ab` against a git ref exports that commit with `git archive` into a temporary directory; the worker code below
uses only `Prober`, `Tunnel` and the packet builders, which every version since the sim has. The worker checks it
imported `probe` from the tree asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# --- the worker: runs in its own process, imports `probe` from the tree under test (PYTHONPATH) -----------------


def _floor(samples: int) -> float:
    """Median CPU seconds of four X25519 operations, the crypto one initiator handshake cannot avoid."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    pub = b.public_key()
    out = []
    for _ in range(samples):
        c0 = time.process_time()
        for _ in range(4):
            a.exchange(pub)
        out.append(time.process_time() - c0)
    return statistics.median(out)


async def _paths(sim_dir: Path, rounds: int, warmup: int, profile: str | None) -> dict[str, Any]:
    from probe.agent_config import load_config
    from probe.inventory import load_inventory
    from probe.runner import Prober

    config = load_config(sim_dir / "agent.toml")
    inventory = load_inventory(config.inventory.source)
    prober = Prober(config, inventory)  # evidence on, as an agent runs (a healthy path writes none)

    async def one_round(rotation: int) -> int:
        import asyncio

        results = await asyncio.gather(*(prober.probe_relay(r, rotation=rotation) for r in inventory.relays))
        bad = [(r.server, r.reason) for r in results if not r.ok]
        if bad:
            raise SystemExit(f"paths failed against the simulated fleet: {bad}")
        return sum(len(r.paths) for r in results)

    for n in range(warmup):
        await one_round(n)
    profiler = _profiler(profile)
    before = _cpu()
    paths = 0
    for n in range(rounds):
        paths += await one_round(warmup + n)
    return _figures(before, paths, profiler, profile)


async def _probes(sim_dir: Path, rounds: int, warmup: int, profile: str | None) -> dict[str, Any]:
    """One probe at a time, as bench_engine's: handshake, one echo through the NAT, the reply verified."""
    from probe.agent_config import load_config
    from probe.inventory import load_inventory
    from probe.packets import build_icmp_echo, verify_echo_reply
    from probe.tunnel import InitiationPacer, Tunnel
    from probe.wireguard import Identity, PrivateKey, PublicKey

    config = load_config(sim_dir / "agent.toml")
    inventory = load_inventory(config.inventory.source)
    keys = [(Identity(PrivateKey(i.private_key)), i.ipv4) for i in config.identities]
    relays = [(PublicKey(r.public_key_bytes), r.ipv4_addr_in) for r in inventory.relays]
    target = config.checks.forward_target
    assert target is not None
    pacer = InitiationPacer()
    payload = b"wgprobe-bench-03"
    count = rounds * len(keys) * len(relays)
    profiler = None
    before = _cpu()
    for n in range(warmup + count):
        if n == warmup:
            profiler = _profiler(profile)
            before = _cpu()
        ident, src = keys[n % len(keys)]
        relay_key, entry = relays[(n // len(keys)) % len(relays)]
        tunnel = await Tunnel.open(ident, relay_key, entry, inventory.relays[0].main_port, pacer=pacer)
        tunnel.send(build_icmp_echo(src, target, 4000 + n % 1000, 1, payload))
        reply = await tunnel.recv(1.0)
        tunnel.close()
        assert reply is not None
        assert verify_echo_reply(
            reply, expect_src=target, expect_dst=src, identifier=4000 + n % 1000, sequence=1, payload=payload
        ).ok
    return _figures(before, count, profiler, profile)


def _cpu() -> tuple[float, float]:
    """(CPU, user CPU) seconds of this process so far."""
    return time.process_time(), os.times().user


def _figures(before: tuple[float, float], count: int, profiler: Any, profile: str | None) -> dict[str, Any]:
    cpu, user = _cpu()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return {"paths": count, "cpu_ms": 1000 * (cpu - before[0]) / count, "user_ms": 1000 * (user - before[1]) / count}


def _profiler(profile: str | None) -> Any:
    if profile is None:
        return None
    import cProfile

    profiler = cProfile.Profile(time.process_time)  # CPU, not wall: a send preempted by the sim costs us nothing
    profiler.enable()
    return profiler


def worker(args: argparse.Namespace) -> None:
    import asyncio

    import probe

    floor_before = _floor(args.floor_samples)
    measure = _paths if args.what == "path" else _probes
    figures = asyncio.run(measure(Path(args.sim_dir), args.rounds, args.warmup, args.profile))
    floor = statistics.median([floor_before, _floor(args.floor_samples)])
    figures |= {"floor_ms": 1000 * floor, "ratio": figures["cpu_ms"] / (1000 * floor), "probe": probe.__file__}
    print(json.dumps(figures), flush=True)


# --- the driver ------------------------------------------------------------------------------------------------


def export(ref: str, into: Path) -> Path:
    """A directory holding `probe/` at `ref`: the directory itself, or the commit exported with git archive."""
    if Path(ref).is_dir():
        return Path(ref).resolve()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "probe"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_worker(
    tree: Path,
    sim_dir: Path,
    args: argparse.Namespace,
    profile: str | None = None,
    *,
    rounds: int | None = None,
    under_valgrind: bool = False,
) -> dict[str, Any]:
    from bench.common import VALGRIND, collected_instructions  # the parent's: a worker imports no bench module

    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--sim-dir", str(sim_dir)]
    command += ["--what", args.what, "--rounds", str(rounds or args.rounds), "--warmup", str(args.warmup)]
    command += ["--floor-samples", str(args.floor_samples)]
    if profile:
        command += ["--profile", profile]
    env = dict(os.environ, PYTHONPATH=str(tree))
    if under_valgrind:
        command = [*VALGRIND, *command]
        env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run: counts differ only by the work done
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-path-") as cwd:  # evidence of a failure lands here
        done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"worker for {tree} failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if not Path(figures["probe"]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"worker imported {figures['probe']}, not the tree {tree}")
    if under_valgrind:
        figures["instructions"] = collected_instructions(done.stderr)
    return figures


_FLOOR_SCRIPT = """
import sys
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
for _ in range(int(sys.argv[1])):
    a.exchange(b)
"""


def instructions(versions: dict[str, Path], sim_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    """Instructions per path (or probe) of each version, from the difference of two runs of different lengths
    (start-up cancels out), and of four X25519 operations the same way."""
    from bench.common import VALGRIND, collected_instructions

    per_path: dict[str, float] = {}
    for version, tree in versions.items():
        short = run_worker(tree, sim_dir, args, rounds=1, under_valgrind=True)
        long = run_worker(tree, sim_dir, args, rounds=1 + args.rounds, under_valgrind=True)
        name = "this" if version == "B" else "a"
        per_path[name] = (long["instructions"] - short["instructions"]) / (long["paths"] - short["paths"])
    counts = []
    for exchanges in (100, 100 + 400):
        done = subprocess.run(
            [*VALGRIND, sys.executable, "-c", _FLOOR_SCRIPT, str(exchanges)],
            env=dict(os.environ, PYTHONHASHSEED="0"),
            capture_output=True,
            text=True,
            check=True,
        )
        counts.append(collected_instructions(done.stderr))
    floor = (counts[1] - counts[0]) / 100  # 400 more operations: 100 more floors of four
    figures: dict[str, object] = {"what": args.what, "floor_instructions": round(floor)}
    for name, count in per_path.items():
        figures[f"{name}_instructions"] = round(count)
        figures[f"{name}_instructions_over_floor"] = count / floor
    if "a" in per_path:
        figures["this_over_a_instructions"] = per_path["this"] / per_path["a"]
    return figures


# Where a function's time goes, by the file or built-in it belongs to; first match wins.
_PARTS = (
    ("X25519", ("X25519", "x25519")),
    (
        "handshake (noise, BLAKE2s, messages)",
        (
            "wireguard/handshake",
            "wireguard/crypto",
            "wireguard/messages",
            "wireguard/attempts",
            "wireguard/keys",
            "wireguard/cookie",
            "blake2s",
            "wireguard/identity",
        ),
    ),
    ("transport AEAD + session", ("ChaCha20Poly1305", "wireguard/session")),
    ("socket calls", ("socket' objects", "method 'send' of", "method 'recv' of", "sockets.py", "connect")),
    ("packet codec", ("probe/packets/",)),
    ("stages (exchanges, demux, driver, verdicts)", ("probe/stages/",)),
    ("tunnel shell", ("probe/tunnel.py",)),
    ("runner", ("probe/runner.py",)),
    ("result models (pydantic)", ("pydantic", "probe/results.py")),
    ("event loop", ("asyncio", "selectors", "select' objects", "epoll")),
)


def breakdown(profile: str, top: int) -> dict[str, float]:
    """Print the hottest functions by own time, and own time grouped into the parts of a path."""
    import pstats

    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(top)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    parts: dict[str, float] = {}

    def part_of(filename: str, name: str) -> str:
        where = f"{filename}:{name}"
        return next((label for label, keys in _PARTS if any(k in where for k in keys)), "other")

    for (filename, _line, name), entry in raw.items():
        part = part_of(filename, name)
        if part == "other" and filename == "~":
            # A built-in of no part of its own (len, int.from_bytes, struct packing): its time goes to the parts
            # of the functions that called it, as each of them spent it.
            for (caller_file, _caller_line, caller_name), caller_entry in entry[4].items():
                caller_part = part_of(caller_file, caller_name)
                parts[caller_part] = parts.get(caller_part, 0.0) + caller_entry[2]
            continue
        parts[part] = parts.get(part, 0.0) + entry[2]
    shares = {label: own / total for label, own in sorted(parts.items(), key=lambda kv: -kv[1])}
    for label, share in shares.items():
        print(f"{share:6.1%}  {label}")
    return shares


def alternate(versions: dict[str, Path], sim_dir: Path, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """`args.runs` workers per version, the versions taking turns so both see the machine's drifts alike."""
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in versions}
    for n in range(args.runs):
        for version, tree in versions.items():
            row = run_worker(tree, sim_dir, args)
            rows[version].append(row)
            print(f"run {n + 1} {version}: {row['cpu_ms']:.3f} ms = {row['ratio']:.2f}x", file=sys.stderr)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("path", "probe"), default="path")
    parser.add_argument("--relays", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=25, help="measured rounds over every relay's paths")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="workers per version")
    parser.add_argument("--floor-samples", type=int, default=300)
    parser.add_argument("--ab", metavar="REF|DIR", help="compare this version (A) against this tree (B)")
    parser.add_argument("--profile", metavar="FILE", help="one profiled run of this tree, grouped by part")
    parser.add_argument("--top", type=int, default=30, help="functions listed with --profile")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under valgrind instead (slow, exact)"
    )
    parser.add_argument("--json", metavar="NAME", help="also write bench/results/NAME.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sim-dir", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT))
    from bench.bench_sim import start_sim
    from bench.common import report

    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-path-") as tmp:
        sim = start_sim(Path(tmp) / "sim", args.relays, identities=6)
        try:
            if args.profile:
                run_worker(ROOT, sim.directory, args, profile=str(Path(args.profile).resolve()))
                breakdown(args.profile, args.top)
                return
            versions = {"B": ROOT}
            if args.ab:
                (Path(tmp) / "a").mkdir()
                versions = {"A": export(args.ab, Path(tmp) / "a"), "B": ROOT}
            if args.instructions:
                counted = instructions(versions, sim.directory, args)
            else:
                rows = alternate(versions, sim.directory, args)
        finally:
            sim.stop()
    if args.instructions:
        show(counted, args.json, report)
        return
    figures: dict[str, object] = {"what": args.what, "relays": args.relays, "runs": args.runs}
    for version, found in rows.items():
        name = "this" if version == "B" else "a"
        figures[f"{name}_cpu_ms_median"] = statistics.median(r["cpu_ms"] for r in found)
        figures[f"{name}_user_ms_median"] = statistics.median(r["user_ms"] for r in found)
        figures[f"{name}_floor_ms_median"] = statistics.median(r["floor_ms"] for r in found)
        figures[f"{name}_over_floor_median"] = statistics.median(r["ratio"] for r in found)
        figures[f"{name}_paths_per_run"] = found[0]["paths"]
    if args.ab:
        # Each B run against the A run just before it: the pairs share the machine's state of the moment.
        pairs = [b["cpu_ms"] / a["cpu_ms"] for a, b in zip(rows["A"], rows["B"], strict=True)]
        figures["a_ref"] = args.ab
        figures["this_over_a_paired_median"] = statistics.median(pairs)
    show(figures, args.json, report)


def show(figures: dict[str, object], name: str | None, report: Any) -> None:
    if name:
        report(name, figures)
    else:
        for key, value in figures.items():
            print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}")


if __name__ == "__main__":
    main()
