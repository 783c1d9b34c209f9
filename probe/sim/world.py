"""What lives behind a simulated relay: its in-tunnel gateway, its NAT, and the outside hosts beyond it.

Sans-I/O: an inner packet the client sent through the tunnel goes in, with the relay's faults and egress addresses;
the inner packets that come back out. Nothing here is ever sent to the addresses it names: the simulated relay
answers on behalf of the forward target and the reflector, from inside the tunnel, so no byte leaves loopback.

Each answer says how many times it entered the relay: 1 for the relay's own (the gateway's echo reply, its ICMP
errors), 2 for an answer from beyond the NAT (the probe went out, the answer came back in), which is what the
`delay` fault charges, as in the lab.

The faults change answers the way the lab's nftables rules and kernels do (probe/lab/faults.py), plus the lies of
a hostile relay, each scoped to the forward target's echoes (`forward` and `mtu` stages) so a test can tell which
stage a lie reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from probe import reflector
from probe.inventory import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    Echo,
    IcmpErrorKind,
    IPPacket,
    PacketError,
    build_icmp_echo,
    build_icmp_error,
    build_ip,
    build_udp,
    parse_icmp,
    parse_udp,
)
from probe.sim.faults import MTU_FAULT_LIMIT, FaultKind, FaultSet

LOCAL = 1  # the relay's own answer: entered the relay once (the probe)
BEYOND = 2  # an answer from beyond the NAT: entered the relay twice (the probe, then the answer)
Answer = tuple[int, bytes]  # (times it entered the relay, inner packet)

_ECHO_REQUESTS = {(4, PROTO_ICMP): 8, (6, PROTO_ICMPV6): 128}
# Where an ICMP error about "someone else's" packet says that packet went (documentation addresses).
_OTHER_CLIENT: dict[int, IPv4Address | IPv6Address] = {
    4: IPv4Address("10.64.0.99"),
    6: IPv6Address("fc00:bbbb:bbbb:bb01::99"),
}
_OTHER_TARGET: dict[int, IPv4Address | IPv6Address] = {4: IPv4Address("203.0.113.9"), 6: IPv6Address("2001:db8::9")}
_LOOPBACK_V4 = IPv4Address("127.0.0.1")
_LOOPBACK_V6 = IPv6Address("::1")
_HOST_UNREACHABLE = {4: 1, 6: 3}  # ICMP destination unreachable code: v4 host unreachable, v6 address unreachable
_PORT_UNREACHABLE = {4: 3, 6: 4}


@dataclass(frozen=True)
class World:
    """The addresses every relay of a fleet shares: in-tunnel gateways and the outside hosts the probes reach."""

    gateway_v4: IPv4Address = MULLVAD_IPV4_GATEWAY
    gateway_v6: IPv6Address = MULLVAD_IPV6_GATEWAY
    forward_v4: IPv4Address = _LOOPBACK_V4
    forward_v6: IPv6Address = _LOOPBACK_V6
    reflector_v4: tuple[IPv4Address, int] = (_LOOPBACK_V4, reflector.DEFAULT_PORT)
    reflector_v6: tuple[IPv6Address, int] = (_LOOPBACK_V6, reflector.DEFAULT_PORT)
    # Packed forms, compared against every inner packet.
    _gateway: dict[int, bytes] = field(init=False, repr=False, compare=False)
    _forward: dict[int, bytes] = field(init=False, repr=False, compare=False)
    _reflector: dict[int, tuple[bytes, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_gateway", {4: self.gateway_v4.packed, 6: self.gateway_v6.packed})
        object.__setattr__(self, "_forward", {4: self.forward_v4.packed, 6: self.forward_v6.packed})
        reflectors = {4: (self.reflector_v4[0].packed, self.reflector_v4[1])}
        reflectors[6] = (self.reflector_v6[0].packed, self.reflector_v6[1])
        object.__setattr__(self, "_reflector", reflectors)

    def gateway(self, version: int) -> bytes:
        return self._gateway[version]

    def forward_target(self, version: int) -> bytes:
        return self._forward[version]

    def reflector(self, version: int) -> tuple[bytes, int]:
        return self._reflector[version]


@dataclass(frozen=True, slots=True)
class Egress:
    """The public addresses one relay's NAT uses, and the wrong ones the `egress` fault uses instead."""

    v4: IPv4Address
    v6: IPv6Address | None
    wrong_v4: IPv4Address
    wrong_v6: IPv6Address

    def address(self, version: int, faults: FaultSet) -> IPv4Address | IPv6Address | None:
        if FaultKind.EGRESS in faults:
            return self.wrong_v4 if version == 4 else self.wrong_v6
        return self.v4 if version == 4 else self.v6


NO_FAULTS = FaultSet()


def respond(ip: IPPacket, world: World, egress: Egress, faults: FaultSet = NO_FAULTS) -> list[Answer]:
    """Every inner packet that comes back for `ip` (sent by the client into the tunnel), in order."""
    version = ip.version
    if ip.dst == world.gateway(version):
        return _gateway(ip)
    if faults.blocks_forwarding(version):
        return []
    if ip.total_length > MTU_FAULT_LIMIT and (FaultKind.MTU in faults or FaultKind.MTU_ICMP in faults):
        if FaultKind.MTU_ICMP not in faults:
            return []
        kind = IcmpErrorKind.packet_too_big
        return [(LOCAL, build_icmp_error(world.gateway(version), ip.src, kind, _quote(ip), mtu=MTU_FAULT_LIMIT))]
    if ip.proto == PROTO_UDP:  # the forward target and the reflector may share an address, as in the lab
        return _reflector(ip, world, egress, faults)
    return _forward_target(ip, world, faults) if ip.dst == world.forward_target(version) else []


def _gateway(ip: IPPacket) -> list[Answer]:
    """The relay's own address inside the tunnel: local delivery, which no forwarding fault touches."""
    echo = _echo_request(ip)
    if echo is None:
        return []
    return [(LOCAL, build_icmp_echo(ip.dst, ip.src, echo.identifier, echo.sequence, echo.payload, reply=True))]


def _echo_request(ip: IPPacket) -> Echo | None:
    request_type = _ECHO_REQUESTS.get((ip.version, ip.proto))
    if request_type is None or not ip.payload or ip.payload[0] != request_type:
        return None
    try:
        message = parse_icmp(ip)  # checksum verified: a host drops a corrupt request
    except PacketError:
        return None
    return message if isinstance(message, Echo) and not message.is_reply else None


def _forward_target(ip: IPPacket, world: World, faults: FaultSet) -> list[Answer]:
    echo = _echo_request(ip)
    if echo is None:
        return []
    version = ip.version
    if FaultKind.ICMP_UNREACHABLE in faults:
        kind = IcmpErrorKind.destination_unreachable
        error = build_icmp_error(world.gateway(version), ip.src, kind, _quote(ip), code=_HOST_UNREACHABLE[version])
        return [(LOCAL, error)]
    answers: list[Answer] = []
    if FaultKind.ICMP_FOREIGN in faults:
        other = build_icmp_echo(_OTHER_CLIENT[version], _OTHER_TARGET[version], echo.identifier, echo.sequence)
        kind = IcmpErrorKind.destination_unreachable
        code = _HOST_UNREACHABLE[version]
        answers.append((LOCAL, build_icmp_error(world.gateway(version), ip.src, kind, other, code=code)))
    source = ip.dst
    payload = echo.payload
    if FaultKind.FORGE_SOURCE in faults:
        source = (int.from_bytes(source, "big") + 1).to_bytes(len(source), "big")
    if FaultKind.FORGE_PAYLOAD in faults:
        payload = bytes([payload[0] ^ 0xFF]) + payload[1:] if payload else b"\xff"
    reply = build_icmp_echo(source, ip.src, echo.identifier, echo.sequence, payload, reply=True)
    if FaultKind.CORRUPT in faults:
        reply = corrupt(reply)
    answers.append((BEYOND, reply))
    return answers


def _reflector(ip: IPPacket, world: World, egress: Egress, faults: FaultSet) -> list[Answer]:
    address, port = world.reflector(ip.version)
    if ip.dst != address:
        return []
    try:
        udp = parse_udp(ip)
    except PacketError:
        return []
    nonce = reflector.parse_request(udp.payload)
    if udp.dport != port or nonce is None:
        return []
    if FaultKind.REFLECTOR_CLOSED in faults:
        kind = IcmpErrorKind.destination_unreachable
        code = _PORT_UNREACHABLE[ip.version]
        return [(BEYOND, build_icmp_error(address, ip.src, kind, _quote(ip), code=code))]
    seen = egress.address(ip.version, faults)
    if seen is None:
        return []
    # Masquerading keeps a free source port, which on a relay with few flows it always is.
    answer = reflector.build_response(nonce, seen, udp.sport)
    return [(BEYOND, build_udp(address, ip.src, port, udp.sport, answer))]


def corrupt(packet: bytes) -> bytes:
    """The packet made unparseable as IP: a wrong IPv4 header checksum, or an IPv6 length past its end."""
    broken = bytearray(packet)
    if packet[0] >> 4 == 4:
        broken[10] ^= 0xFF
    else:
        broken[4:6] = b"\xff\xff"
    return bytes(broken)


def _quote(ip: IPPacket) -> bytes:
    """The offending packet as an ICMP error quotes it (rebuilt from the parsed one: same addresses and payload)."""
    return build_ip(ip.src, ip.dst, ip.proto, ip.payload, ttl=ip.ttl, ident=ip.ident if ip.version == 4 else None)
