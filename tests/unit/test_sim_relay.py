"""One `SimRelay` on its own, driven by wgprobe's client: the WireGuard behaviour a relay must have (flood limit,
key rotation, one endpoint per key), books that balance under hostile noise, scripted behaviours, real IPv6 on ::1."""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from probe.agent_config import AgentConfig
from probe.config import ChecksSection, Identity, InventorySection, ProbeSection
from probe.inventory import Inventory, InventoryFormat, Relay
from probe.packets import Echo, IPPacket, build_icmp_echo, parse_icmp, parse_ip
from probe.results import Reason, StageName
from probe.runner import Prober
from probe.sim.faults import SimFault
from probe.sim.plan import RelaySpec
from probe.sim.relay import Allowed, Conversation, SimError, SimRelay
from probe.sim.world import World
from probe.tunnel import InitiationPacer, Tunnel
from probe.wireguard import Identity as WgIdentity
from probe.wireguard import PrivateKey

INNER_V4 = IPv4Address("10.64.0.2")
INNER_V6 = IPv6Address("fc00:bbbb:bbbb:bb01::2")
GATEWAY = "10.64.0.1"


def agent(key: PrivateKey, world: World, tmp_path: Path) -> AgentConfig:
    """An agent config built in code for a relay that lives only in this test."""
    return AgentConfig(
        agent={"name": "test-agent"},  # type: ignore[arg-type]
        identities=(Identity.with_private_key(key.raw, ipv4=INNER_V4, ipv6=INNER_V6),),
        inventory=InventorySection(source=str(tmp_path / "unused.json")),
        checks=ChecksSection(
            forward_target=world.forward_v4,
            forward_target_v6=world.forward_v6,
            reflector=f"{world.reflector_v4[0]}:{world.reflector_v4[1]}",  # type: ignore[arg-type]
            reflector_v6=f"[{world.reflector_v6[0]}]:{world.reflector_v6[1]}",  # type: ignore[arg-type]
        ),
        probe=ProbeSection(timeout=0.5, handshake_timeout=0.3, handshake_attempts=2, evidence_dir=tmp_path),
    )


def inventory_of(relay: SimRelay) -> Inventory:
    entry = Relay(
        name="xx-tst-wg-001",
        public_key=relay.public_key.to_base64(),
        ipv4_addr_in=relay.address,
        ipv6_addr_in=relay.ipv6,
        main_port=relay.port,
    )
    return Inventory(source="test", format=InventoryFormat.TOML, relays=(entry,))


async def echo_through(tunnel: Tunnel, seq: int) -> bytes | None:
    tunnel.send(build_icmp_echo(str(INNER_V4), GATEWAY, 4242, seq, b"ping-%d" % seq))
    return await tunnel.recv(1.0)


@pytest.mark.asyncio
async def test_a_relay_on_its_own_with_real_ipv6_on_loopback_passes_every_stage(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    spec = RelaySpec(name="xx-tst-wg-001", ipv4=IPv4Address("127.0.0.1"), ipv6=IPv6Address("::1"))
    allowed = {key.public_key(): Allowed(INNER_V4, INNER_V6)}
    async with SimRelay(allowed, spec=spec, record=True) as relay:
        assert {host for host, _ in relay.bound()} == {"127.0.0.1", "::1"} and len(set(relay.ports)) == 1
        result = await Prober(agent(key, relay.world, tmp_path), inventory_of(relay)).probe_relay(
            inventory_of(relay).relays[0]
        )
    assert result.ok, result.paths
    assert [(p.family, p.entry) for p in result.paths] == [("ipv4", "127.0.0.1"), ("ipv6", "::1")]
    assert {ip.src for ip in relay.inner} == {INNER_V4.packed, INNER_V6.packed}  # the relay saw our tunnel addresses
    assert max(ip.total_length for ip in relay.inner) == 1280
    assert relay.sent_to <= {"127.0.0.1", "::1"}


@pytest.mark.asyncio
async def test_garbage_books_balance_what_the_client_rejects_is_what_the_relay_sent_bad(tmp_path: Path) -> None:
    me = WgIdentity(PrivateKey.generate())
    async with SimRelay([me.public_key], faults=[SimFault.parse("garbage")]) as relay:
        tunnel = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=1.0)
        try:
            replies = [await echo_through(tunnel, 1)]
            # From here on the client is established and listening: every lie lands in its tunnel's books. (The
            # duplicate handshake response before this point may be counted by the handshake or by the tunnel.)
            rejected, bad = tunnel.rejected, relay.stats.bad_sent
            replies += [await echo_through(tunnel, seq) for seq in range(2, 6)]
        finally:
            tunnel.close()
    assert all(reply is not None for reply in replies)
    assert [parse_icmp(parse_ip(reply)).sequence for reply in replies if reply] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    stats = relay.stats
    assert stats.valid_sent == 5 and stats.bad_sent == 1 + 5 * 5 + 4  # duplicate response; 5-6 lies per answer
    assert tunnel.rejected - rejected == stats.bad_sent - bad == 4 * 6
    assert stats.raw_sent == 3 + 1 + 5  # noise before the response, the response, a keepalive per answer


@pytest.mark.asyncio
async def test_initiations_within_the_flood_limit_are_ignored_as_wireguard_go_does() -> None:
    me = WgIdentity(PrivateKey.generate())
    async with SimRelay([me.public_key]) as relay:
        # Two pacers: nothing in the client spaces these two initiations, so they reach the relay together.
        first, second = await asyncio.gather(
            Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.3, pacer=InitiationPacer()),
            Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.3, pacer=InitiationPacer()),
        )
        first.close()
        second.close()
    assert relay.stats.flood_dropped == 1 and relay.stats.handshakes == 2
    assert sorted((first.initiations, second.initiations)) == [1, 2]  # the ignored one was sent again, later


@pytest.mark.asyncio
async def test_one_key_has_one_session_and_endpoint_so_two_users_of_a_key_disturb_each_other() -> None:
    me = WgIdentity(PrivateKey.generate())
    async with SimRelay([me.public_key]) as relay:
        first = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.5)
        second = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.5)
        third = None
        try:
            assert await echo_through(first, 1) is None  # its session was never used: the newer handshake replaced it
            assert await echo_through(second, 2) is not None  # the newest handshake is the key's session
            third = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.5)
            assert await echo_through(third, 3) is not None  # second's keys are now the relay's previous ones
            rejected = third.rejected
            # The previous keys still decrypt at the relay, but the answer goes where the key was last heard from,
            # with the current keys: the second user cannot read it, and the third, who can, is not sent it.
            second.send(build_icmp_echo(str(INNER_V4), GATEWAY, 4242, 4, b"ping-4"))
            assert await second.recv(0.3) is None
            assert second.rejected == 1 and third.rejected == rejected
            conv = relay.conversation(me.public_key)
            assert conv is not None and conv.previous is not None and conv.current is not None
        finally:
            for tunnel in (first, second, third):
                if tunnel is not None:
                    tunnel.close()
    stats = relay.stats
    assert (stats.handshakes, stats.received, stats.rejected, stats.valid_sent) == (3, 3, 1, 3)


@pytest.mark.asyncio
async def test_inner_packets_from_outside_the_allowed_addresses_are_dropped() -> None:
    me = WgIdentity(PrivateKey.generate())
    async with SimRelay({me.public_key: Allowed(IPv4Address("10.64.0.9"))}) as relay:
        tunnel = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.5)
        try:
            assert await echo_through(tunnel, 1) is None  # sent from 10.64.0.2
        finally:
            tunnel.close()
    assert (relay.stats.received, relay.stats.inner_dropped, relay.stats.valid_sent) == (1, 1, 0)


@pytest.mark.asyncio
async def test_a_scripted_behaviour_answers_instead_of_the_simulated_inside(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    seen: list[IPPacket] = []

    def only_the_gateway(conv: Conversation, ip: IPPacket) -> None:
        seen.append(ip)
        if ip.dst == conv.relay.world.gateway(4):
            conv.reply(ip)  # the default answer, for this packet only

    async with SimRelay([key.public_key()], behaviour=only_the_gateway) as relay:
        inventory = inventory_of(relay)
        result = await Prober(agent(key, relay.world, tmp_path), inventory).probe_relay(inventory.relays[0])
    [path] = result.paths
    assert path.failed_stage is not None
    assert (path.failed_stage.name, path.failed_stage.reason) == (StageName.forward, Reason.forward_timeout)
    assert path.stages[1].ok and len(seen) >= 12


@pytest.mark.asyncio
async def test_a_failure_of_the_relay_itself_fails_the_block_not_silently() -> None:
    me = WgIdentity(PrivateKey.generate())

    def broken(conv: Conversation, ip: IPPacket) -> None:
        raise RuntimeError("relay bug")

    with pytest.raises(SimError, match="relay bug"):
        async with SimRelay([me.public_key], behaviour=broken) as relay:
            tunnel = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.5)
            try:
                assert await echo_through(tunnel, 1) is None
            finally:
                tunnel.close()
    assert relay.stats.errors == 1


@pytest.mark.asyncio
async def test_closed_and_reopened_ports_keep_their_numbers() -> None:
    me = WgIdentity(PrivateKey.generate())
    async with SimRelay(
        [me.public_key], spec=RelaySpec(name="r", ipv4=IPv4Address("127.0.0.1"), ports=(0, 0))
    ) as relay:
        ports = relay.ports
        assert len(ports) == 2 and relay.open_sockets == 2
        relay.add_fault(SimFault.parse("ports"))
        assert relay.open_sockets == 1 and relay.bound() == [("127.0.0.1", ports[0])]
        relay.add_fault(SimFault.parse("down"))
        assert relay.open_sockets == 0
        relay.heal()
        assert relay.ports == ports and relay.open_sockets == 2
        tunnel = await Tunnel.open(me, relay.public_key, relay.address, ports[1], timeout=0.5)
        try:
            reply = await echo_through(tunnel, 1)
        finally:
            tunnel.close()
    assert reply is not None and isinstance(parse_icmp(parse_ip(reply)), Echo)


@pytest.mark.asyncio
async def test_sessions_past_reject_after_time_are_forgotten() -> None:
    me = WgIdentity(PrivateKey.generate())
    async with SimRelay([me.public_key]) as relay:
        tunnel = await Tunnel.open(me, relay.public_key, relay.address, relay.port, timeout=0.5)
        try:
            assert await echo_through(tunnel, 1) is not None
            assert relay.prune(time.time()) == 0
            assert relay.prune(time.time() + 181) == 1  # WireGuard's REJECT_AFTER_TIME is 180 s
            assert await echo_through(tunnel, 2) is None
        finally:
            tunnel.close()
        conv = relay.conversation(me.public_key)
        assert conv is not None and (conv.previous, conv.current, conv.next) == (None, None, None)
    assert (relay.stats.received, relay.stats.rejected, relay.stats.valid_sent) == (1, 1, 1)
