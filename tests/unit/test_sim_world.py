"""The simulated inside of a relay (sans-I/O) and the fault kinds: what comes back for each inner packet."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from probe import reflector
from probe.errors import ConfigError
from probe.packets import (
    Echo,
    IcmpError,
    IcmpErrorKind,
    PacketError,
    build_icmp_echo,
    build_udp,
    parse_icmp,
    parse_ip,
    parse_udp,
)
from probe.sim.faults import FaultKind, FaultSet, SimFault, parse_kind, parse_relay_fault
from probe.sim.plan import V6Mode, address_text, parse_port_ranges, plan_agents, plan_fleet, relay_key
from probe.sim.world import BEYOND, LOCAL, Egress, World, respond

WORLD = World(reflector_v4=(IPv4Address("127.0.0.1"), 7777), reflector_v6=(IPv6Address("::1"), 7777))
EGRESS = Egress(
    IPv4Address("127.9.1.1"), IPv6Address("::ffff:127.9.1.1"), IPv4Address("127.9.128.1"), IPv6Address("::2")
)
CLIENT = {4: "10.64.0.2", 6: "fc00:bbbb:bbbb:bb01::2"}
GATEWAY: dict[int, IPv4Address | IPv6Address] = {4: WORLD.gateway_v4, 6: WORLD.gateway_v6}
TARGET: dict[int, IPv4Address | IPv6Address] = {4: WORLD.forward_v4, 6: WORLD.forward_v6}


def echo(version: int, dst: object, size: int = 0) -> bytes:
    payload = b"probe-nonce-01" + bytes(max(0, size - 14))
    return build_icmp_echo(CLIENT[version], dst, 77, 5, payload)  # type: ignore[arg-type]


def request(version: int, nonce: bytes = bytes(range(16))) -> bytes:
    return build_udp(CLIENT[version], TARGET[version], 40001, 7777, reflector.build_request(nonce))


def answers(packet: bytes, *faults: str) -> list[tuple[int, bytes]]:
    return respond(parse_ip(packet), WORLD, EGRESS, FaultSet(SimFault.parse(f) for f in faults))


@pytest.mark.parametrize("version", [4, 6])
def test_healthy_inside_answers_gateway_target_and_reflector(version: int) -> None:
    [(hops, reply)] = answers(echo(version, GATEWAY[version]))
    ip = parse_ip(reply)
    message = parse_icmp(ip)
    assert hops == LOCAL and isinstance(message, Echo) and message.is_reply
    assert (ip.src, ip.dst, message.identifier, message.sequence) == (
        GATEWAY[version].packed,
        parse_ip(echo(version, GATEWAY[version])).src,
        77,
        5,
    )
    [(hops, reply)] = answers(echo(version, TARGET[version]))
    assert hops == BEYOND and parse_ip(reply).src == TARGET[version].packed
    [(hops, reply)] = answers(request(version))
    udp = parse_udp(parse_ip(reply))
    observed = reflector.parse_response(udp.payload, bytes(range(16)))
    assert hops == BEYOND and (udp.sport, udp.dport) == (7777, 40001)
    assert observed.address == (EGRESS.v4 if version == 4 else EGRESS.v6) and observed.port == 40001


@pytest.mark.parametrize("version", [4, 6])
def test_nothing_answers_what_has_no_host(version: int) -> None:
    other = IPv4Address("127.200.0.9") if version == 4 else IPv6Address("::9")
    assert answers(echo(version, other)) == []
    broken = bytearray(echo(version, TARGET[version]))
    broken[-1] ^= 0xFF  # an ICMP checksum error: a host drops the request
    assert answers(bytes(broken)) == []
    assert answers(build_udp(CLIENT[version], TARGET[version], 1, 7777, b"not a request")) == []
    assert answers(build_udp(CLIENT[version], TARGET[version], 1, 7778, reflector.build_request(bytes(16)))) == []


@pytest.mark.parametrize("kind", ["nat", "forward", "drop"])
@pytest.mark.parametrize("version", [4, 6])
def test_forwarding_faults_leave_only_the_gateway(kind: str, version: int) -> None:
    assert answers(echo(version, TARGET[version]), kind) == []
    assert answers(request(version), kind) == []
    assert len(answers(echo(version, GATEWAY[version]), kind)) == 1


def test_v6nat_breaks_only_ipv6_forwarding() -> None:
    assert answers(echo(6, TARGET[6]), "v6nat") == []
    assert len(answers(echo(4, TARGET[4]), "v6nat")) == 1
    assert len(answers(echo(6, GATEWAY[6]), "v6nat")) == 1


@pytest.mark.parametrize("version", [4, 6])
def test_mtu_faults_drop_or_refuse_only_large_forwarded_packets(version: int) -> None:
    assert answers(echo(version, TARGET[version], size=1280), "mtu") == []
    assert len(answers(echo(version, TARGET[version], size=1000), "mtu")) == 1
    assert len(answers(echo(version, GATEWAY[version], size=1280), "mtu")) == 1, "local delivery is not forwarding"
    [(_, error)] = answers(echo(version, TARGET[version], size=1280), "mtu_icmp")
    message = parse_icmp(parse_ip(error))
    assert isinstance(message, IcmpError) and message.kind is IcmpErrorKind.packet_too_big
    assert message.mtu == 1200 and message.quoted.identifier == 77


@pytest.mark.parametrize("version", [4, 6])
def test_egress_fault_shows_the_wrong_address(version: int) -> None:
    [(_, reply)] = answers(request(version), "egress")
    observed = reflector.parse_response(parse_udp(parse_ip(reply)).payload, bytes(range(16)))
    assert observed.address == (EGRESS.wrong_v4 if version == 4 else EGRESS.wrong_v6)


@pytest.mark.parametrize("version", [4, 6])
def test_forged_and_corrupted_target_replies(version: int) -> None:
    [(_, forged)] = answers(echo(version, TARGET[version]), "forge_payload")
    message = parse_icmp(parse_ip(forged))
    assert isinstance(message, Echo) and message.payload != b"probe-nonce-01"
    [(_, moved)] = answers(echo(version, TARGET[version]), "forge_source")
    assert parse_ip(moved).src != TARGET[version].packed
    [(_, broken)] = answers(echo(version, TARGET[version]), "corrupt")
    with pytest.raises(PacketError):
        parse_ip(broken)
    assert len(answers(request(version), "corrupt", "forge_payload", "forge_source")) == 1  # the reflector: untouched


@pytest.mark.parametrize("version", [4, 6])
def test_icmp_errors_quote_our_probe_or_someone_elses(version: int) -> None:
    [(_, error)] = answers(echo(version, TARGET[version]), "icmp_unreachable")
    message = parse_icmp(parse_ip(error))
    assert isinstance(message, IcmpError) and message.kind is IcmpErrorKind.destination_unreachable
    assert message.quoted.src == parse_ip(echo(version, TARGET[version])).src and message.quoted.identifier == 77
    [(_, foreign), (_, reply)] = answers(echo(version, TARGET[version]), "icmp_foreign")
    other = parse_icmp(parse_ip(foreign))
    assert isinstance(other, IcmpError) and other.quoted.identifier == 77
    assert other.quoted.src != message.quoted.src
    assert isinstance(parse_icmp(parse_ip(reply)), Echo)
    [(_, closed)] = answers(request(version), "reflector_closed")
    refused = parse_icmp(parse_ip(closed))
    assert isinstance(refused, IcmpError) and refused.quoted.sport == 40001


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("bogus", "unknown fault kind"),
        ("nat:3", "takes no argument"),
        ("loss", "needs a number of percent"),
        ("loss:0", "1..100"),
        ("delay:x", "milliseconds"),
        ("delay:20000", "1..10000"),
    ],
)
def test_bad_faults_are_config_errors(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        SimFault.parse(text)


def test_fault_set_keeps_one_fault_per_kind_and_precomputes_loss_and_delay() -> None:
    faults = FaultSet([SimFault.parse("loss:20"), SimFault.parse("loss:50"), SimFault.parse("delay:30")])
    assert (faults.names(), faults.loss, faults.delay, faults.inner) == (["loss:50", "delay:30"], 0.5, 0.03, False)
    faults.add(SimFault.parse("nat"))
    assert faults.inner and faults.blocks_forwarding(4)
    faults.remove(FaultKind.LOSS)
    assert faults.loss == 0.0 and FaultKind.NAT in faults
    faults.remove()
    assert not faults and faults.names() == []
    assert parse_kind("loss:20") is FaultKind.LOSS
    assert parse_relay_fault("se-got-wg-003:delay:150") == ("se-got-wg-003", SimFault(FaultKind.DELAY, 150))
    with pytest.raises(ConfigError, match="NAME:KIND"):
        parse_relay_fault("nat")


def test_plan_gives_distinct_loopback_addresses_and_stable_keys() -> None:
    plan = plan_fleet(600, block=77)
    addresses = [relay.ipv4 for relay in plan.relays]
    assert len(set(addresses)) == 600 and all(a.is_loopback for a in addresses)
    assert str(addresses[0]) == "127.77.1.1" and str(addresses[250]) == "127.77.2.1"
    assert all(r.wrong_egress_v4 not in addresses and r.wrong_egress_v4.is_loopback for r in plan.relays)
    assert plan.relays[0].name == "se-got-wg-001" and plan.relays[-1].name == "se-got-wg-600"
    assert address_text(plan.relays[0].ipv6) == "::ffff:127.77.1.1"  # type: ignore[arg-type]
    assert plan.relays[0].ports == (51820, 5300, 12300, 4000, 4001, 33565, 33566, 52001, 52002)
    assert {r.labels["provider"] for r in plan.relays} == {"31173", "M247", "xtom"}
    assert plan_fleet(2, block=77, v6=V6Mode.LOOPBACK).relays[1].ports == (0,) * 9
    seed = bytes(32)
    assert relay_key(seed, "se-got-wg-001") == relay_key(seed, "se-got-wg-001") != relay_key(seed, "se-got-wg-002")
    ids = [ident for agent in plan_agents(2, 3) for ident in agent.identities]
    assert [str(i.ipv4) for i in ids] == [f"10.64.0.{n}" for n in range(2, 8)]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: plan_fleet(0, block=77), "--relays"),
        (lambda: plan_fleet(3, block=0), "--block"),
        (lambda: plan_fleet(3, block=77, main_port=80), "1024-65535"),
        (lambda: plan_fleet(3, block=77, port_ranges=((4000, 4001), (4001, 4002))), "overlap"),
        (lambda: plan_agents(0), "--agents"),
        (lambda: parse_port_ranges("4000-x"), "LOW-HIGH"),
        (lambda: parse_port_ranges("4001-4000"), "reversed"),
    ],
)
def test_bad_plans_are_config_errors(call: object, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        call()  # type: ignore[operator]


def test_port_ranges_text() -> None:
    assert parse_port_ranges("5300, 4000-4001") == ((5300, 5300), (4000, 4001))
    assert parse_port_ranges("") == ()
