"""The runner's planning and dealing: which ports a relay's paths use over time, and that one key never probes
two paths of one relay at once (WireGuard keeps one session per key per relay)."""

from __future__ import annotations

import asyncio
from collections import Counter
from ipaddress import IPv4Address, IPv6Address

import pytest

from probe.agent_config import AgentConfig
from probe.config import AgentSection, ChecksSection, Identity, InventorySection, ProbeSection
from probe.inventory import Inventory, InventoryFormat, Relay
from probe.results import Reason, StageName, StageResult
from probe.runner import Prober, plan_paths
from probe.stages import REGISTRY, Registry
from probe.stages.base import PathContext
from probe.tunnel import Tunnel
from probe.wireguard import PrivateKey

KEY = "mRP6MzuuBDLtPvmCW2JtnYyhm1oZPAd4cXJ1c2MFpRM="
RANGES = ((53, 53), (123, 123), (4000, 4006), (51815, 51825))


def relay(name: str = "se-got-wg-001", *, v6: bool = True, main_port: int = 51820) -> Relay:
    return Relay(
        name=name,
        public_key=KEY,
        ipv4_addr_in=IPv4Address("192.0.2.1"),
        ipv6_addr_in=IPv6Address("2001:db8::1") if v6 else None,
        main_port=main_port,
        port_ranges=RANGES,
    )


def test_paths_are_the_main_port_plus_one_per_range_on_each_family() -> None:
    specs = plan_paths(relay(), rotation=0)
    assert len(specs) == 2 * 5 and {s.family for s in specs} == {"ipv4", "ipv6"}
    v4 = [s.port for s in specs if s.family == "ipv4"]
    assert v4[0] == 51820 and v4[1:3] == [53, 123]
    assert 4000 <= v4[3] <= 4006 and 51815 <= v4[4] <= 51825
    assert [s.port for s in plan_paths(relay(v6=False), rotation=0)] == v4
    assert [s.port for s in plan_paths(relay(), rotation=0, family="ipv6")] == v4
    assert [(s.port, s.family) for s in plan_paths(relay(), rotation=0, only_port=123)] == [
        (123, "ipv4"),
        (123, "ipv6"),
    ]


def test_rotation_visits_every_port_of_every_range_and_never_repeats_the_main_port() -> None:
    visits: dict[tuple[int, int], Counter[int]] = {r: Counter() for r in RANGES}
    rotations = 40
    for rotation in range(rotations):
        ports = [s.port for s in plan_paths(relay(), rotation=rotation, family="ipv4")]
        assert ports.count(51820) == 1  # the main port is probed once, as the main path
        assert len(ports) == len(set(ports))
        for port in ports[1:]:
            for low, high in RANGES:
                if low <= port <= high:
                    visits[(low, high)][port] += 1
    assert set(visits[(4000, 4006)]) == set(range(4000, 4007))
    assert set(visits[(51815, 51825)]) == set(range(51815, 51826)) - {51820}
    # A range's ports are visited evenly: 10 ports over 40 rotations, each 4 times.
    assert set(visits[(51815, 51825)].values()) == {4}
    # Two relays do not walk in step (a salt per name spreads the load on a shared range).
    other = [s.port for s in plan_paths(relay("se-got-wg-002"), rotation=0, family="ipv4")]
    assert other[3:] != [s.port for s in plan_paths(relay(), rotation=0, family="ipv4")][3:]


def config(identities: int) -> AgentConfig:
    # Built without validation: identities made in code share the "<memory>" key file name the model refuses.
    return AgentConfig.model_construct(
        agent=AgentSection(name="test-agent"),
        identities=tuple(
            Identity.with_private_key(PrivateKey.generate().raw, ipv4=IPv4Address(f"10.64.0.{n + 2}"))
            for n in range(identities)
        ),
        inventory=InventorySection(source="/nonexistent/relays.json"),
        checks=ChecksSection(forward_target=IPv4Address("198.51.100.7")),
        probe=ProbeSection(),
    )


@pytest.mark.asyncio
async def test_one_key_probes_one_path_of_a_relay_at_a_time_and_keys_run_side_by_side() -> None:
    relays = (relay("se-got-wg-001"), relay("se-got-wg-002"))
    inventory = Inventory(source="test", format=InventoryFormat.TOML, relays=relays)
    prober = Prober(config(identities=3), inventory, evidence=False)
    active: Counter[tuple[int, str]] = Counter()
    most: Counter[tuple[int, str]] = Counter()
    keys_at_once: list[int] = []

    async def handshake(ctx: PathContext) -> tuple[StageResult, Tunnel | None]:
        pair = (ctx.identity_index, ctx.relay_name)
        active[pair] += 1
        most[pair] = max(most[pair], active[pair])
        keys_at_once.append(len({i for (i, r), n in active.items() if n and r == ctx.relay_name}))
        await asyncio.sleep(0.01)
        active[pair] -= 1
        failed = StageResult(name=StageName.handshake, ok=False, reason=Reason.handshake_timeout, seconds=0, loss=1)
        return failed, None

    prober.registry = Registry(handshake, REGISTRY.stages)
    results = await asyncio.gather(*(prober.probe_relay(r, rotation=0) for r in relays))
    assert set(most.values()) == {1}  # never two paths of one key to one relay at once
    assert max(keys_at_once) == 3  # ... while the three keys did run side by side
    for result in results:
        assert len(result.paths) == 10 and result.reason is Reason.handshake_timeout
        assert Counter(p.identity for p in result.paths) == {0: 4, 1: 3, 2: 3}  # dealt round-robin


@pytest.mark.parametrize("size", [7919 * 2, 7919 * 3, 7907 * 2, 7919 * 2 + 1])
def test_rotation_visits_every_port_of_a_range_whose_size_shares_a_factor_with_the_stride(size: int) -> None:
    """A range of 2 x 7919 ports walked with a stride of 7919 visited 2 of its ports forever."""
    low = 1024
    wide = Relay(
        name="se-got-wg-001",
        public_key=KEY,
        ipv4_addr_in=IPv4Address("192.0.2.1"),
        main_port=51820,  # outside the range: all `size` ports are candidates
        port_ranges=((low, low + size - 1),),
    )
    seen = {plan_paths(wide, rotation=rotation)[1].port for rotation in range(size)}
    assert seen == set(range(low, low + size))
