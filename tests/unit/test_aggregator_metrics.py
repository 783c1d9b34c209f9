"""The aggregator's /metrics: the contract's names, values that follow a scripted scenario, an explicit registry, and
an exposition that the real `promtool check metrics` accepts."""

import asyncio
import base64
import io
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agents.log import Log
from probe.aggregator.metrics import ALL_METRICS, exposition, make_registry, render
from probe.aggregator.service import AggregatorShell
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_result, make_stage, make_status, payload
from probe.config import InventorySection
from probe.inventory.configured import ConfiguredInventory
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import PathResult, StageName

RELAYS = ["se-got-wg-001", "se-got-wg-002", "de-ber-wg-001"]
CONTRACT = {
    "wgprobe_server_up": ("server",),
    "wgprobe_server_health": ("server", "state"),
    "wgprobe_probe_success": ("server", "agent", "port", "family"),
    "wgprobe_stage_success": ("server", "agent", "stage"),
    "wgprobe_stage_duration_seconds": ("server", "agent", "stage"),
    "wgprobe_result_age_seconds": ("server", "agent"),
    "wgprobe_agent_up": ("agent",),
    "wgprobe_messages_total": ("result",),
    "wgprobe_stage_packets_sent_total": ("server", "agent", "stage"),
    "wgprobe_stage_packets_received_total": ("server", "agent", "stage"),
}


def send(store: ResultStore, message: ResultMessage) -> None:
    assert store.ingest_result(payload(message), result_topic(message.agent, message.server)).accepted


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(store: ResultStore) -> tuple[str, Samples]:
    text = exposition(make_registry(store)).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def scenario() -> tuple[ResultStore, FakeClock]:
    """Three agents. se-got-wg-001: NAT broken (down). se-got-wg-002: the extended range closed for everyone
    (degraded), agent-b saw 3 of 5 tunnel packets answered. de-ber-wg-001: nobody reported (unknown). agent-c lost
    its own network (its results say so), a duplicate and a malformed message arrive."""
    clock = FakeClock()
    store = ResultStore(make_inventory(RELAYS), now=clock)
    for agent in ("agent-a", "agent-b", "agent-c"):
        store.ingest_status(payload(make_status(agent, at=clock())), status_topic(agent))
        blind = agent == "agent-c"
        send(store, make_result(RELAYS[0], agent, taken_at=clock(), fail=StageName.forward, control_ok=not blind))
        closed = {4000: StageName.handshake}
        message = make_result(
            RELAYS[1], agent, taken_at=clock(), ports=(51820, 4000), fail=closed, control_ok=not blind
        )
        if agent == "agent-b":
            message = _lossy_tunnel(message)
        send(store, message)
    store.ingest_result(payload(message), result_topic(message.agent, message.server))  # agent-c's, again
    store.ingest_result(b"{not json", result_topic("agent-a", RELAYS[0]))
    clock.advance(7)
    return store, clock


def _lossy_tunnel(message: ResultMessage) -> ResultMessage:
    paths = []
    for path in message.paths:
        stages = tuple(
            make_stage(StageName.tunnel, sent=5, received=3, seconds=0.020) if s.name is StageName.tunnel else s
            for s in path.stages
        )
        paths.append(PathResult.model_validate({**path.model_dump(), "stages": [s.model_dump() for s in stages]}))
    return message.model_copy(update={"paths": tuple(paths)})


def test_the_names_are_the_contract() -> None:
    specs = {spec.name: spec.labels for spec in ALL_METRICS}
    for name, labels in CONTRACT.items():
        assert specs[name] == labels
    assert len(specs) == len(ALL_METRICS)  # each defined once


def test_server_health(scenario: tuple[ResultStore, FakeClock]) -> None:
    _, samples = scrape(scenario[0])
    assert value(samples, "wgprobe_server_up", server=RELAYS[0]) == 0.0
    assert value(samples, "wgprobe_server_up", server=RELAYS[1]) == 1.0  # degraded still serves
    assert value(samples, "wgprobe_server_up", server=RELAYS[2]) is None  # unknown: absent
    for server, current in ((RELAYS[0], "down"), (RELAYS[1], "degraded"), (RELAYS[2], "unknown")):
        for state in ("up", "degraded", "down", "unknown"):
            expected = 1.0 if state == current else 0.0
            assert value(samples, "wgprobe_server_health", server=server, state=state) == expected
    assert value(samples, "wgprobe_servers", state="down") == 1.0
    assert value(samples, "wgprobe_servers", state="up") == 0.0


def test_paths_and_stages(scenario: tuple[ResultStore, FakeClock]) -> None:
    _, samples = scrape(scenario[0])
    labels = {"server": RELAYS[1], "agent": "agent-a"}
    assert value(samples, "wgprobe_probe_success", port="51820", family="ipv4", **labels) == 1.0
    assert value(samples, "wgprobe_probe_success", port="4000-33433", family="ipv6", **labels) == 0.0
    assert value(samples, "wgprobe_stage_success", stage="handshake", **labels) == 0.0  # failed on 2 of 4 paths
    assert value(samples, "wgprobe_stage_duration_seconds", stage="handshake", **labels) == 0.012
    broken = {"server": RELAYS[0], "agent": "agent-a"}
    assert value(samples, "wgprobe_stage_success", stage="tunnel", **broken) == 1.0
    assert value(samples, "wgprobe_stage_success", stage="forward", **broken) == 0.0
    assert value(samples, "wgprobe_stage_success", stage="egress", **broken) is None  # unjudged: absent
    assert value(samples, "wgprobe_stage_duration_seconds", stage="tunnel", server=RELAYS[1], agent="agent-b") == 0.02
    # agent-c's results were taken while its control check failed: no path or stage series from them.
    assert not any(("agent", "agent-c") in key[1] for key in samples if key[0].startswith("wgprobe_probe"))
    assert value(samples, "wgprobe_result_age_seconds", server=RELAYS[0], agent="agent-c") == 7.0


def test_agents_and_messages(scenario: tuple[ResultStore, FakeClock]) -> None:
    _, samples = scrape(scenario[0])
    assert value(samples, "wgprobe_agent_up", agent="agent-a") == 1.0
    assert value(samples, "wgprobe_agent_up", agent="agent-c") == 1.0  # it is online and talking...
    assert value(samples, "wgprobe_agent_control_ok", agent="agent-c") == 0.0  # ...but cannot see
    assert value(samples, "wgprobe_agents", state="control_failed") == 1.0
    assert value(samples, "wgprobe_messages_total", result="accepted") == 9.0  # 3 statuses + 6 results
    assert value(samples, "wgprobe_messages_total", result="duplicate") == 1.0
    assert value(samples, "wgprobe_messages_total", result="malformed") == 1.0
    assert value(samples, "wgprobe_messages_total", result="oversized") == 0.0  # every reason, from zero


def test_packet_counters_pool_every_result(scenario: tuple[ResultStore, FakeClock]) -> None:
    store, clock = scenario
    send(store, _lossy_tunnel(make_result(RELAYS[1], "agent-b", taken_at=clock() - 30, ports=(51820,))))  # late
    _, samples = scrape(store)
    labels = {"server": RELAYS[1], "agent": "agent-b", "stage": "tunnel"}
    # 2 main-port paths in the late result + 2 main-port paths before (the range paths failed their handshake).
    assert value(samples, "wgprobe_stage_packets_sent_total", **labels) == 4 * 5
    assert value(samples, "wgprobe_stage_packets_received_total", **labels) == 4 * 3
    handshake = {"server": RELAYS[1], "agent": "agent-a", "stage": "handshake"}
    assert value(samples, "wgprobe_stage_packets_sent_total", **handshake) == 4 * 3
    assert value(samples, "wgprobe_stage_packets_received_total", **handshake) == 2 * 3
    assert value(samples, "wgprobe_stage_packets_sent_total", server=RELAYS[0], agent="agent-c", stage="tunnel") is None


def test_staleness_removes_path_series_but_keeps_the_age(scenario: tuple[ResultStore, FakeClock]) -> None:
    store, clock = scenario
    clock.advance(60)
    _, samples = scrape(store)
    assert value(samples, "wgprobe_server_up", server=RELAYS[0]) is None
    assert value(samples, "wgprobe_server_health", server=RELAYS[0], state="unknown") == 1.0
    assert not any(key[0] == "wgprobe_probe_success" for key in samples)
    assert value(samples, "wgprobe_result_age_seconds", server=RELAYS[0], agent="agent-a") == 67.0
    assert value(samples, "wgprobe_agent_up", agent="agent-a") == 0.0


def test_the_registry_is_explicit(scenario: tuple[ResultStore, FakeClock]) -> None:
    make_registry(scenario[0])
    assert "wgprobe_server_up" not in REGISTRY._names_to_collectors


def test_the_direct_renderer_writes_what_prometheus_client_writes(scenario: tuple[ResultStore, FakeClock]) -> None:
    store, _ = scenario
    assert render(store) == exposition(make_registry(store))
    lines = render(store).decode().splitlines()
    assert 'wgprobe_probe_success{agent="agent-a",family="ipv6",port="4000-33433",server="se-got-wg-002"} 0.0' in lines


def test_the_broker_connection_shows_only_where_there_is_a_broker(scenario: tuple[ResultStore, FakeClock]) -> None:
    store, _ = scenario
    assert value(scrape(store)[1], "wgprobe_aggregator_broker_connected") is None  # probe serve: no broker at all
    for up, expected in ((True, 1.0), (False, 0.0), (True, 1.0)):
        store.broker_connection(up)
        assert value(scrape(store)[1], "wgprobe_aggregator_broker_connected") == expected
        assert render(store) == exposition(make_registry(store))


def test_promtool_accepts_the_exposition(scenario: tuple[ResultStore, FakeClock]) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is needed (Debian: apt-get install prometheus)"
    for text in (scrape(scenario[0])[0], render(scenario[0]).decode()):
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == "" and done.stderr.strip() == ""  # no lint warnings either


def _shell(fleet: Path) -> tuple[AggregatorShell, FakeClock, io.StringIO]:
    """The aggregator's shell over a store of RELAYS from a real inventory file, its log (JSON lines) in a buffer."""
    fleet.write_text(_fleet_toml(RELAYS))
    source = ConfiguredInventory(InventorySection(source=str(fleet)))
    clock = FakeClock()
    said = io.StringIO()
    store = ResultStore(source.load(), now=clock)
    return AggregatorShell(store, source, Log(json_lines=True, agent="aggregator", stream=said)), clock, said


@pytest.mark.asyncio
async def test_a_failed_inventory_reload_shows_in_the_metrics(tmp_path: Path) -> None:
    # The shell's reload against a real file: the inventory kept, and said so in /metrics (not only in the log).
    fleet = tmp_path / "fleet.toml"
    shell, clock, said = _shell(fleet)
    store = shell.store
    task = asyncio.create_task(shell.following_inventory())
    try:
        clock.advance(30)
        _, samples = scrape(store)
        assert value(samples, "wgprobe_inventory_ok") == 1.0
        assert value(samples, "wgprobe_inventory_age_seconds") == 30.0
        fleet.write_text("[[relays]]\nname = ")  # broken mid-write by whoever manages it
        shell.reload()
        await _until(lambda: not store.inventory_ok)
        _, samples = scrape(store)
        assert value(samples, "wgprobe_inventory_ok") == 0.0
        assert value(samples, "wgprobe_inventory_age_seconds") == 30.0  # the last good one, still in use
        assert {relay.name for relay in store.inventory.relays} == set(RELAYS)
        fleet.write_text(_fleet_toml(RELAYS[:2]))
        shell.reload()
        await _until(lambda: store.inventory_ok)
        _, samples = scrape(store)
        assert value(samples, "wgprobe_inventory_ok") == 1.0
        assert value(samples, "wgprobe_inventory_age_seconds") == 0.0
        assert render(store) == exposition(make_registry(store))
        assert '"inventory_reloaded"' not in said.getvalue()  # it changed: inventory_changed said so
        shell.reload()  # nothing changed: a SIGHUP is still answered in the log
        await _until(lambda: '"inventory_reloaded"' in said.getvalue())
    finally:
        task.cancel()


@pytest.mark.asyncio
async def test_what_an_inventory_load_skips_is_logged_at_start_and_on_reload(tmp_path: Path) -> None:
    # A relay entry that does not validate is left out, and so are its labels' bad entries. Unsaid, the relay just
    # never appears: its results are dropped as unknown_server and the operator is left to guess why.
    import json

    from agents.inventory import first_inventory

    fleet = tmp_path / "fleet.toml"
    fleet.write_text(_fleet_toml(RELAYS) + '[[relays]]\nname = "se-sto-wg-009"\npublic_key = "not-a-key"\n')
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({RELAYS[0]: {"kernel": "6.1", "bad name!": "x"}}))
    source = ConfiguredInventory(InventorySection(source=str(fleet), labels=str(labels)))
    said = io.StringIO()
    log = Log(json_lines=True, agent="aggregator", stream=said)
    inventory = await first_inventory(source, log, asyncio.Event())
    assert inventory is not None and set(inventory.names) == set(RELAYS)

    def lines(event: str) -> list[dict[str, str]]:
        return [line for line in map(json.loads, said.getvalue().splitlines()) if line["event"] == event]

    assert [line["problem"] for line in lines("inventory_entry_skipped")] == [
        str(problem) for problem in inventory.problems
    ]
    assert "se-sto-wg-009" in lines("inventory_entry_skipped")[0]["problem"]
    assert ["bad name!" in line["problem"] for line in lines("labels_entry_skipped")] == [True]
    store = ResultStore(inventory, now=FakeClock())
    shell = AggregatorShell(store, source, log)
    task = asyncio.create_task(shell.following_inventory())
    try:
        shell.reload()
        await _until(lambda: len(lines("labels_entry_skipped")) == 2)
        assert len(lines("inventory_entry_skipped")) == 2 * len(inventory.problems)
    finally:
        task.cancel()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def _fleet_toml(names: Sequence[str]) -> str:
    key = base64.b64encode(bytes(range(32))).decode()
    return "".join(
        f'[[relays]]\nname = "{name}"\npublic_key = "{key}"\nipv4 = "198.18.0.{n + 10}"\nmain_port = 51820\n'
        for n, name in enumerate(names)
    )


@pytest.mark.asyncio
async def test_an_agent_clock_off_is_a_warning_in_the_log_and_a_series(tmp_path: Path) -> None:
    shell, clock, said = _shell(tmp_path / "relays.toml")
    store = shell.store
    settled = asyncio.Event()
    settled.set()
    task = asyncio.create_task(shell.judging(settled))
    try:
        for ahead in (-90.0, -90.0, 0.0):
            clock.advance(15)
            store.ingest_status(payload(make_status("agent-a", at=clock() + ahead)), status_topic("agent-a"))
            if ahead:
                continue
            await _until(lambda: '"agent_clock_ok"' in said.getvalue())
    finally:
        task.cancel()
    lines = [line for line in said.getvalue().splitlines() if "agent_clock" in line]
    assert len(lines) == 2 and '"agent_clock_off"' in lines[0] and '"offset_seconds": -90.0' in lines[0], lines
    assert '"level": "warning"' in lines[0] and '"agent_clock_ok"' in lines[1]
    assert value(scrape(store)[1], "wgprobe_agent_clock_offset_seconds", agent="agent-a") == 0.0
    assert render(store) == exposition(make_registry(store))
