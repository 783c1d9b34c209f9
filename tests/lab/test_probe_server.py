"""The staged probe against the real lab: every fault kind maps to the right stage and reason, healthy relays pass
every stage on every path, and `probe server` keeps its CLI contract (exit codes, JSON, evidence)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.agent_config import AgentConfig, load_config
from probe.inventory import Inventory, load_inventory
from probe.lab import fleet
from probe.lab.faults import Fault
from probe.results import Reason, ServerResult, StageName
from probe.runner import Prober

from .conftest import Lab

pytestmark = pytest.mark.lab
# Short timeouts keep failing paths quick; the lab's round trips are well under a millisecond.
FAST = "\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"


@pytest.fixture(scope="module")
def fast_config(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = lab.lab_dir / "agent-fast.toml"
    path.write_text((lab.lab_dir / "agent.toml").read_text() + FAST)
    return path


@pytest.fixture
def prober(fast_config: Path) -> Iterator[tuple[Prober, Inventory]]:
    config: AgentConfig = load_config(fast_config)
    inventory = load_inventory(config.inventory.source)
    yield Prober(config, inventory), inventory


def probe(prober: tuple[Prober, Inventory], index: int, **kw: object) -> ServerResult:
    p, inventory = prober
    return asyncio.run(p.probe_relay(inventory.relays[index - 1], rotation=7, **kw))  # type: ignore[arg-type]


def breaks(lab: Lab, index: int, *faults: str) -> None:
    fleet.set_faults(lab.lab_dir, lab.relay(index).name, [Fault.parse(f) for f in faults])


def failures(result: ServerResult) -> set[tuple[str, int, StageName, Reason | None]]:
    """(family, port, first failing stage, reason) of every failed path."""
    out: set[tuple[str, int, StageName, Reason | None]] = set()
    for path in result.paths:
        failed = path.failed_stage
        if failed is not None:
            out.add((path.family, path.port, failed.name, failed.reason))
    return out


def test_healthy_relay_passes_every_stage_on_every_path(healed: Lab, prober: tuple[Prober, Inventory]) -> None:
    result = probe(prober, 1)
    assert result.ok and result.reason is None
    families = {p.family for p in result.paths}
    assert families == {"ipv4", "ipv6"}
    ports = {p.port for p in result.paths}
    # main port + one port from each of Mullvad's five ranges (the main port's range yields another port)
    assert 51820 in ports and 53 in ports and 123 in ports and len(ports) == 6
    for path in result.paths:
        assert [s.name for s in path.stages] == list(StageName), path
        assert all(s.ok for s in path.stages)
    egress = result.paths[0].stages[3]
    assert egress.detail is not None and str(healed.relay(1).ipv4) in egress.detail


@pytest.mark.parametrize(
    ("fault", "expect_v4", "expect_v6"),
    [
        ("nat", (StageName.forward, Reason.forward_timeout), (StageName.forward, Reason.forward_timeout)),
        ("drop", (StageName.forward, Reason.forward_timeout), (StageName.forward, Reason.forward_timeout)),
        ("egress", (StageName.egress, Reason.egress_mismatch), (StageName.egress, Reason.egress_mismatch)),
        ("mtu", (StageName.mtu, Reason.mtu_blackhole), (StageName.mtu, Reason.mtu_blackhole)),
        ("v6nat", None, (StageName.forward, Reason.forward_timeout)),
        ("down", (StageName.handshake, Reason.port_unreachable), (StageName.handshake, Reason.port_unreachable)),
    ],
)
def test_fault_maps_to_stage_and_reason(
    healed: Lab,
    prober: tuple[Prober, Inventory],
    fault: str,
    expect_v4: tuple[StageName, Reason] | None,
    expect_v6: tuple[StageName, Reason] | None,
) -> None:
    breaks(healed, 2, fault)
    result = probe(prober, 2)
    for path in result.paths:
        expected = expect_v4 if path.family == "ipv4" else expect_v6
        failed = path.failed_stage
        got = None if failed is None else (failed.name, failed.reason)
        assert got == expected, (path.family, path.port, path.stages)
    assert not result.ok
    assert result.reason == (expect_v4 or expect_v6)[1]  # type: ignore[index]


def test_forward_fault_fails_the_forward_stage(healed: Lab, prober: tuple[Prober, Inventory]) -> None:
    # With forwarding off the relay's kernel answers ICMP host-unreachable (rate-limited), or stays silent.
    breaks(healed, 2, "forward")
    result = probe(prober, 2)
    assert {(f[2], f[3]) for f in failures(result)} <= {
        (StageName.forward, Reason.forward_unreachable),
        (StageName.forward, Reason.forward_timeout),
    }
    assert all(not p.ok for p in result.paths)


def test_ports_fault_fails_only_the_extended_range_paths(healed: Lab, prober: tuple[Prober, Inventory]) -> None:
    breaks(healed, 3, "ports")
    result = probe(prober, 3)
    for path in result.paths:
        if path.port == 51820:
            assert path.ok, path
        else:
            failed = path.failed_stage
            assert failed is not None and (failed.name, failed.reason) == (StageName.handshake, Reason.port_unreachable)
    assert result.reason is Reason.port_unreachable


def test_loss_still_passes_with_the_loss_reported(healed: Lab) -> None:
    # The default settings: 7 initiations, each lost with 1 - 0.8**2 = 36% at 20% loss each way, fail a path by
    # chance 0.36**7, under 0.1% (bench/bench_loss.py measures whole runs).
    config = load_config(healed.lab_dir / "agent.toml")
    inventory = load_inventory(config.inventory.source)
    breaks(healed, 3, "loss:20")
    result = probe((Prober(config, inventory), inventory), 3, only_port=51820)
    assert result.ok, failures(result)
    losses = [s.loss for p in result.paths for s in p.stages if s.name is not StageName.handshake]
    assert any(loss > 0 for loss in losses), "20% loss each way must show in the measured loss"
    assert all(loss < 1 for loss in losses)


def test_delay_shows_in_round_trip_times(healed: Lab, prober: tuple[Prober, Inventory]) -> None:
    breaks(healed, 4, "delay:100")
    result = probe(prober, 4, only_port=51820, family="ipv4")
    assert result.ok
    stages = {s.name: s for s in result.paths[0].stages}
    assert stages[StageName.tunnel].seconds >= 0.1  # the reply crosses the delayed public link once
    assert stages[StageName.forward].seconds >= 0.2  # out to the target and back to the agent: twice


def probe_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "probe", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_json_contract_and_exit_codes(healed: Lab, fast_config: Path) -> None:
    ok = probe_cli("server", "se-got-wg-001", "--config", str(fast_config), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert {"server", "agent", "ok", "reason", "started_at", "duration_seconds", "paths"} <= set(doc)
    assert doc["server"] == "se-got-wg-001" and doc["agent"] == "lab-agent" and doc["ok"] is True
    path = doc["paths"][0]
    assert {"port", "family", "ok", "reason", "stages"} <= set(path)
    assert {"name", "ok", "reason", "seconds", "loss"} <= set(path["stages"][0])

    one = probe_cli(
        "server", "se-got-wg-001", "--config", str(fast_config), "--json", "--port", "4000", "--family", "ipv6"
    )
    paths = json.loads(one.stdout)["paths"]
    assert [(p["port"], p["family"]) for p in paths] == [(4000, "ipv6")]

    table = probe_cli("server", "se-got-wg-001", "--config", str(fast_config))
    assert table.returncode == 0 and "se-got-wg-001: OK" in table.stdout

    unknown = probe_cli("server", "se-got-wg-01", "--config", str(fast_config))
    assert unknown.returncode == 2
    assert "se-got-wg-01" in unknown.stderr and "se-got-wg-001" in unknown.stderr  # suggests close names

    bad = probe_cli("server", "se-got-wg-001", "--config", str(fast_config), "--family", "ipv5")
    assert bad.returncode == 2 and "--family" in bad.stderr
    missing = probe_cli("server", "se-got-wg-001", "--config", str(fast_config.with_name("nope.toml")))
    assert missing.returncode == 2


def test_failed_probe_saves_evidence_readable_by_scapy_and_tshark(healed: Lab, fast_config: Path) -> None:
    breaks(healed, 2, "nat")
    done = probe_cli("server", "se-got-wg-002", "--config", str(fast_config), "--json", "--port", "51820")
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["reason"] == "forward_timeout"
    saved = json.loads(Path(doc["evidence"]).read_text())
    assert saved["server"] == "se-got-wg-002" and saved["reason"] == "forward_timeout"
    pcap = Path(doc["paths"][0]["evidence"])
    from scapy.utils import rdpcap

    packets = rdpcap(str(pcap))
    assert len(packets) >= 3, "the echo requests sent into the tunnel (and the gateway's replies)"
    shown = subprocess.run(["tshark", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True).stdout
    assert "Echo (ping) request" in shown and str(healed.plan.outside_ipv4) in shown
    dissected = probe_cli("dissect", str(pcap))
    assert dissected.returncode == 0, dissected.stderr
    assert "echo-request" in dissected.stdout and f"dst       = {healed.plan.outside_ipv4}" in dissected.stdout


def test_sweep_groups_failures_and_prints_one_json_line_per_relay(healed: Lab, fast_config: Path) -> None:
    breaks(healed, 2, "nat")
    breaks(healed, 3, "ports")
    done = probe_cli("sweep", "--config", str(fast_config), "--json")
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_server = {doc["server"]: doc for doc in lines}
    assert sorted(by_server) == [r.name for r in healed.plan.relays]
    assert by_server["se-got-wg-001"]["ok"] is True
    assert by_server["se-got-wg-002"]["reason"] == "forward_timeout"
    assert by_server["se-got-wg-003"]["reason"] == "port_unreachable"

    table = probe_cli("sweep", "--config", str(fast_config))
    assert table.returncode == 1
    assert "4 relays probed, 2 failing" in table.stdout
    assert "forward_timeout" in table.stdout and "port_unreachable" in table.stdout
    # the lab's providers cycle 31173, M247, M247, ...: both failing relays are M247's, which the table shows
    assert "provider=M247" in table.stdout

    healthy = probe_cli("servers", "--config", str(fast_config), "--json")
    assert [json.loads(line)["name"] for line in healthy.stdout.splitlines()] == [r.name for r in healed.plan.relays]
