"""wgprobe's real client (`Prober`) against a simulated fleet on loopback: every lab fault and every hostile kind
gives the stage and reason the README's lab table promises, faults change live, and nothing leaves loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import resource
import socket
from pathlib import Path

import pytest

from probe import reflector
from probe.errors import ConfigError
from probe.inventory import Inventory, load_inventory
from probe.results import Reason, ServerResult, StageName
from probe.runner import Prober
from probe.sim.faults import SimFault
from probe.sim.fleet import SimFleet, raise_open_files
from probe.sim.plan import V6Mode
from probe.sim.relay import bind_loopback
from probe.sim.testing import SimSetup, agent_fleet

Expect = tuple[StageName, Reason] | None


async def probe(sim: SimSetup, name: str, **kw: object) -> ServerResult:
    inventory = sim.inventory()
    return await Prober(sim.config(), inventory, evidence=False).probe_relay(
        inventory.require(name),
        rotation=7,
        **kw,  # type: ignore[arg-type]
    )


def first_failures(result: ServerResult) -> dict[tuple[str, int], Expect]:
    """(family, port) -> (first failing stage, reason), or None for a path that passed."""
    out: dict[tuple[str, int], Expect] = {}
    for path in result.paths:
        failed = path.failed_stage
        out[(path.family, path.port)] = None if failed is None else (failed.name, failed.reason)  # type: ignore[assignment]
    return out


def assert_loopback_only(sim: SimSetup) -> None:
    bound = sim.fleet.bound()
    assert bound and all(ipaddress.ip_address(host).is_loopback for host, _ in bound), bound
    sent = sim.fleet.sent_to()
    assert all(ipaddress.ip_address(host).is_loopback for host in sent), sent


@pytest.mark.asyncio
async def test_healthy_relay_passes_every_stage_on_every_path_v4_and_v6(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 2) as sim:
        result = await probe(sim, "se-got-wg-001")
        assert result.ok and result.reason is None, first_failures(result)
        assert {p.family for p in result.paths} == {"ipv4", "ipv6"}
        # the main port and one port of each of the five ranges, on both families
        ports = {p.port for p in result.paths}
        assert len(result.paths) == 12 and len(ports) == 6 and {51820, 5300, 12300} <= ports
        assert ports <= {51820, 5300, 12300, 4000, 4001, 33565, 33566, 52001, 52002}
        for path in result.paths:
            assert [s.name for s in path.stages] == list(StageName)
            assert all(s.ok and s.received >= 3 for s in path.stages[1:]), path
        relay = sim.fleet.relay("se-got-wg-001")
        egress = {p.family: p.stages[3].detail for p in result.paths}
        assert str(relay.address) in str(egress["ipv4"]) and str(relay.ipv6) in str(egress["ipv6"])
        stats = relay.stats
        assert stats.handshakes == 12 and stats.valid_sent >= 12 * 12 and stats.bad_sent == 0
        assert sim.fleet.relay("se-got-wg-002").stats.initiations == 0
        assert_loopback_only(sim)


@pytest.mark.asyncio
async def test_relays_on_ipv6_loopback_with_ports_of_their_own(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 2, v6=V6Mode.LOOPBACK, port_ranges=((4000, 4000),)) as sim:
        first, second = sim.fleet.relays
        assert first.ipv6 == second.ipv6 == ipaddress.IPv6Address("::1") and first.port != second.port
        assert ("::1", first.port) in first.bound() and (str(first.address), first.port) in first.bound()
        assert 'source = "relays.toml"' in (tmp_path / "agent.toml").read_text()
        for name in ("se-got-wg-001", "se-got-wg-002"):
            result = await probe(sim, name)
            assert result.ok, first_failures(result)
            assert {(p.family, p.entry) for p in result.paths} == {
                ("ipv4", str(sim.fleet.relay(name).address)),
                ("ipv6", "::1"),
            }
            assert len(result.paths) == 4
        sim.fleet.break_relay("se-got-wg-002", SimFault.parse("down"))
        down = await probe(sim, "se-got-wg-002")
        assert set(first_failures(down).values()) == {(StageName.handshake, Reason.port_unreachable)}
        assert_loopback_only(sim)


LAB_TABLE: list[tuple[str, Expect, Expect]] = [
    ("nat", (StageName.forward, Reason.forward_timeout), (StageName.forward, Reason.forward_timeout)),
    ("forward", (StageName.forward, Reason.forward_timeout), (StageName.forward, Reason.forward_timeout)),
    ("drop", (StageName.forward, Reason.forward_timeout), (StageName.forward, Reason.forward_timeout)),
    ("egress", (StageName.egress, Reason.egress_mismatch), (StageName.egress, Reason.egress_mismatch)),
    ("mtu", (StageName.mtu, Reason.mtu_blackhole), (StageName.mtu, Reason.mtu_blackhole)),
    ("v6nat", None, (StageName.forward, Reason.forward_timeout)),
    ("down", (StageName.handshake, Reason.port_unreachable), (StageName.handshake, Reason.port_unreachable)),
]
HOSTILE_TABLE: list[tuple[str, Expect, Expect]] = [
    (
        "forge_handshake",
        (StageName.handshake, Reason.handshake_timeout),
        (StageName.handshake, Reason.handshake_timeout),
    ),
    ("cookie_only", (StageName.handshake, Reason.cookie_failed), (StageName.handshake, Reason.cookie_failed)),
    ("silent", (StageName.tunnel, Reason.tunnel_timeout), (StageName.tunnel, Reason.tunnel_timeout)),
    ("corrupt", (StageName.forward, Reason.reply_invalid), (StageName.forward, Reason.reply_invalid)),
    ("forge_payload", (StageName.forward, Reason.reply_invalid), (StageName.forward, Reason.reply_invalid)),
    ("forge_source", (StageName.forward, Reason.reply_invalid), (StageName.forward, Reason.reply_invalid)),
    (
        "icmp_unreachable",
        (StageName.forward, Reason.forward_unreachable),
        (StageName.forward, Reason.forward_unreachable),
    ),
    ("mtu_icmp", (StageName.mtu, Reason.mtu_too_big), (StageName.mtu, Reason.mtu_too_big)),
    ("garbage", None, None),
    ("icmp_foreign", None, None),
    ("cookie", None, None),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("fault", "expect_v4", "expect_v6"), LAB_TABLE + HOSTILE_TABLE)
async def test_fault_maps_to_stage_and_reason(tmp_path: Path, fault: str, expect_v4: Expect, expect_v6: Expect) -> None:
    async with agent_fleet(tmp_path, 2, faults=[("se-got-wg-002", SimFault.parse(fault))]) as sim:
        result = await probe(sim, "se-got-wg-002", only_port=51820)
        got = first_failures(result)
        assert got == {("ipv4", 51820): expect_v4, ("ipv6", 51820): expect_v6}, result.paths
        assert result.ok is (expect_v4 is None and expect_v6 is None)
        healthy = await probe(sim, "se-got-wg-001", only_port=51820)
        assert healthy.ok, "a fault stays on its relay"
        assert_loopback_only(sim)


@pytest.mark.asyncio
async def test_hostile_noise_is_sent_and_the_path_still_passes(tmp_path: Path) -> None:
    faults = [("se-got-wg-001", SimFault.parse("garbage")), ("se-got-wg-001", SimFault.parse("cookie"))]
    async with agent_fleet(tmp_path, 1, faults=faults) as sim:
        result = await probe(sim, "se-got-wg-001", only_port=51820)
        assert result.ok, first_failures(result)
        stats = sim.fleet.relay("se-got-wg-001").stats
        assert stats.cookies >= 2 and stats.bad_sent > 6 * stats.valid_sent // 2
        assert all("cookie" in str(p.stages[0].detail) for p in result.paths)


@pytest.mark.asyncio
async def test_ports_fault_closes_only_the_extended_ports(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 1, faults=[("se-got-wg-001", SimFault.parse("ports"))]) as sim:
        got = first_failures(await probe(sim, "se-got-wg-001"))
        assert len(got) == 12
        for (_family, port), expect in got.items():
            assert expect == (None if port == 51820 else (StageName.handshake, Reason.port_unreachable)), got
        assert sim.fleet.relay("se-got-wg-001").open_sockets == 1


@pytest.mark.asyncio
async def test_reflector_closed_fails_the_egress_stage(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 1, faults=[("se-got-wg-001", SimFault.parse("reflector_closed"))]) as sim:
        result = await probe(sim, "se-got-wg-001", only_port=51820, family="ipv4")
        [path] = result.paths
        assert path.failed_stage is not None and path.failed_stage.name is StageName.egress
        # the ICMP error is answered as a timeout today, as "unreachable" once the stage tells them apart
        assert path.failed_stage.reason in (Reason.egress_timeout, Reason.egress_unreachable)


@pytest.mark.asyncio
async def test_a_relay_that_vanishes_after_the_handshake(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 1, faults=[("se-got-wg-001", SimFault.parse("vanish"))]) as sim:
        first = first_failures(await probe(sim, "se-got-wg-001", only_port=51820, family="ipv4"))
        assert first == {("ipv4", 51820): (StageName.tunnel, Reason.tunnel_timeout)}
        again = first_failures(await probe(sim, "se-got-wg-001", only_port=51820, family="ipv4"))
        assert again == {("ipv4", 51820): (StageName.handshake, Reason.port_unreachable)}
        sim.fleet.heal_relay("se-got-wg-001")
        assert (await probe(sim, "se-got-wg-001", only_port=51820)).ok


@pytest.mark.asyncio
async def test_break_and_heal_change_the_next_probe(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 3) as sim:
        assert (await probe(sim, "se-got-wg-003", only_port=51820)).ok
        sim.fleet.break_relay("se-got-wg-003", SimFault.parse("nat"))
        broken = await probe(sim, "se-got-wg-003", only_port=51820)
        assert broken.reason is Reason.forward_timeout
        sim.fleet.break_relay("se-got-wg-003", SimFault.parse("down"))
        assert (await probe(sim, "se-got-wg-003", only_port=51820)).reason is Reason.port_unreachable
        sim.fleet.heal_relay("se-got-wg-003", SimFault.parse("down").kind)
        assert (await probe(sim, "se-got-wg-003", only_port=51820)).reason is Reason.forward_timeout
        sim.fleet.heal_relay("se-got-wg-003")
        assert (await probe(sim, "se-got-wg-003", only_port=51820)).ok
        with pytest.raises(ConfigError, match=r"se-got-wg-001\.\.se-got-wg-003"):
            sim.fleet.break_relay("se-got-wg-009", SimFault.parse("nat"))


@pytest.mark.asyncio
async def test_loss_passes_with_the_loss_reported(tmp_path: Path) -> None:
    # Enough attempts that 20% loss each way cannot fail the handshake by chance: 0.36**10 per path.
    probe_settings = {"timeout": 1.0, "handshake_timeout": 0.3, "handshake_attempts": 10}
    faults = [("se-got-wg-001", SimFault.parse("loss:20"))]
    async with agent_fleet(tmp_path, 1, faults=faults, probe=probe_settings) as sim:
        result = await probe(sim, "se-got-wg-001", only_port=51820)
        assert result.ok, first_failures(result)
        losses = [s.loss for p in result.paths for s in p.stages if s.name is not StageName.handshake]
        assert any(loss > 0 for loss in losses) and all(loss < 1 for loss in losses)
        assert sim.fleet.relay("se-got-wg-001").stats.lost > 0


@pytest.mark.asyncio
async def test_delay_shows_in_round_trip_times(tmp_path: Path) -> None:
    faults = [("se-got-wg-001", SimFault.parse("delay:100"))]
    async with agent_fleet(tmp_path, 1, faults=faults, probe={"timeout": 2.0}) as sim:
        result = await probe(sim, "se-got-wg-001", only_port=51820, family="ipv4")
        assert result.ok, first_failures(result)
        stages = {s.name: s for s in result.paths[0].stages}
        assert stages[StageName.handshake].seconds >= 0.1
        assert stages[StageName.tunnel].seconds >= 0.1  # the probe enters the relay once
        assert stages[StageName.forward].seconds >= 0.2  # the probe, then the target's answer: twice


@pytest.mark.asyncio
async def test_relay_list_file_is_the_inventory_the_fleet_describes(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 7, agents=2, identities=2) as sim:
        from_file = load_inventory(str(tmp_path / "relays.json"))
        in_memory: Inventory = sim.fleet.inventory()
        assert from_file.format.value == "mullvad-app" and not from_file.problems
        assert [r.model_dump() for r in from_file.relays] == [r.model_dump() for r in in_memory.relays]
        assert {r.labels["provider"] for r in from_file.relays} == {"31173", "M247", "xtom"}
        assert (tmp_path / "agent-2.toml").exists()
        second = sim.config(2)
        assert second.agent.name == "sim-agent-2" and [str(i.ipv4) for i in second.identities] == [
            "10.64.0.4",
            "10.64.0.5",
        ]
        keys = sorted((tmp_path / "keys").iterdir())
        assert len(keys) == 4 and all(key.stat().st_mode & 0o777 == 0o600 for key in keys)
        assert (await probe(sim, "se-got-wg-007", only_port=51820)).ok  # agent 1's keys
        inventory = sim.inventory(2)
        result = await Prober(second, inventory, evidence=False).probe_relay(inventory.require("se-got-wg-007"))
        assert result.ok, first_failures(result)


@pytest.mark.asyncio
async def test_the_real_reflector_answers_directly_on_loopback(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 1) as sim:
        checks = sim.config().checks
        loop = asyncio.get_running_loop()
        for endpoint in (checks.reflector, checks.reflector_v6):
            assert endpoint is not None and endpoint.host.is_loopback
            family = socket.AF_INET if endpoint.host.version == 4 else socket.AF_INET6
            with socket.socket(family, socket.SOCK_DGRAM) as client:
                client.setblocking(False)
                client.connect((str(endpoint.host), endpoint.port))
                client.send(reflector.build_request(b"n" * 16))
                answer = await asyncio.wait_for(loop.sock_recv(client, 100), 5.0)
                observed = reflector.parse_response(answer, b"n" * 16)
                assert observed.port == client.getsockname()[1] and observed.address.is_loopback
        assert sim.fleet.reflector is not None and sim.fleet.reflector.answered == 2
        assert checks.forward_target.is_loopback and checks.forward_target_v6 is not None
        assert checks.forward_target_v6.is_loopback


def test_nothing_is_ever_bound_outside_loopback() -> None:
    with pytest.raises(ConfigError, match="loopback addresses only"):
        bind_loopback(socket.AF_INET, "0.0.0.0", 0)
    with pytest.raises(ConfigError, match="loopback addresses only"):
        bind_loopback(socket.AF_INET6, "::", 0)


@pytest.mark.asyncio
async def test_a_fleet_past_one_subnet_and_a_block_in_use(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 260, port_ranges=(), identities=1) as sim:
        assert str(sim.fleet.relay("se-got-wg-251").address).endswith(".2.1")
        assert sim.fleet.status()["open_sockets"] == 260
        for name in ("se-got-wg-250", "se-got-wg-251", "se-got-wg-260"):
            result = await probe(sim, name)
            assert result.ok and len(result.paths) == 2, first_failures(result)
        taken = sim.fleet.plan.block if sim.fleet.plan else 0
        with pytest.raises(ConfigError, match=f"127.{taken}.0.0/16 is in use"):
            async with SimFleet(1, clients=[], block=taken, port_ranges=()):
                pass


def test_a_fleet_larger_than_the_open_file_limit_is_refused_with_the_limit_named() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_open_files(soft)  # within the limit: nothing to do
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(ConfigError, match=f"open-file limit is {hard}"):
            raise_open_files(hard + 1)


@pytest.mark.asyncio
async def test_outside_down_fails_every_relay_alike_and_the_direct_reflector_too(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path, 2) as sim:
        endpoint = sim.config().checks.reflector
        assert endpoint is not None
        sim.fleet.set_outside(False)
        for name in ("se-got-wg-001", "se-got-wg-002"):
            got = first_failures(await probe(sim, name, only_port=51820))
            assert set(got.values()) == {(StageName.forward, Reason.forward_timeout)}, got
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            client.connect((str(endpoint.host), endpoint.port))
            client.send(reflector.build_request(b"m" * 16))
            with pytest.raises(ConnectionRefusedError):  # the reflector's port is closed: ICMP port unreachable
                await asyncio.wait_for(loop.sock_recv(client, 100), 5.0)
        assert sim.fleet.status()["outside"] == "down"
        sim.fleet.set_outside(True)
        assert (await probe(sim, "se-got-wg-002")).ok
        assert sim.fleet.reflector is not None and sim.fleet.reflector.port == endpoint.port
