"""Issue 9 benchmark, the store and its HTTP side: results ingested per second, what a refresh, a /metrics render
and the JSON API cost, at the size the aggregator is built for (1,000 relays x 3 agents x 12 paths of 5 stages,
every 15 s).

Baselines measured in the same run: `ResultMessage.model_validate_json` on the same payloads for ingest (parsing and
validating the JSON is the cost a store cannot avoid, so "ingest / validation" says what the store adds), and the
compiled reader the store runs instead (probe/aggregator/wire.py: the same checks, `read_json_us_median`);
prometheus_client's `generate_latest` and a renderer without history for /metrics; the fleet view built and dumped
in-process for the API's answers. CPU time where the work is ours alone, wall time for HTTP round trips on loopback.
No lab and no root needed:  .venv/bin/python -m bench.bench_aggregator [--relays 1000] [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from bench.common import median, report
from probe.addresses import Endpoint
from probe.aggregator.http import make_app
from probe.aggregator.intake import Outcome
from probe.aggregator.metrics import MetricsRenderer, collect_samples, exposition, make_registry, render
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import MULLVAD_PORT_RANGES, FakeClock, make_inventory, make_path, make_result
from probe.aggregator.views import fleet_view
from probe.aggregator.wire import read_result
from probe.http import serving
from probe.inventory import Inventory
from probe.messages import ResultMessage, result_topic
from probe.results import StageName

AGENTS = ("agent-eu", "agent-us", "agent-ap")
INTERVAL = 15.0
METRICS_ROUNDS = 8  # rounds after the ingest figures, for the /metrics figures
LABELS = {"provider": "31173", "owned": "true", "stboot": "true", "country": "Sweden", "city": "Gothenburg"}


def relay_names(count: int) -> list[str]:
    return [f"xx-c{n // 8:03d}-wg-{n % 8 + 1:03d}" for n in range(count)]


def one_result(relay: str, agent: str, number: int, taken_at: float, rng: random.Random) -> bytes:
    """A result as an agent publishes it: 12 paths (main port + one port per range, both families), 5 stages each;
    about one relay in twenty fails somewhere, as a bad day would have it."""
    ports = [51820] + [rng.randint(low, high) for low, high in MULLVAD_PORT_RANGES]
    fail = rng.choice([StageName.forward, StageName.mtu, StageName.handshake]) if rng.random() < 0.05 else None
    paths = []
    families: tuple[Literal["ipv4", "ipv6"], ...] = ("ipv4", "ipv6")
    for family in families:
        for port in ports:
            path = make_path(port, family, fail=fail if port != 51820 else None, evidence="ev/x.pcap")
            stages = tuple(
                s.model_copy(update={"seconds": round(rng.uniform(0.005, 0.040), 6)})
                if s.name is not StageName.egress
                else s.model_copy(update={"detail": f"reflector saw 198.18.{rng.randint(0, 255)}.1:{port}"})
                for s in path.stages
            )
            paths.append(path.model_copy(update={"stages": stages}))
    message = make_result(relay, agent, taken_at=taken_at, round=number, paths=paths)
    message = message.model_copy(update={"labels": dict(LABELS), "duration_seconds": rng.uniform(0.03, 0.2)})
    return message.model_dump_json().encode()


def make_rounds(relays: list[str], rounds: int, start: float) -> list[list[tuple[bytes, str]]]:
    rng = random.Random(20260427)
    return [
        [
            (one_result(relay, agent, number, start + number * INTERVAL, rng), result_topic(agent, relay))
            for relay in relays
            for agent in AGENTS
        ]
        for number in range(rounds)
    ]


def cpu_per_message(batch: list[tuple[bytes, str]], work: Callable[[bytes, str], Any], chunk: int = 100) -> list[float]:
    """CPU seconds per message, one figure per chunk: CPU time, because the machine is shared and wall time
    measures the neighbours too."""
    samples = []
    for start in range(0, len(batch), chunk):
        part = batch[start : start + chunk]
        started = time.process_time()
        for data, topic in part:
            work(data, topic)
        samples.append((time.process_time() - started) / len(part))
    return samples


def timed(work: Callable[[], Any], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.process_time()
        work()
        samples.append(time.process_time() - started)
    return samples


def validate(data: bytes, _topic: str) -> None:
    ResultMessage.model_validate_json(data)


def read(data: bytes, _topic: str) -> None:
    # What the store's ingest runs first: the compiled reader (pydantic decides only what it refuses).
    if read_result(data) is None:
        raise AssertionError("the compiled reader refused an agent's result")


def ingest_figures(store: ResultStore, rounds: list[list[tuple[bytes, str]]], clock: FakeClock) -> dict[str, float]:
    """Each round arrives in its own interval; validation alone (pydantic's, the contract's model), the compiled
    reader alone (what the store runs) and ingest alternate chunk by chunk, so all three see the same machine."""
    validated: list[float] = []
    were_read: list[float] = []
    ingested: list[float] = []
    for number, batch in enumerate(rounds):
        clock.advance(INTERVAL)
        for start in range(0, len(batch), 100):
            part = batch[start : start + 100]
            validate_s = cpu_per_message(part, validate)
            read_s = cpu_per_message(part, read)
            ingest_s = cpu_per_message(part, store.ingest_result)
            if number > 0:  # the first round creates every record: not the steady state
                validated += validate_s
                were_read += read_s
                ingested += ingest_s
    assert store.messages[Outcome.accepted] == sum(len(b) for b in rounds), store.messages
    # A spool replayed after an outage: an agent's oldest round arriving after the newer ones, with new ids.
    replay = [(data.replace(b'"result_id":"', b'"result_id":"replay-'), topic) for data, topic in rounds[0]]
    garbage = [(b'{"server": 1' + bytes(200), topic) for _, topic in rounds[0]]
    return {
        "validate_us": median(validated) * 1e6,
        "read_us": median(were_read) * 1e6,
        "ingest_us": median(ingested) * 1e6,
        "duplicate_us": median(cpu_per_message(rounds[-1], store.ingest_result)) * 1e6,
        "replay_us": median(cpu_per_message(replay, store.ingest_result)) * 1e6,
        "malformed_us": median(cpu_per_message(garbage, store.ingest_result)) * 1e6,
    }


def refresh_figures(store: ResultStore, inventory: Inventory, second: list[tuple[bytes, str]]) -> dict[str, float]:
    def everything() -> None:
        store.set_inventory(inventory)  # marks every relay for judgement
        store.refresh()

    def one_second_of_traffic() -> None:
        # The results one second brings (new ids, so none is a duplicate), then the shell's once-a-second refresh.
        for data, topic in second:
            store.ingest_result(data.replace(b'"result_id":"', b'"result_id":"s' + os.urandom(4).hex().encode()), topic)
        store.refresh()

    full = timed(everything, 10)
    idle = timed(store.refresh, 10)
    steady = timed(one_second_of_traffic, 10)
    return {
        "refresh_all_ms": median(full) * 1000,
        "refresh_idle_ms": median(idle) * 1000,
        "second_of_traffic_ms": median(steady) * 1000,
    }


class GcPauses:
    """Wall time the cyclic garbage collector spends, from gc.callbacks: with a store of ~10^6 objects a full
    collection takes ~0.1 s, and it lands on whatever allocates when it comes due."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


def metrics_figures(store: ResultStore, rounds: list[list[tuple[bytes, str]]], clock: FakeClock) -> dict[str, float]:
    """/metrics as it is served, over two renderers kept across scrapes: one following the store (each result's
    lines written as it is kept, as the aggregator's HTTP app does while it serves), and one not (its scrape writes
    every block of the round: the worst case, as when the hook is off). Each round arrives at once, then the
    shell's refresh, then a scrape of each."""
    renderer = MetricsRenderer(store)
    renderer.render()
    unwritten_renderer = MetricsRenderer(store)
    unwritten_renderer.render()
    renderer.follow()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    gc_in_unwritten = []
    unwritten, followed, warm = [], [], []
    rebuilt_by_scrape, rebuilt_after_following = [], []
    for batch in rounds:
        clock.advance(INTERVAL)
        for data, topic in batch:
            store.ingest_result(data, topic)
        store.refresh()  # the shell's once-a-second refresh: judging is not the renderer's cost
        followed += timed(renderer.render, 1)
        rebuilt_after_following.append(renderer.rebuilt)
        before = pauses.total
        unwritten += timed(unwritten_renderer.render, 1)
        gc_in_unwritten.append(pauses.total - before)
        rebuilt_by_scrape.append(unwritten_renderer.rebuilt)
        warm += timed(renderer.render, 3)
    renderer.unfollow()
    gc.callbacks.remove(pauses)
    # The hook alone, on every (relay, agent) the store holds, 100 at a time.
    held = [(name, agent, record) for name, server in store.servers.items() for agent, record in server.agents.items()]
    on_arrival = []
    for start in range(0, len(held), 100):
        part = held[start : start + 100]
        started = time.process_time()
        for name, agent, record in part:
            renderer.kept(name, agent, record)
        on_arrival.append((time.process_time() - started) / len(part))
    assert renderer.render() == exposition(make_registry(store))
    return {
        "metrics_render_round_unwritten_ms_median": median(unwritten) * 1000,
        "metrics_render_round_unwritten_blocks": median([float(n) for n in rebuilt_by_scrape]),
        "metrics_render_round_unwritten_gc_pause_ms_median": median(gc_in_unwritten) * 1000,
        "metrics_render_round_followed_ms_median": median(followed) * 1000,
        "metrics_render_round_followed_blocks": median([float(n) for n in rebuilt_after_following]),
        "metrics_render_nothing_new_ms_median": median(warm) * 1000,
        "metrics_written_on_arrival_us_median": median(on_arrival) * 1e6,
    }


async def http_figures(store: ResultStore, runs: int = 20) -> dict[str, float]:
    """Wall time of whole requests on loopback (client and server in this process), against building the same
    answer in-process."""
    app = make_app(store, metrics_update_seconds=None)
    loopback = Endpoint.parse("127.0.0.1:0", allow_port_zero=True)
    async with serving(app, loopback) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:

        async def fetch(path: str, encoding: str) -> tuple[float, int]:
            started = time.perf_counter()
            async with client.get(path, headers={"Accept-Encoding": encoding}) as response:
                assert response.status == 200, path
                body = await response.read()
            return time.perf_counter() - started, len(body)

        async def figure(path: str, encoding: str = "identity", count: int = runs) -> tuple[float, int]:
            measured = [await fetch(path, encoding) for _ in range(count)]
            return median([t for t, _ in measured]) * 1000, measured[0][1]

        name = next(iter(store.servers))
        servers, servers_bytes = await figure("/api/v1/servers")
        servers_gzip, _ = await figure("/api/v1/servers", "gzip")
        detail, detail_bytes = await figure(f"/api/v1/servers/{name}")
        agents, _ = await figure("/api/v1/agents")
        metrics, _ = await figure("/metrics", count=5)
    in_process = []
    for _ in range(runs):
        started = time.perf_counter()
        fleet_view(store).model_dump_json()
        in_process.append(time.perf_counter() - started)
    return {
        "http_servers_ms_median": servers,
        "http_servers_gzip_ms_median": servers_gzip,
        "http_servers_bytes": float(servers_bytes),
        "fleet_view_json_in_process_wall_ms_median": median(in_process) * 1000,
        "http_server_detail_ms_median": detail,
        "http_server_detail_bytes": float(detail_bytes),
        "http_agents_ms_median": agents,
        "http_metrics_nothing_new_ms_median": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--relays", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    inventory = make_inventory(relay_names(args.relays))
    clock = FakeClock(1_800_000_000.0)
    every_round = make_rounds(inventory.names, args.rounds + METRICS_ROUNDS, clock.at + 1)
    rounds, later = every_round[: args.rounds], every_round[args.rounds :]
    sizes = [float(len(data)) for data, _ in rounds[0]]
    store = ResultStore(inventory, now=clock)
    ingest = ingest_figures(store, rounds, clock)
    per_second = int(args.relays * len(AGENTS) / INTERVAL)
    refresh = refresh_figures(store, inventory, rounds[-1][:per_second])
    registry = make_registry(store)
    body = render(store)
    assert body == exposition(registry)
    scrape_client = timed(lambda: exposition(registry), 3)
    scrape = timed(lambda: render(store), 10)
    samples = timed(lambda: collect_samples(store), 10)
    http = asyncio.run(http_figures(store))
    served = metrics_figures(store, later, clock)
    view = fleet_view(store)
    fleet = timed(lambda: fleet_view(store).model_dump_json(), 5)
    tracemalloc.start()
    small = ResultStore(inventory, now=clock)
    for batch in rounds[-3:]:
        for data, topic in batch:
            small.ingest_result(data, topic)
    store_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).date().isoformat(),
        "relays": args.relays,
        "agents": len(AGENTS),
        "paths_per_result": 12,
        "rounds": args.rounds,
        "payload_bytes_median": median(sizes),
        "validate_json_us_median": ingest["validate_us"],
        "read_json_us_median": ingest["read_us"],
        "ingest_us_median": ingest["ingest_us"],
        "ingest_over_validate": ingest["ingest_us"] / ingest["validate_us"],
        "ingest_results_per_cpu_s": 1e6 / ingest["ingest_us"],
        "validate_results_per_cpu_s": 1e6 / ingest["validate_us"],
        "needed_results_per_s": args.relays * len(AGENTS) / INTERVAL,
        "duplicate_drop_us_median": ingest["duplicate_us"],
        "late_replay_ingest_us_median": ingest["replay_us"],
        "malformed_drop_us_median": ingest["malformed_us"],
        "refresh_all_relays_ms_median": refresh["refresh_all_ms"],
        "refresh_nothing_moved_ms_median": refresh["refresh_idle_ms"],
        "one_second_of_results_plus_refresh_ms_median": refresh["second_of_traffic_ms"],
        "metrics_render_without_history_ms_median": median(scrape) * 1000,
        **served,
        "metrics_collect_samples_ms_median": median(samples) * 1000,
        "metrics_prometheus_client_ms_median": median(scrape_client) * 1000,
        "metrics_bytes": len(body),
        "metrics_samples": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "fleet_view_json_ms_median": median(fleet) * 1000,
        "fleet_view_failing": len(view.failing),
        **http,
        "store_mib_after_3_rounds": store_bytes / 2**20,
    }
    report("aggregator", figures)


if __name__ == "__main__":
    main()
