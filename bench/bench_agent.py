"""Issue 8's budget benchmark: what `probe agent` costs on the default schedule, and how large a fleet it keeps up with.

Every process is real: `probe sim up --relays N` (the simulated fleet), a real mosquitto with password file and ACL
on a free loopback port (tests/integration/broker.py), `probe agent` with the sim's agent config plus [mqtt], and a
subscriber in this process that reads every result the broker delivers and counts it under its round.

Pinning: the machine has two cores and the sim, the broker and this subscriber cost CPU too. The agent runs on CPU 0
(`taskset`), everything else on CPU 1, so the agent's figure is its own: user + system time of its process (every
thread) from /proc/PID/stat, sampled at round boundaries (round r starts at r * interval, Unix time, as the agent
counts them). Each window is one round; the first rounds after start-up are a warm-up. Figures are medians over the
windows. The baseline measured in the same run (on CPU 0, before and after the fleets) is the X25519 floor: four
X25519 operations, the crypto one path's handshake cannot avoid.

"Keeps up" means, for every measured round: a result from every relay, each with all of that round's paths (main
port on both families plus the round's share of the rotating ones), no `probe_overrun` in the agent's log, and no
path failing (the fleet is healthy: a failure means a reply was read too late). What the probes measured is reported
too (the handshake's time and the forward stage's round trip, medians and p90 over every path): on loopback the true
figures are small, so these show how long answers waited, in the simulated fleet's one process or in the agent.
Run as root (the broker runs as root like the tests' one):

    .venv/bin/python -m bench.bench_agent [--relays 522] [--windows 8] [--sweep 1000,1500,2000] [--sweep-windows 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agents.schedule import DEFAULT_ROTATION_ROUNDS, Job, offset, paths_for
from bench.common import median, report
from probe.inventory import Inventory, load_inventory
from probe.messages import RESULTS_FILTER
from probe.mqtt import BrokerUnavailable, connect
from tests.integration.broker import AGGREGATOR_USER, Mosquitto, free_port

AGENT = "sim-agent"  # `probe sim up`'s first agent; the broker user must be the same (ACL %u)
AGENT_CPU = 0
OTHERS_CPU = 1
INTERVAL = 15.0  # the default schedule; the agent's config does not set it
_TICK = os.sysconf("SC_CLK_TCK")
_OPEN_FILES_MARGIN = 200
# One port per extended range: the same 12 paths per relay as the default layout (main + 5 ranges, 2 families) with
# 6 sockets per relay instead of 9, so the sim's open-file limit allows larger fleets.
LEAN_PORT_RANGES = "5300,12300,4000,33565,52001"


# --- processes ------------------------------------------------------------------------------------------------------


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def memory_mb(pid: int, name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {name} for {pid}")


def affinity(pid: int) -> list[int]:
    """The CPUs any thread of `pid` may run on."""
    cpus: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        cpus |= os.sched_getaffinity(int(tid))
    return sorted(cpus)


def runqueue_wait(pid: int) -> float:
    """Seconds the main thread of `pid` (the agent's event loop) was ready to run but waited for a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def cpu_times() -> dict[str, float]:
    """Per CPU, seconds so far: busy (everything but idle, iowait and steal) and stolen by the hypervisor."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
            times[f"{name}_busy"] = (user + nice + system + irq + softirq) / _TICK
            times[f"{name}_steal"] = steal / _TICK
    return times


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM by PID, SIGKILL if it does not end in time; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def start_sim(directory: Path, relays: int, port_ranges: str | None, output: Path) -> subprocess.Popen[bytes]:
    """`probe sim up` on the others' CPU, its output to a file (a pipe nobody reads would fail its last line)."""
    extra = [] if port_ranges is None else ["--port-ranges", port_ranges]
    command = [sys.executable, "-m", "probe", "sim", "up", "--dir", str(directory), "--relays", str(relays), *extra]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(OTHERS_CPU), *command], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 120
    while b"\nready" not in b"\n" + output.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            sys.exit(f"probe sim up did not get ready: {output.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc


def agent_config(sim_dir: Path, broker: Mosquitto | None, work: Path, packets: int | None = None) -> Path:
    """The sim's agent config with [http] and, for `probe agent`, [mqtt] and [spool] added; the schedule and probe
    settings are defaults (`packets`, when given, sets [probe] packets: answers wanted per stage)."""
    text = (sim_dir / "agent.toml").read_text() + f'\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
    text += f'[probe]\nevidence_dir = "{work / "evidence"}"\n' + ("" if packets is None else f"packets = {packets}\n")
    if broker is not None:
        credentials = broker.users.get(AGENT) or broker.add_user(AGENT)
        text += f'[mqtt]\nurl = "{broker.url}"\nusername = "{AGENT}"\npassword_file = "{credentials.password_file}"\n'
        text += f'[spool]\npath = "{work / "spool.sqlite"}"\n'
    config = sim_dir / "agent-bench.toml"
    config.write_text(text)
    return config


def start_agent(config: Path, log: Path, command: str = "agent") -> subprocess.Popen[bytes]:
    """`probe agent` (or `probe serve`: the agent and an aggregator in one process, no broker) on the agent's CPU."""
    argv = [sys.executable, "-m", "probe", command, "--config", str(config), "--log-format", "json"]
    with log.open("wb") as stderr:
        return subprocess.Popen(
            ["taskset", "-c", str(AGENT_CPU), *argv], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )


def probes_by_outcome(listen: str, prefix: str) -> dict[str, float]:
    """The agent's wgprobe_agent_probes_total by outcome, from its /metrics."""
    url = f"http://{listen}{prefix}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("wgprobe_agent_probes_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


# --- what the broker delivers ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    relay: str
    round: int
    paths: int
    failed_paths: int
    start_lag: float  # seconds from the relay's slot to the probe's start
    duration: float
    delivery: float  # seconds from the probe's end to its arrival here, through agent spool, broker, subscriber
    arrived: float
    # What the probes measured, per path: the handshake's time and the forward stage's round trip. On loopback the
    # true figures are a fraction of a millisecond, so what shows here is the agent's own delay in reading answers
    # (its event loop busy with other paths): how many relays start together is paid here.
    handshake: tuple[float, ...] = ()
    forward_rtt: tuple[float, ...] = ()


@dataclass
class Tally:
    by_round: dict[int, list[Seen]] = field(default_factory=lambda: defaultdict(list))
    reasons: Counter[tuple[int, str]] = field(default_factory=Counter)  # failed paths: (round, reason)
    undecodable: int = 0

    def add(self, payload: bytes, arrived: float) -> None:
        try:
            doc = json.loads(payload)
            started = datetime.fromisoformat(doc["started_at"]).timestamp()
            number = int(doc["round"])
            seen = Seen(
                relay=doc["server"],
                round=number,
                paths=len(doc["paths"]),
                failed_paths=sum(1 for path in doc["paths"] if not path["ok"]),
                start_lag=started - (number * INTERVAL + offset(doc["server"], INTERVAL)),
                duration=float(doc["duration_seconds"]),
                delivery=arrived - started - float(doc["duration_seconds"]),
                arrived=arrived,
                handshake=_stage_seconds(doc, "handshake"),
                forward_rtt=_stage_seconds(doc, "forward"),
            )
        except (ValueError, KeyError, TypeError):
            self.undecodable += 1
            return
        self.by_round[number].append(seen)
        self.reasons.update((number, str(path["reason"])) for path in doc["paths"] if not path["ok"])


def _stage_seconds(doc: dict[str, Any], stage: str) -> tuple[float, ...]:
    """The `seconds` of stage `stage` on every path of a result where it passed."""
    return tuple(float(s["seconds"]) for path in doc["paths"] for s in path["stages"] if s["name"] == stage and s["ok"])


async def subscribe(broker: Mosquitto, tally: list[Tally], ready: asyncio.Event) -> None:
    """Every result the broker delivers, counted in the current run's tally (`tally[0]`)."""
    async with connect(broker.section(AGGREGATOR_USER), "bench-agent-counter") as connection:
        await connection.subscribe([RESULTS_FILTER])
        ready.set()
        while True:
            message = await connection.receive()
            if message is not None and not message.retain:
                tally[0].add(message.payload, time.time())


# --- one fleet ------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    relays: int
    windows: int
    warmup: int
    port_ranges: str | None
    packets: int | None = None
    serve: bool = False


def expected_paths(inventory: Inventory, number: int) -> dict[str, int]:
    """How many paths each relay's result should carry in round `number`."""
    job = Job("", number, 0.0, 0.0, number // DEFAULT_ROTATION_ROUNDS, number % DEFAULT_ROTATION_ROUNDS)
    return {
        relay.name: len(paths_for(relay, job, main_port=None, rotation_rounds=DEFAULT_ROTATION_ROUNDS))
        for relay in inventory.relays
    }


def sample(pids: dict[str, int]) -> dict[str, float]:
    values = {name: cpu_seconds(pid) for name, pid in pids.items()}
    values["agent_system"] = cpu_split(pids["agent"])[1]
    values["agent_waited"] = runqueue_wait(pids["agent"])
    values |= cpu_times()
    values["wall"] = time.time()
    return values


async def until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)] if ordered else float("nan")


async def run_fleet(run: Run, broker: Mosquitto, tally: list[Tally], work: Path) -> dict[str, object]:
    """Sim and agent (or `probe serve`) for `run.relays` relays; the figures of the measured rounds."""
    work.mkdir(parents=True)
    sim_dir, log = work / "sim", work / "agent.log"
    sim = start_sim(sim_dir, run.relays, run.port_ranges, work / "sim.log")
    agent: subprocess.Popen[bytes] | None = None
    counts: list[dict[str, float]] = []
    try:
        inventory = load_inventory(sim_dir / "relays.json")
        tally[0] = Tally()
        config = agent_config(sim_dir, None if run.serve else broker, work, run.packets)
        listen = tomllib.loads(config.read_text())["http"]["listen"]
        agent = start_agent(config, log, "serve" if run.serve else "agent")
        pids = {"agent": agent.pid, "sim": sim.pid, "broker": _pid(broker), "bench": os.getpid()}
        first = math.floor(time.time() / INTERVAL) + 1 + run.warmup  # the round in progress is partial for the agent
        rounds = list(range(first, first + run.windows))
        await until(first * INTERVAL)
        samples = [sample(pids)]
        pinned = {name: affinity(pid) for name, pid in pids.items()}
        for number in [*rounds, None]:
            if run.serve:
                counts.append(await asyncio.to_thread(probes_by_outcome, listen, "/agent"))
            if number is not None:
                await until((number + 1) * INTERVAL)
                samples.append(sample(pids))
        rss = {"agent_rss_mb": memory_mb(agent.pid), "agent_rss_peak_mb": memory_mb(agent.pid, "VmHWM")}
        rss["sim_rss_mb"] = memory_mb(sim.pid)
        await until((rounds[-1] + 2) * INTERVAL + 2.0)  # a probe due at a round's end may run one more interval
        if run.serve:
            counts.append(await asyncio.to_thread(probes_by_outcome, listen, "/agent"))
        agent_exit = await asyncio.to_thread(stop_process, agent)
    finally:
        if agent is not None:
            await asyncio.to_thread(stop_process, agent)
        sim_exit = await asyncio.to_thread(stop_process, sim)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    figures: dict[str, object] = {
        "command": "probe serve" if run.serve else "probe agent",
        "relays": run.relays,
        "sim_ports_per_relay": _ports(run.port_ranges),
        "probe_packets": run.packets or "default",
    }
    if run.serve:  # no broker to count at: the paths the schedule gives, and the agent's own counters
        paths = {n: sum(expected_paths(inventory, n).values()) for n in rounds}
        figures |= window_figures(samples, rounds, paths)
        figures |= serve_keeping_up(run.relays, counts, events)
    else:
        paths = {n: sum(seen.paths for seen in tally[0].by_round[n]) for n in rounds}
        figures |= window_figures(samples, rounds, paths)
        figures |= keeping_up(rounds, tally[0], inventory, events)
    figures |= rss
    with (work / "results.jsonl").open("w") as out:  # every result seen, for a look at the run afterwards (--keep)
        for number in sorted(tally[0].by_round):
            out.writelines(json.dumps(dataclasses.asdict(seen)) + "\n" for seen in tally[0].by_round[number])
    figures |= {"agent_exit_code": agent_exit, "sim_exit_code": sim_exit, "pinning": pinned}
    return figures


def serve_keeping_up(relays: int, counts: list[dict[str, float]], events: list[dict[str, object]]) -> dict[str, object]:
    """`probe serve`: relay probes finished per measured round (by the agent's counters), none failed or overrun."""
    per_round = [after.get("ok", 0) - before.get("ok", 0) for before, after in itertools.pairwise(counts[:-1])]
    last, start = counts[-1], counts[0]
    bad = {outcome: last.get(outcome, 0) - start.get(outcome, 0) for outcome in ("failed", "overrun", "error")}
    overruns = [e for e in events if e.get("event") == "probe_overrun"]
    return {
        "kept_up": not overruns and not any(bad.values()) and min(per_round) >= relays - 2,
        "ok_probes_per_round_min": min(per_round),
        "ok_probes_per_round_max": max(per_round),
        "failed_probes": bad["failed"],
        "overrun_probes": bad["overrun"],
        "error_probes": bad["error"],
        "probe_overruns_whole_run": len(overruns),
    }


def _pid(broker: Mosquitto) -> int:
    assert broker.process is not None
    return broker.process.pid


def _ports(port_ranges: str | None) -> int:
    if port_ranges is None:
        return 9  # probe.sim.plan.DEFAULT_PORT_RANGES: main + 1 + 1 + 2 + 2 + 2
    return 1 + sum(
        1 if "-" not in part else int(part.split("-")[1]) - int(part.split("-")[0]) + 1
        for part in port_ranges.split(",")
    )


def window_figures(samples: list[dict[str, float]], rounds: list[int], paths_in: dict[int, int]) -> dict[str, object]:
    """Per window (one round each): CPU shares of one core, and the agent's CPU per path; medians, and the spread."""
    rows = []
    for before, after, number in zip(samples[:-1], samples[1:], rounds, strict=True):
        wall = after["wall"] - before["wall"]
        paths = paths_in[number]
        agent = after["agent"] - before["agent"]
        rows.append(
            {
                "agent_cpu_share": agent / wall,
                "agent_cpu_ms_per_path": 1000 * agent / paths if paths else float("nan"),
                "agent_system_share_of_cpu": (after["agent_system"] - before["agent_system"]) / agent,
                # Other work on the agent's CPU (this machine is shared) shows here, not in the agent's CPU time.
                "agent_runqueue_wait_share": (after["agent_waited"] - before["agent_waited"]) / wall,
                "paths_per_s": paths / wall,
                "sim_cpu_share": (after["sim"] - before["sim"]) / wall,
                "broker_cpu_share": (after["broker"] - before["broker"]) / wall,
                "subscriber_cpu_share": (after["bench"] - before["bench"]) / wall,
                **{
                    f"cpu{n}_{what}_share": (after[f"cpu{n}_{what}"] - before[f"cpu{n}_{what}"]) / wall
                    for n in (AGENT_CPU, OTHERS_CPU)
                    for what in ("busy", "steal")
                },
            }
        )
    figures: dict[str, object] = {f"{key}_median": median([row[key] for row in rows]) for key in rows[0]}
    shares = [row["agent_cpu_share"] for row in rows]
    figures |= {"agent_cpu_share_min": min(shares), "agent_cpu_share_max": max(shares), "windows": len(rows)}
    return figures


def keeping_up(
    rounds: list[int], tally: Tally, inventory: Inventory, events: list[dict[str, object]]
) -> dict[str, object]:
    missing = short = failed = results = 0
    seen_all: list[Seen] = []
    for number in rounds:
        expected = expected_paths(inventory, number)
        got = {seen.relay: seen for seen in tally.by_round[number]}
        missing += len(set(expected) - set(got))
        short += sum(1 for name, seen in got.items() if seen.paths < expected.get(name, 0))
        failed += sum(seen.failed_paths for seen in got.values())
        results += len(tally.by_round[number])
        seen_all += got.values()
    reasons: Counter[str] = Counter()
    for (number, reason), count in tally.reasons.items():
        if number in rounds:
            reasons[reason] += count
    overruns = [e for e in events if e.get("event") == "probe_overrun"]
    errors = [e for e in events if e.get("level") == "error" or e.get("event") == "probe_error"]
    kept_up = missing == 0 and short == 0 and failed == 0 and not overruns and not errors
    return {
        "kept_up": kept_up,
        "results_per_round_min": min(len({s.relay for s in tally.by_round[n]}) for n in rounds),
        "results_missing": missing,
        "results_short_of_paths": short,
        "results_duplicated": results - len(seen_all),
        "failed_paths": failed,
        "failed_path_reasons": dict(reasons.most_common()),
        "probe_overruns_whole_run": len(overruns),
        "error_lines_whole_run": len(errors),
        "undecodable_results": tally.undecodable,
        "start_lag_ms_median": 1000 * median([s.start_lag for s in seen_all]),
        "start_lag_ms_p99": 1000 * percentile([s.start_lag for s in seen_all], 0.99),
        "probe_wall_ms_median": 1000 * median([s.duration for s in seen_all]),
        "probe_wall_ms_p99": 1000 * percentile([s.duration for s in seen_all], 0.99),
        "delivery_ms_median": 1000 * median([s.delivery for s in seen_all]),
        "delivery_ms_p99": 1000 * percentile([s.delivery for s in seen_all], 0.99),
        "handshake_ms_median": 1000 * median([x for s in seen_all for x in s.handshake]),
        "handshake_ms_p90": 1000 * percentile([x for s in seen_all for x in s.handshake], 0.90),
        "forward_rtt_ms_median": 1000 * median([x for s in seen_all for x in s.forward_rtt]),
        "forward_rtt_ms_p90": 1000 * percentile([x for s in seen_all for x in s.forward_rtt], 0.90),
    }


# --- baseline -------------------------------------------------------------------------------------------------------


def crypto_floor(count: int = 2000) -> float:
    """Median CPU seconds of four X25519 operations, measured on the agent's CPU (nothing else is pinned there)."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {AGENT_CPU})
    try:
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        pub = b.public_key()
        samples = []
        for _ in range(count):
            c0 = time.process_time()
            for _ in range(4):
                a.exchange(pub)
            samples.append(time.process_time() - c0)
        return median(samples)
    finally:
        os.sched_setaffinity(0, mine)


def imports_rss_mb() -> float:
    """RSS of a Python process that has imported what `probe agent` imports and done nothing else: the part of the
    agent's memory that does not grow with the fleet."""
    modules = "probe.cli, agents.cli, agents.agent, agents.outbox, agents.spool, agents.http, probe.runner, probe.mqtt"
    code = f"import {modules}; from bench.bench_agent import memory_mb; import os; print(memory_mb(os.getpid()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout)


# --- main -----------------------------------------------------------------------------------------------------------


def port_ranges_for(relays: int, lean: bool) -> str | None:
    """The sim's default layout while the open-file limit allows it, else one port per range (the same paths)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fits = hard == resource.RLIM_INFINITY or relays * 9 + _OPEN_FILES_MARGIN <= hard
    return None if fits and not lean else LEAN_PORT_RANGES


async def bench(args: argparse.Namespace, work: Path) -> dict[str, object]:
    figures: dict[str, object] = {
        "interval_seconds": INTERVAL,
        "agent_cpu": AGENT_CPU,
        "others_cpu": OTHERS_CPU,
        "niceness": os.nice(0),
    }
    floor_before = crypto_floor()
    broker = Mosquitto(work / "broker")
    broker.start()
    tally = [Tally()]
    ready = asyncio.Event()
    counter = asyncio.create_task(subscribe(broker, tally, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        runs = [Run(args.relays, args.windows, args.warmup, port_ranges_for(args.relays, lean=False), args.packets)]
        runs += [
            Run(n, args.sweep_windows, args.warmup, port_ranges_for(n, args.lean), args.packets) for n in args.sweep
        ]
        sweep: list[dict[str, object]] = []
        for number, run in enumerate(runs):
            # A shared machine's other work can cost a run a few paths (replies read late): a fleet that was missed
            # is run again before the sweep ends, and both attempts are reported.
            for attempt in range(1 if number == 0 else args.attempts):
                print(f"{run.relays} relays, {run.warmup} warm-up rounds, {run.windows} windows ...", flush=True)
                result = await run_fleet(run, broker, tally, work / f"run-{number}-{attempt}")
                result["attempt"] = attempt + 1
                print(json.dumps(result), flush=True)
                if number == 0:
                    figures["budget"] = result
                else:
                    sweep.append(result)
                if result["kept_up"]:
                    break
            if number > 0 and not result["kept_up"]:
                break
        if args.serve:
            run = Run(
                args.relays, args.windows, args.warmup, port_ranges_for(args.relays, lean=False), args.packets, True
            )
            print(f"probe serve, {run.relays} relays, {run.windows} windows ...", flush=True)
            figures["serve"] = await run_fleet(run, broker, tally, work / "run-serve")
            print(json.dumps(figures["serve"]), flush=True)
    finally:
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError, BrokerUnavailable):
            await counter
        broker.stop()
    floor = median([floor_before, crypto_floor()])
    figures["imports_rss_mb"] = imports_rss_mb()
    figures["x25519_x4_cpu_ms_median"] = 1000 * floor
    summarise(figures, sweep, floor)
    figures["sweep"] = sweep
    return figures


_MISS_KEYS = (
    "agent_cpu_share_median",
    "agent_runqueue_wait_share_median",
    "cpu0_busy_share_median",
    "cpu0_steal_share_median",
    "cpu1_busy_share_median",
    "results_missing",
    "results_short_of_paths",
    "failed_paths",
    "failed_path_reasons",
    "probe_overruns_whole_run",
    "start_lag_ms_p99",
)


def summarise(figures: dict[str, object], sweep: list[dict[str, object]], floor: float) -> None:
    budget = figures["budget"]
    assert isinstance(budget, dict)
    per_path = budget["agent_cpu_ms_per_path_median"]
    figures["budget_relays"] = budget["relays"]
    figures["budget_agent_cpu_share_median"] = budget["agent_cpu_share_median"]
    figures["budget_target_share"] = 0.25
    figures["budget_kept_up"] = budget["kept_up"]
    figures["budget_agent_cpu_ms_per_path_median"] = per_path
    figures["budget_cpu_per_path_over_x25519_floor"] = float(per_path) / (1000 * floor)
    kept = [row for row in [budget, *sweep] if row["kept_up"]]
    if kept:
        largest = max(kept, key=lambda row: int(str(row["relays"])))
        figures["largest_kept_up_relays"] = largest["relays"]
        figures["largest_kept_up_agent_cpu_share_median"] = largest["agent_cpu_share_median"]
    kept_sizes = {row["relays"] for row in kept}
    missed = [row for row in sweep if not row["kept_up"]]
    figures["first_missed_relays"] = next((row["relays"] for row in missed if row["relays"] not in kept_sizes), None)
    figures["missed_attempts"] = [
        {key: row[key] for key in ("relays", "attempt", *_MISS_KEYS)} for row in [budget, *sweep] if not row["kept_up"]
    ]
    serve = figures.get("serve")
    if isinstance(serve, dict):
        figures["serve_cpu_share_median"] = serve["agent_cpu_share_median"]
        figures["serve_kept_up"] = serve["kept_up"]
    at_1000 = [row for row in [budget, *sweep] if row["relays"] == 1000]
    if at_1000:
        figures["rss_mb_at_1000_relays"] = at_1000[0]["agent_rss_mb"]
        figures["rss_mb_peak_at_1000_relays"] = at_1000[0]["agent_rss_peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--relays", type=int, default=522, help="the budget run (the real Mullvad list's size)")
    parser.add_argument("--windows", type=int, default=8, help="measured rounds of the budget run")
    parser.add_argument("--warmup", type=int, default=2, help="whole rounds before measuring")
    parser.add_argument(
        "--sweep",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[1000, 1250, 1500, 1750, 2000],
        help='larger fleets, in order, until one is not kept up with ("" for none)',
    )
    parser.add_argument("--sweep-windows", type=int, default=4)
    parser.add_argument("--nice", type=int, default=-20, help="niceness increment of the benchmark's processes")
    parser.add_argument("--packets", type=int, help="[probe] packets for every run (default: the config default)")
    parser.add_argument("--attempts", type=int, default=2, help="runs of a sweep fleet before it counts as missed")
    parser.add_argument("--keep", type=Path, help="work in this new directory and keep it (logs, configs, spools)")
    parser.add_argument("--serve", action="store_true", help="also `probe serve` (agent + aggregator) at --relays")
    parser.add_argument("--lean", action="store_true", help="sweep with one port per range (6 sockets per relay)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the broker is started as root, as in the integration tests")
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        sys.exit("needs two CPUs: the agent on one, the fleet, broker and subscriber on the other")
    os.sched_setaffinity(0, {OTHERS_CPU})  # this process, and the broker it starts, stay off the agent's CPU
    # On a shared machine other work lands on both CPUs: a higher priority for every process of the benchmark (the
    # children inherit it) keeps that work from delaying the agent's reads, which would show as failed paths.
    os.nice(args.nice)
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-agent-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        figures = asyncio.run(bench(args, work))
    report("agent", figures)


if __name__ == "__main__":
    main()
