"""Issue 9 benchmark, the service end to end: results ingested per second by the store alone and by a real
`probe aggregator` process behind a real mosquitto; /metrics at 1,000 relays x 3 agents x 12 paths; time to detect a
relay broken with `probe lab break` (and healed) at the default and at a short interval.

Baselines in the same run: `ResultMessage.model_validate_json` (the contract's model) and the compiled reader the
store runs (probe/aggregator/wire.py) for the store (bench_aggregator's code); for the
broker path, two subscribers that only count what the same publishers send through the same mosquitto: a paho one
(what the broker and an MQTT client in Python deliver at most, before any of our work) and a raw one
(bench/mqtt_raw.py: what the broker delivers to one connection at most on this machine); for time to detect, the
interval. CPU seconds of every process (aggregator, broker, publishers) say where the time goes. The publishers
write prebuilt QoS 1 packets to a plain socket (bench/mqtt_raw.py says why); `--paho-publishers` publishes through
paho instead, as agents do.

Needs root for the lab part (a lab of its own, prefix wgbs):
    .venv/bin/python -m bench.bench_service [--messages 30000] [--publishers 3] [--breaks 5] [--default-breaks 3]
    .venv/bin/python -m bench.bench_service --no-lab        # ingest figures only
    .venv/bin/python -m bench.bench_service --no-lab --ab ../main   # and the aggregator of another checkout, in turn

`--ab DIR` runs `probe aggregator` from another checkout (its source tree first on PYTHONPATH) and from this one in
turn, `--ab-rounds` times each, behind the same broker and publishers: on a shared machine whose load moves from
minute to minute, the paired figures (CPU per message, steady rate) say what a change did where absolute ones do
not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from bench.bench_aggregator import (
    AGENTS,
    INTERVAL,
    ingest_figures,
    make_rounds,
    metrics_figures,
    one_result,
    relay_names,
)
from bench.common import median, report
from bench.mqtt_raw import RawPublisher, RawSubscriber, packet_id, publish_packet
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory
from probe.inventory import Inventory
from probe.messages import result_topic
from tests.integration.broker import Mosquitto
from tests.integration.service_process import AgentProcess, AggregatorProcess, server_up, service_tables

LAB_PREFIX = os.environ.get("WGPROBE_BENCH_SERVICE_PREFIX", "wgbs")
LAB_SERVERS = 4
FAST_PROBE = "\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
POLL = 0.5  # seconds between polls of the aggregator while it ingests
DETECT_POLL = 0.1  # seconds between scrapes while waiting for a verdict
PORT_RANGES = "[53, 123, [4000, 33433], [33565, 51820], [52001, 60000]]"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the store alone and /metrics (bench_aggregator's code, at the size) --------------------------------


def store_figures(relays: int, rounds: int) -> dict[str, float]:
    inventory = make_inventory(relay_names(relays))
    clock = FakeClock(1_800_000_000.0)
    every = make_rounds(inventory.names, rounds + 4, clock.at + 1)
    store = ResultStore(inventory, now=clock)
    ingest = ingest_figures(store, every[:rounds], clock)
    served = metrics_figures(store, every[rounds:], clock)
    body = _render(store)
    return {
        "store_validate_json_us_median": ingest["validate_us"],
        "store_read_json_us_median": ingest["read_us"],
        "store_ingest_us_median": ingest["ingest_us"],
        "store_ingest_results_per_cpu_s": 1e6 / ingest["ingest_us"],
        "store_validate_results_per_cpu_s": 1e6 / ingest["validate_us"],
        "metrics_render_round_unwritten_ms_median": served["metrics_render_round_unwritten_ms_median"],
        "metrics_render_round_followed_ms_median": served["metrics_render_round_followed_ms_median"],
        "metrics_render_nothing_new_ms_median": served["metrics_render_nothing_new_ms_median"],
        "metrics_written_on_arrival_us_median": served["metrics_written_on_arrival_us_median"],
        "metrics_bytes": float(len(body)),
    }


def _render(store: ResultStore) -> bytes:
    from probe.aggregator.metrics import MetricsRenderer

    return MetricsRenderer(store).render()


# -- end to end through mosquitto ---------------------------------------------------------------------------------


def write_inventory(path: Path, inventory: Inventory) -> None:
    """The relays as a wgprobe fleet TOML (probe/inventory/fleet.py) for the aggregator process."""
    lines = [f"[defaults]\nmain_port = 51820\nport_ranges = {PORT_RANGES}\n"]
    for relay in inventory.relays:
        lines.append(
            f'[[relays]]\nname = "{relay.name}"\npublic_key = "{relay.public_key}"\n'
            f'ipv4 = "{relay.ipv4_addr_in}"\nipv6 = "{relay.ipv6_addr_in}"\nlocation = "{relay.location}"\n'
        )
    path.write_text("\n".join(lines))


def publisher_main(spec_file: str) -> None:
    """A publisher process: build its results, say `ready`, wait for `go` on stdin, publish them all (QoS 1,
    retained, as agents do) with many in flight, say `done SECONDS` once every PUBACK is in.

    By default the packets are built before `ready` and written by bench/mqtt_raw.py (a few microseconds of CPU a
    message); with `paho` set, paho-mqtt publishes them as an agent's outbox would (~0.15-0.2 ms a message, which
    on this 2-core machine takes a core from the broker and the subscriber at 5,000 messages a second)."""
    spec = json.loads(Path(spec_file).read_text())
    agent, relays, count = spec["agent"], spec["relays"], spec["count"]
    rng = random.Random(spec["seed"])
    taken = time.time()
    # Ids unique across runs: the aggregator de-duplicates by (agent, result_id).
    tag = f'"result_id":"{spec["run"]}-'.encode()
    payloads = [
        (
            result_topic(agent, relays[n % len(relays)]),
            one_result(relays[n % len(relays)], agent, n, taken, rng).replace(b'"result_id":"', tag),
        )
        for n in range(count)
    ]
    password = Path(spec["password_file"]).read_text().strip()
    if spec.get("paho"):
        _publish_paho(spec, agent, password, payloads)
        return
    packets = [publish_packet(topic, body, packet_id(n)) for n, (topic, body) in enumerate(payloads)]
    client = RawPublisher("127.0.0.1", spec["port"], f"bench-{agent}", agent, password)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    client.publish_all(packets)
    print(f"done {time.perf_counter() - started:.3f}", flush=True)
    client.close()


def _publish_paho(spec: dict[str, Any], agent: str, password: str, payloads: list[tuple[str, bytes]]) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    acked = threading.Event()
    pending = [len(payloads)]

    def on_publish(client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        pending[0] -= 1
        if pending[0] == 0:
            acked.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{agent}", protocol=paho.MQTTv5)
    client.username_pw_set(agent, password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", spec["port"])
    client.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for topic, body in payloads:
        client.publish(topic, body, qos=1, retain=True)
    acked.wait(600)
    print(f"done {time.perf_counter() - started:.3f}", flush=True)
    client.disconnect()
    client.loop_stop()


@dataclass
class Publishers:
    procs: list[subprocess.Popen[str]]
    paho: ClassVar[bool] = False  # publish through paho-mqtt rather than prebuilt packets (--paho-publishers)

    @classmethod
    def start(cls, broker: Mosquitto, directory: Path, relays: list[str], count: int, n: int) -> Publishers:
        procs = []
        for index in range(n):
            agent = f"bench-agent-{index + 1}"
            credentials = broker.users.get(agent) or broker.add_user(agent)
            spec = directory / f"{agent}.json"
            spec.write_text(
                json.dumps(
                    {
                        "agent": agent,
                        "relays": relays,
                        "count": count,
                        "seed": index,
                        "run": os.urandom(4).hex(),
                        "port": broker.port,
                        "password_file": str(credentials.password_file),
                        "paho": cls.paho,
                    }
                )
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.bench_service", "publish", str(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return cls(procs)

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def finish(self) -> list[float]:
        seconds = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            seconds.append(float(line[1]) if line[:1] == ["done"] else math.nan)
            proc.wait(60)
        return seconds

    def cpu(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.procs if proc.poll() is None)


def bare_subscriber_rate(broker: Mosquitto, directory: Path, relays: list[str], count: int, n: int) -> dict[str, float]:
    """The baseline: a paho subscriber that only counts, receiving what the same publishers send."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.subscribeoptions import SubscribeOptions

    total = count * n
    received = [0]
    first: list[float] = []
    last = [0.0]
    done = threading.Event()

    def on_message(client: paho.Client, userdata: Any, message: Any) -> None:
        if message.retain:
            return  # the retained state of an earlier run, on subscribe
        if not first:
            first.append(time.perf_counter())
        received[0] += 1
        last[0] = time.perf_counter()
        if received[0] >= total:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
    credentials = broker.users["aggregator"]
    client.username_pw_set("aggregator", credentials.password_file.read_text().strip())
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("wgprobe/v1/results/+/+", options=SubscribeOptions(qos=1))
    client.loop_start()
    time.sleep(1.0)
    publishers = Publishers.start(broker, directory, relays, count, n)
    cpu_before = time.process_time()  # this process: the subscriber's thread, and a main thread that waits
    publishers.go()
    publish_seconds = publishers.finish()
    done.wait(600)
    cpu = time.process_time() - cpu_before
    client.disconnect()
    client.loop_stop()
    seconds = last[0] - first[0] if first else math.nan
    return {
        "bare_subscriber_messages_per_s": received[0] / seconds,
        "bare_subscriber_cpu_ms_per_message": cpu / max(received[0], 1) * 1000,
        "bare_publish_messages_per_s": total / max(publish_seconds),
    }


def raw_subscriber_rate(broker: Mosquitto, directory: Path, relays: list[str], count: int, n: int) -> dict[str, float]:
    """The second baseline: a subscriber that spends next to nothing on a message (bench/mqtt_raw.py), receiving
    what the same publishers send. What the broker delivers to one connection at most on this machine."""
    total = count * n
    credentials = broker.users["aggregator"]
    client = RawSubscriber(
        "127.0.0.1",
        broker.port,
        "bench-raw",
        "aggregator",
        credentials.password_file.read_text().strip(),
        "wgprobe/v1/results/+/+",
    )
    got: list[tuple[int, float, float]] = []
    reader = threading.Thread(target=lambda: got.append(client.receive(total, time.perf_counter)), daemon=True)
    reader.start()
    publishers = Publishers.start(broker, directory, relays, count, n)
    cpu_before = time.process_time()
    publishers.go()
    publish_seconds = publishers.finish()
    reader.join(600)
    cpu = time.process_time() - cpu_before
    client.close()
    received, first, last = got[0] if got else (0, math.nan, math.nan)
    return {
        "raw_subscriber_messages_per_s": received / (last - first),
        "raw_subscriber_cpu_ms_per_message": cpu / max(received, 1) * 1000,
        "raw_publish_messages_per_s": total / max(publish_seconds),
    }


@contextlib.contextmanager
def source_first(tree: Path | None) -> Iterator[None]:
    """Processes started inside import `probe` from `tree` (None: this checkout, as they would anyway): `tree` first
    on PYTHONPATH, and the working directory (which `python -m` puts before PYTHONPATH) too."""
    if tree is None:
        yield
        return
    before, cwd = os.environ.get("PYTHONPATH"), Path.cwd()
    os.environ["PYTHONPATH"] = str(tree.resolve())
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(cwd)
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def end_to_end(relays: int, count: int, n: int, other: Path | None = None, ab_rounds: int = 3) -> dict[str, Any]:
    inventory = make_inventory(relay_names(relays))
    names = list(inventory.names)
    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-service-") as tmp:
        directory = Path(tmp)
        broker = Mosquitto(directory / "mosquitto")
        broker.start()
        try:
            write_inventory(directory / "relays.toml", inventory)
            baseline = bare_subscriber_rate(broker, directory, names, count, n)
            baseline.update(raw_subscriber_rate(broker, directory, names, count, n))
            figures = _aggregator_run(broker, directory, names, count, n, None)
            if other is not None:
                figures.update(_ab_runs(broker, directory, names, count, n, other, ab_rounds))
        finally:
            broker.stop()
    return {**baseline, **figures}


def _aggregator_run(
    broker: Mosquitto, directory: Path, names: list[str], count: int, n: int, tree: Path | None
) -> dict[str, float]:
    with source_first(tree):
        aggregator = AggregatorProcess(
            directory / "aggregator", broker, inventory=directory / "relays.toml", interval=INTERVAL
        )
        aggregator.start()
    try:
        return _ingest_run(broker, aggregator, directory, names, count, n)
    finally:
        aggregator.stop()


def _ab_runs(
    broker: Mosquitto, directory: Path, names: list[str], count: int, n: int, other: Path, rounds: int
) -> dict[str, Any]:
    """The other checkout's aggregator and this one's, in turn; medians and the median of the paired ratios."""
    runs: dict[str, list[dict[str, float]]] = {"other": [], "this": []}
    for _ in range(rounds):
        runs["other"].append(_aggregator_run(broker, directory, names, count, n, other))
        runs["this"].append(_aggregator_run(broker, directory, names, count, n, None))
    cpu = {side: [r["e2e_aggregator_cpu_ms_per_message"] for r in got] for side, got in runs.items()}
    rate = {side: [r["e2e_accepted_per_s_steady"] for r in got] for side, got in runs.items()}
    return {
        "ab_other": str(other),
        "ab_rounds": rounds,
        "ab_other_cpu_ms_per_message_median": median(cpu["other"]),
        "ab_this_cpu_ms_per_message_median": median(cpu["this"]),
        "ab_cpu_this_over_other_paired_median": median([a / b for a, b in zip(cpu["this"], cpu["other"], strict=True)]),
        "ab_other_per_s_steady_median": median(rate["other"]),
        "ab_this_per_s_steady_median": median(rate["this"]),
        "ab_rate_this_over_other_paired_median": median(
            [a / b for a, b in zip(rate["this"], rate["other"], strict=True)]
        ),
        "ab_other_cpu_ms_per_message": [round(v, 4) for v in cpu["other"]],
        "ab_this_cpu_ms_per_message": [round(v, 4) for v in cpu["this"]],
        "ab_other_per_s_steady": [round(v, 1) for v in rate["other"]],
        "ab_this_per_s_steady": [round(v, 1) for v in rate["this"]],
    }


def _ingest_run(
    broker: Mosquitto, aggregator: AggregatorProcess, directory: Path, names: list[str], count: int, n: int
) -> dict[str, float]:
    assert aggregator.process is not None and broker.process is not None
    # Wait for the retained burst of the baseline run to be in (and settled): it is not this run's traffic.
    start = _wait_quiet(aggregator)
    publishers = Publishers.start(broker, directory, names, count, n)
    total = count * n
    cpu_before = (cpu_seconds(aggregator.process.pid), cpu_seconds(broker.process.pid), publishers.cpu())
    publishers.go()
    began = time.perf_counter()
    samples: list[tuple[float, float]] = []
    publishers_cpu = 0.0
    while True:
        accepted = accepted_results(aggregator)
        samples.append((time.perf_counter(), accepted - start))
        publishers_cpu = max(publishers_cpu, publishers.cpu() - cpu_before[2])  # while they live
        if accepted - start >= total or time.perf_counter() - began > 600:
            break
        time.sleep(POLL)
    cpu_after = (cpu_seconds(aggregator.process.pid), cpu_seconds(broker.process.pid))
    publish_seconds = publishers.finish()
    got = samples[-1][1]
    # The steady rate: from the first poll past 10% of the messages to the first past 90%.
    low = next(s for s in samples if s[1] >= 0.1 * total)
    high = next(s for s in samples if s[1] >= 0.9 * total)
    steady = (high[1] - low[1]) / (high[0] - low[0]) if high[0] > low[0] else math.nan
    whole = got / (samples[-1][0] - began)
    return {
        "e2e_messages": float(total),
        "e2e_publishers": float(n),
        "e2e_accepted": got,
        "e2e_accepted_per_s_steady": steady,
        "e2e_accepted_per_s_whole_run": whole,
        "e2e_publish_per_s": total / max(publish_seconds),
        "e2e_aggregator_cpu_ms_per_message": (cpu_after[0] - cpu_before[0]) / got * 1000,
        "e2e_broker_cpu_ms_per_message": (cpu_after[1] - cpu_before[1]) / got * 1000,
        "e2e_publishers_cpu_ms_per_message": publishers_cpu / total * 1000,
    }


def accepted_results(aggregator: AggregatorProcess) -> float:
    """Results the aggregator accepted so far, from /api/v1/agents: a few hundred bytes, where a scrape of /metrics
    at 1,000 relays is ~10 MB whose rendering and sending the aggregator would spend while it ingests."""
    return float(sum(agent["results"] for agent in aggregator.json("/api/v1/agents")["agents"]))


def _wait_quiet(aggregator: AggregatorProcess) -> float:
    """The accepted count once it stopped moving for two polls."""
    last = -1.0
    still = 0
    while still < 2:
        time.sleep(1.0)
        now = accepted_results(aggregator)
        still = still + 1 if now == last else 0
        last = now
    return last


# -- time to detect, in a lab of our own -------------------------------------------------------------------------


def detect_figures(interval: float, breaks: int) -> dict[str, Any]:
    from probe.lab import fleet
    from probe.lab.faults import Fault

    with tempfile.TemporaryDirectory(prefix="wgprobe-bench-detect-") as tmp:
        directory = Path(tmp)
        lab_dir = directory / "lab"
        state = fleet.up(lab_dir, LAB_SERVERS, agents=1, prefix=LAB_PREFIX)
        broker = Mosquitto(directory / "mosquitto")
        broker.start()
        agent_plan = state.plan().agents[0]
        config = lab_dir / "agent-bench.toml"
        config.write_text(
            (lab_dir / "agent.toml").read_text()
            + FAST_PROBE
            + service_tables(broker, agent_plan.name, directory, interval=interval)
        )
        agent = AgentProcess(agent_plan.name, config, directory / "agent.log")
        aggregator = AggregatorProcess(
            directory / "aggregator", broker, inventory=lab_dir / "relays.json", interval=interval
        )
        names = [relay.name for relay in state.plan().relays]
        target = names[1]
        try:
            agent.start()
            aggregator.start()
            _until(aggregator, lambda m: all(server_up(m, name) == 1.0 for name in names), 3 * interval + 30)
            to_down, to_up, to_fully_up = [], [], []
            rng = random.Random(7)
            for _ in range(breaks):
                time.sleep(rng.uniform(0, interval))  # break at any phase of the relay's slot
                fleet.set_faults(lab_dir, target, [Fault.parse("nat")])
                broken = time.perf_counter()
                to_down.append(_until(aggregator, lambda m: server_up(m, target) == 0.0, 3 * interval + 30) - broken)
                time.sleep(rng.uniform(0, interval))
                fleet.set_faults(lab_dir, target, [])
                healed = time.perf_counter()
                to_up.append(_until(aggregator, lambda m: server_up(m, target) == 1.0, 3 * interval + 30) - healed)
                to_fully_up.append(_until_state(aggregator, target, "up", 6 * interval + 30) - healed)
        finally:
            agent.stop()
            aggregator.stop()
            broker.stop()
            fleet.down(lab_dir, prefix=LAB_PREFIX, quiet=True)
    return {
        "interval_s": interval,
        "breaks": breaks,
        "break_to_down_s_median": median(to_down),
        "break_to_down_s_max": max(to_down),
        "heal_to_up_metric_s_median": median(to_up),
        "heal_to_up_metric_s_max": max(to_up),
        "heal_to_state_up_s_median": median(to_fully_up),
        "heal_to_state_up_s_max": max(to_fully_up),
        "target_s": interval + 5,
        "break_to_down_s": [round(s, 2) for s in to_down],
        "heal_to_up_metric_s": [round(s, 2) for s in to_up],
    }


def _until(aggregator: AggregatorProcess, condition: Callable[[dict[str, float]], bool], guard: float) -> float:
    deadline = time.perf_counter() + guard
    while time.perf_counter() < deadline:
        if condition(aggregator.metrics()):
            return time.perf_counter()
        time.sleep(DETECT_POLL)
    raise SystemExit(f"no verdict within {guard:g} s; see {aggregator.log}")


def _until_state(aggregator: AggregatorProcess, server: str, state: str, guard: float) -> float:
    deadline = time.perf_counter() + guard
    while time.perf_counter() < deadline:
        if aggregator.json(f"/api/v1/servers/{server}")["state"] == state:
            return time.perf_counter()
        time.sleep(DETECT_POLL)
    raise SystemExit(f"{server} not {state} within {guard:g} s; see {aggregator.log}")


def target_budget(figures: dict[str, Any]) -> dict[str, float]:
    """What the end-to-end target leaves for the aggregator's own work on this machine, from this run's figures.

    At the target rate the broker and the publishers cost what they cost a message; the aggregator cannot read a
    message for less than the raw subscriber that only counts, nor accept one without the validation the issue asks
    for (the compiled reader's, probe/aggregator/wire.py, in the store-alone figures). What is left of the machine's
    cores, per result, is the most the store, its metrics lines, judging and the event loop may cost together."""
    needed = ("e2e_broker_cpu_ms_per_message", "e2e_publishers_cpu_ms_per_message")
    if "store_read_json_us_median" not in figures or not all(name in figures for name in needed):
        return {}
    validate_us = figures["store_read_json_us_median"]
    fixed_ms = (
        figures["e2e_broker_cpu_ms_per_message"]
        + figures["e2e_publishers_cpu_ms_per_message"]
        + figures["raw_subscriber_cpu_ms_per_message"]
        + validate_us / 1000
    )
    rate = figures["e2e_target_per_s"]
    cores = fixed_ms * rate / 1000
    left_ms = max(0.0, (figures["cpus"] - cores) / rate * 1000)
    return {
        "target_fixed_cpu_ms_per_result": fixed_ms,
        "target_cores_before_the_store": cores,
        "target_left_ms_per_result": left_ms,
        # The same work today: the store alone without validation, and the whole aggregator without it.
        "store_without_validation_us_median": figures["store_ingest_us_median"] - validate_us,
        "e2e_aggregator_without_validation_ms_per_result": figures["e2e_aggregator_cpu_ms_per_message"]
        - validate_us / 1000,
    }


def main() -> None:
    if sys.argv[1:2] == ["publish"]:
        publisher_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--relays", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="store rounds of relays x 3 agents")
    parser.add_argument("--messages", type=int, default=10_000, help="per publisher, end to end")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--breaks", type=int, default=6, help="breaks at the short interval")
    parser.add_argument("--short-interval", type=float, default=3.0)
    parser.add_argument("--default-breaks", type=int, default=3, help="breaks at the default 15 s interval")
    parser.add_argument("--no-lab", action="store_true", help="skip time to detect (no root needed)")
    parser.add_argument("--no-store", action="store_true", help="skip the store-alone and /metrics figures")
    parser.add_argument("--ab", type=Path, help="another checkout whose aggregator runs in turn with this one's")
    parser.add_argument("--ab-rounds", type=int, default=3)
    parser.add_argument("--paho-publishers", action="store_true", help="publish through paho-mqtt, as before")
    args = parser.parse_args()
    Publishers.paho = args.paho_publishers
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "cpus": os.cpu_count(),
        "relays": args.relays,
        "agents": len(AGENTS),
        "paths_per_result": 12,
        "publishers": "paho" if args.paho_publishers else "prebuilt packets (bench/mqtt_raw.py)",
    }
    if not args.no_store:
        figures.update(store_figures(args.relays, args.rounds))
    figures.update(end_to_end(args.relays, args.messages, args.publishers, args.ab, args.ab_rounds))
    figures["e2e_target_per_s"] = 5000.0
    figures["needed_results_per_s"] = args.relays * len(AGENTS) / INTERVAL
    figures.update(target_budget(figures))
    if not args.no_lab:
        if os.geteuid() != 0:
            sys.exit("time to detect builds a lab: run as root, or pass --no-lab")
        figures["detect_short"] = detect_figures(args.short_interval, args.breaks)
        figures["detect_default"] = detect_figures(15.0, args.default_breaks)
    report("service", figures)


if __name__ == "__main__":
    main()
