"""Issue #4 benchmark: `probe server` cold start (whole command: wall and CPU) and the wall time of one healthy path
against the tunnel's own round-trip time, measured in the same run.

A healthy path should cost about two round trips plus a millisecond: the handshake, then every stage's packets at
once. The cold start is compared, run by run in turn, with the start-up of what `probe server` cannot avoid
(importing pydantic, asyncio and cryptography's X25519), and with the first pydantic model class definition added
to that (pydantic's internals load then, not at `import pydantic`).

Two start-ups are measured. "Installed": every module has its bytecode, as after `pip install` (here compiled by
warm-up runs into a temporary PYTHONPYCACHEPREFIX, so the repository gets no __pycache__). "Source": the
repository as this machine's environment runs it (PYTHONDONTWRITEBYTECODE=1, no prefix): wgprobe's own modules
are compiled from source on every start, the dependencies have their bytecode. Run as root:
.venv/bin/python -m bench.bench_server [--runs 30]
`--instructions` counts the cold start in instructions under valgrind instead, against a simulated relay (no root).
`--increments` counts it step by step: what each of wgprobe's parts adds, in instructions (no root).
`--ab DIR` measures only the cold start, of this checkout and another (a worktree of an earlier commit) in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.bench_engine import identities
from bench.common import VALGRIND, BenchLab, bench_lab, collected_instructions, median, report
from probe.agent_config import load_config
from probe.inventory import load_inventory
from probe.lab import DEFAULT_IDENTITIES, fleet
from probe.lab.faults import Fault
from probe.packets import build_icmp_echo
from probe.runner import Prober
from probe.tunnel import Tunnel
from probe.wireguard import PublicKey

BASELINE = "import pydantic, asyncio; from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey"
WITH_MODEL = BASELINE + "\nclass M(pydantic.BaseModel):\n    a: int\nM(a=1)"
REPO = Path(__file__).resolve().parent.parent


def installed_env(prefix: Path) -> dict[str, str]:
    """Bytecode read from (and written to, by the warm-up) `prefix`, for every module: the stdlib's and the
    dependencies' too, since a prefix replaces the __pycache__ directories as the place to look."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(prefix)}


def source_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1"}


def run_once(argv: list[str], env: Mapping[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of `argv`, the CPU its process used (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False, env=env, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr.decode()
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def in_turn(commands: dict[str, list[str]], env: Mapping[str, str], runs: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) of each command, run in turn A B C A B C ..., so all of them see the same machine."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(run_once(argv, env))
    return samples


def cold_start(probe_cmd: list[str], env: Mapping[str, str], runs: int, label: str) -> dict[str, float]:
    """The cold start against both baselines: medians, and the median of the ratios of runs made side by side."""
    py = sys.executable
    samples = in_turn(
        {"cold": probe_cmd, "baseline": [py, "-c", BASELINE], "with_model": [py, "-c", WITH_MODEL]}, env, runs
    )
    cold = samples["cold"]
    figures: dict[str, float] = {}
    for kind, index in (("wall", 0), ("cpu", 1)):
        figures[f"{label}probe_server_cold_{kind}_s_median"] = median([s[index] for s in cold])
        for base, name in (("baseline", "baseline_imports"), ("with_model", "baseline_with_first_model")):
            figures[f"{label}{name}_{kind}_s_median"] = median([s[index] for s in samples[base]])
            ratios = [c[index] / b[index] for c, b in zip(cold, samples[base], strict=True)]
            figures[f"{label}cold_{kind}_over_{name}"] = median(ratios)
    return figures


def cold_starts(probe_cmd: list[str], runs: int) -> dict[str, object]:
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="wgprobe-pycache-") as prefix:
        # Plugins off, as `probe` has them (probe/cli.py): otherwise the first model class's baseline would include
        # the entry-point scan `probe` avoids.
        env = {**installed_env(Path(prefix)), "PYDANTIC_DISABLE_PLUGINS": "__all__"}
        for _ in range(2):  # the warm-up writes the bytecode of every module the commands import
            for argv in (probe_cmd, [py, "-c", WITH_MODEL], [py, "-c", "import probe.cli, probe.runner"]):
                run_once(argv, env)
        walls = in_turn(
            {"python": [py, "-c", "pass"], "imports": [py, "-c", "import probe.cli, probe.runner"]}, env, runs
        )
        figures: dict[str, object] = {
            "cold_start_runs": runs,
            "cold_start_command": "probe" if Path(probe_cmd[0]).name == "probe" else "python -m probe",
            "python_startup_wall_s_median": median([wall for wall, _ in walls["python"]]),
            "imports_wall_s_median": median([wall for wall, _ in walls["imports"]]),
        }
        figures |= cold_start(probe_cmd, env, runs, "")
    figures["source_tree_has_bytecode"] = any(REPO.glob("probe/**/__pycache__"))
    figures |= cold_start(probe_cmd, {**source_env(), "PYDANTIC_DISABLE_PLUGINS": "__all__"}, runs, "source_")
    return figures


def ab_cold_starts(other: Path, probe_args: list[str], runs: int) -> dict[str, object]:
    """`python -m probe ARGS` from this checkout and from `other`, and the baseline, run in turn (this, other,
    baseline, this, ...) against the same lab: paired figures, where the absolute ones move with the machine's load.
    Each runs from its own tree (`-m` puts the working directory first on sys.path), installed (bytecode)."""
    py = sys.executable
    trees = {"this": REPO, "other": other.resolve()}
    with tempfile.TemporaryDirectory(prefix="wgprobe-pycache-") as prefix:
        env = {**installed_env(Path(prefix)), "PYDANTIC_DISABLE_PLUGINS": "__all__"}
        commands: dict[str, tuple[list[str], Path | None]] = {
            **{name: ([py, "-m", "probe", *probe_args], tree) for name, tree in trees.items()},
            "baseline": ([py, "-c", BASELINE], None),
        }
        for _ in range(2):  # the warm-up writes the bytecode
            for argv, cwd in commands.values():
                run_once(argv, env, cwd)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, (argv, cwd) in commands.items():
                samples[name].append(run_once(argv, env, cwd))
    figures: dict[str, object] = {"ab_other": str(other), "ab_runs": runs}
    for kind, index in (("wall", 0), ("cpu", 1)):
        this, that, base = ([s[index] for s in samples[name]] for name in ("this", "other", "baseline"))
        figures[f"ab_this_{kind}_s_median"] = median(this)
        figures[f"ab_other_{kind}_s_median"] = median(that)
        figures[f"ab_this_over_other_{kind}"] = median([a / b for a, b in zip(this, that, strict=True)])
        figures[f"ab_this_{kind}_over_baseline_imports"] = median([a / b for a, b in zip(this, base, strict=True)])
        figures[f"ab_other_{kind}_over_baseline_imports"] = median([a / b for a, b in zip(that, base, strict=True)])
    return figures


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


def counted(argv: list[str], env: Mapping[str, str]) -> int:
    """User-space instructions of one run of `argv` under callgrind (bench/common.py)."""
    done = subprocess.run([*VALGRIND, *argv], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.exit(f"{argv} failed under valgrind ({done.returncode}):\n{done.stderr[-2000:]}")
    return collected_instructions(done.stderr)


@contextmanager
def counting_setup() -> Iterator[tuple[Path, dict[str, str]]]:
    """(agent config, environment) for counting instructions: a simulated relay (`probe sim up`: no root, no lab),
    bytecode read from a temporary prefix as installed, the hash seed fixed (the same dict layouts in every run) and
    pydantic's plugins off, as `probe` has them (probe/cli.py), so the first model class is pydantic's own cost, not
    the entry-point scan `probe` avoids."""
    from bench.bench_sim import start_sim

    with (
        tempfile.TemporaryDirectory(prefix="wgprobe-bench-server-") as tmp,
        tempfile.TemporaryDirectory(prefix="wgprobe-pycache-") as prefix,
    ):
        sim = start_sim(Path(tmp) / "sim", 3, identities=DEFAULT_IDENTITIES)
        try:
            env = {**installed_env(Path(prefix)), "PYTHONHASHSEED": "0", "PYDANTIC_DISABLE_PLUGINS": "__all__"}
            yield sim.directory / "agent.toml", env
        finally:
            sim.stop()


def count_each(commands: list[tuple[str, list[str]]], env: Mapping[str, str]) -> dict[str, int]:
    for _, argv in commands:  # the warm-up writes the bytecode (and fails loudly if a command does)
        run_once(argv, env)
    return {name: counted(argv, env) for name, argv in commands}


def cold_instructions(entry: list[str]) -> dict[str, object]:
    """The cold start in instructions, exact from run to run where wall and CPU time move by +-5% on a shared
    machine: `probe server` against a simulated relay and both baselines, each with its bytecode compiled
    beforehand, as installed."""
    py = sys.executable
    with counting_setup() as (config, env):
        count = count_each(
            [
                ("probe_server", [*entry, "server", "se-got-wg-001", "--config", str(config)]),
                ("baseline", [py, "-c", BASELINE]),
                ("with_model", [py, "-c", WITH_MODEL]),
            ],
            env,
        )
    return {
        "probe_server_instructions": count["probe_server"],
        "baseline_imports_instructions": count["baseline"],
        "baseline_with_first_model_instructions": count["with_model"],
        "instructions_over_baseline_imports": count["probe_server"] / count["baseline"],
        "instructions_over_baseline_with_first_model": count["probe_server"] / count["with_model"],
    }


# The start-up of `probe server` step by step, each program the one before plus one step (`--increments`): what each
# of wgprobe's parts adds in instructions. They begin as `probe` does: its entry module, with pydantic's plugin
# loader deferred (probe/cli.py), then what the baseline imports and pydantic's first model class.
_STEPS: tuple[tuple[str, str], ...] = (
    (
        "entry, baseline imports and first model class",
        "import probe.cli\nprobe.cli._DeferMetadata.install()\n" + WITH_MODEL,
    ),
    ("the config module and what it needs (tomllib, the WireGuard core)", "import probe.config"),
    ("the result models", "import probe.results"),
    (
        "the rest of the engine's modules (packet codec, inventory, tunnel, stages, runner)",
        "import probe.runner, probe.inventory.configured",
    ),
    ("reading and validating the config", "config = probe.config.load_probe_config(CONFIG)"),
    (
        "reading and validating the inventory",
        "inventory = probe.inventory.configured.ConfiguredInventory(config.inventory).load()",
    ),
)


def cold_increments(entry: list[str]) -> dict[str, object]:
    """`probe server`'s cold start in instructions as increments (see _STEPS), the last one the whole command:
    the probe itself, its parser, its output and its exit. Against a simulated relay, bytecode compiled first."""
    py = sys.executable
    with counting_setup() as (config, env):
        program = f"from pathlib import Path\nCONFIG = Path({str(config)!r})"
        commands: list[tuple[str, list[str]]] = []
        for name, step in _STEPS:
            program += "\n" + step
            # Left as `probe server` leaves (os._exit): an interpreter shutdown would grow with each step's
            # modules and make the last increment, the real command, look cheaper than it is.
            commands.append((name, [py, "-c", program + "\nimport os\nos._exit(0)"]))
        last = "the probe itself, the parser, the output and the exit"
        commands.append((last, [*entry, "server", "se-got-wg-001", "--config", str(config)]))
        counts = count_each(commands, env)
    steps: dict[str, int] = {}
    before = 0
    for name, count in counts.items():  # in the order of the steps
        steps[name] = count - before
        before = count
    return {"increments_instructions": steps, "probe_server_instructions": counts[last]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="the cold start in instructions under valgrind instead (no root; writes server_instructions.json)",
    )
    parser.add_argument(
        "--increments",
        action="store_true",
        help="the cold start in instructions step by step, part by part (no root; writes server_increments.json)",
    )
    parser.add_argument(
        "--ab",
        type=Path,
        metavar="DIR",
        help="only the cold start, of this checkout and the one in DIR in turn (writes server_ab.json)",
    )
    args = parser.parse_args()
    # The command as a user runs it: the console script if installed, else `python -m probe`.
    script = Path(sys.executable).with_name("probe")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "probe"]
    if args.instructions:
        report("server_instructions", cold_instructions(entry))
        return
    if args.increments:
        report("server_increments", cold_increments(entry))
        return
    if args.ab is not None:
        with bench_lab(3) as lab:
            probe_args = ["server", "se-got-wg-001", "--config", str(lab.lab_dir / "agent.toml")]
            report("server_ab", ab_cold_starts(args.ab, probe_args, args.runs))
        return
    with bench_lab(3) as lab:
        config = lab.lab_dir / "agent.toml"
        starts = cold_starts([*entry, "server", "se-got-wg-001", "--config", str(config)], args.runs)
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
            **starts,
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
