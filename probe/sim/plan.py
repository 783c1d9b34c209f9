"""The simulated fleet's names, addresses, ports and keys: pure, so the fleet, its files and the tests agree.

Addressing without root. Linux answers for all of 127.0.0.0/8 on `lo`, so every relay gets an IPv4 address of its
own in a /16 chosen per fleet (`127.B.0.0/16`, B picked at random unless given, so several fleets on one machine
do not collide):

    127.B.0.1              the outside host: forward target, and a real reflector socket
    127.B.1.1 ...          relays, 250 per /24 (127.B.1-100.x): the main port plus the extended-range ports
    127.B.128.1 ...        each relay's "wrong" egress address for the `egress` fault (never bound)

IPv6 has only ::1 without root, so three modes:

- `mapped` (default): a relay's IPv6 entry address is its IPv4 address mapped (`::ffff:127.B.1.1`). The client opens
  an AF_INET6 socket and the tunnel carries IPv6 inside, while the datagrams on `lo` are IPv4 and the relay's own
  IPv4 sockets answer them. Scales to any fleet, fits Mullvad's list (whose ports are the same for every relay).
- `loopback`: every relay listens on ::1 itself, on ports of its own (ephemeral), with the same port numbers on its
  IPv4 address. Real IPv6 datagrams; for small fleets; needs an inventory with per-relay ports (our TOML format).
- `none`: no IPv6 entry address.

The "outside" for IPv6 is ::1 in every mode: the forward target, and a real reflector socket on [::1]:PORT.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from probe.errors import ConfigError
from probe.inventory import DEFAULT_MAIN_PORT, MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.lab.artifacts import LAB_PROVIDERS
from probe.lab.topology import relay_name
from probe.sim import DEFAULT_IDENTITIES
from probe.wireguard import PrivateKey

__all__ = [
    "DEFAULT_IDENTITIES",
    "DEFAULT_MAIN_PORT",
    "DEFAULT_PORT_RANGES",
    "AgentSpec",
    "ClientSpec",
    "RelaySpec",
    "SimPlan",
    "V6Mode",
    "plan_fleet",
]

# Mullvad's extended entry ranges (53, 123, 4000-33433, 33565-51820, 52001-60000) scaled down to ports a user may
# bind and a relay can afford a socket each for: one port per lone Mullvad port, two per range, so a probe's port
# rotation has something to rotate through. Every port listed is really answered.
DEFAULT_PORT_RANGES: tuple[tuple[int, int], ...] = (
    (5300, 5300),
    (12300, 12300),
    (4000, 4001),
    (33565, 33566),
    (52001, 52002),
)
LOOPBACK_V6 = IPv6Address("::1")
LOOPBACK_V4 = IPv4Address("127.0.0.1")
# A relay made on its own (not planned in a fleet) reports these under the `egress` fault: documentation addresses.
DOC_WRONG_EGRESS_V4 = IPv4Address("192.0.2.66")
DOC_WRONG_EGRESS_V6 = IPv6Address("2001:db8::66")
RELAYS_PER_SUBNET = 250
MAX_RELAYS = RELAYS_PER_SUBNET * 100  # 127.B.1.x - 127.B.100.x; the wrong egress addresses sit 127 subnets above
_WRONG_EGRESS_OFFSET = 127
BLOCKS = range(16, 251)  # second octets to pick from: clear of 127.0.x (resolvers, the usual 127.0.0.1)
MAX_AGENTS = 9
MAX_IDENTITIES = 16
LOCATION = "se-got"  # matches the names, as in the lab; grouping labels vary by provider and ownership instead


class V6Mode(StrEnum):
    MAPPED = "mapped"
    LOOPBACK = "loopback"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """One simulated relay: where it listens and what the outside world should see from it."""

    name: str
    ipv4: IPv4Address
    ipv6: IPv6Address | None = None
    ports: tuple[int, ...] = (0,)  # main port first; 0 = any free port (chosen when the sockets are bound)
    egress_v4: IPv4Address | None = None  # default: ipv4
    egress_v6: IPv6Address | None = None  # default: ipv6
    wrong_egress_v4: IPv4Address = DOC_WRONG_EGRESS_V4  # what the reflector sees under the `egress` fault
    wrong_egress_v6: IPv6Address = DOC_WRONG_EGRESS_V6
    labels: dict[str, str] = field(default_factory=dict, hash=False)  # provider, owned: Mullvad's label fields
    index: int = 0  # 1-based position in a fleet; 0 for a relay made on its own

    @property
    def own_v6_sockets(self) -> bool:
        """Whether the IPv6 entry needs sockets of its own (::1); a mapped address is served by the IPv4 ones."""
        return self.ipv6 is not None and self.ipv6.ipv4_mapped is None

    def expected_egress(self, version: int) -> IPv4Address | IPv6Address | None:
        if version == 4:
            return self.egress_v4 or self.ipv4
        return self.egress_v6 or self.ipv6


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One agent key the relays accept, and the tunnel addresses they allow it (Mullvad hands out one per key)."""

    agent: int
    number: int  # 1-based within the agent
    key_file: str  # relative to the fleet directory
    ipv4: IPv4Address
    ipv6: IPv6Address


@dataclass(frozen=True, slots=True)
class AgentSpec:
    index: int
    name: str
    identities: tuple[ClientSpec, ...]

    @property
    def config_file(self) -> str:
        return "agent.toml" if self.index == 1 else f"agent-{self.index}.toml"


@dataclass(frozen=True, slots=True)
class SimPlan:
    block: int
    relays: tuple[RelaySpec, ...]
    main_port: int
    port_ranges: tuple[tuple[int, int], ...]
    v6: V6Mode

    @property
    def outside_v4(self) -> IPv4Address:
        return IPv4Address(f"127.{self.block}.0.1")

    @property
    def outside_v6(self) -> IPv6Address:
        return LOOPBACK_V6


def expand_ranges(ranges: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    return tuple(port for low, high in ranges for port in range(low, high + 1))


def check_ports(main_port: int, ranges: tuple[tuple[int, int], ...]) -> None:
    ports = [main_port, *expand_ranges(ranges)]
    if any(not 1024 <= port <= 65535 for port in ports):
        raise ConfigError("simulated relays listen on ports 1024-65535 only (no root): check the main port and ranges")
    if len(set(ports)) != len(ports):
        raise ConfigError("the port ranges overlap each other or the main port")
    if len(ports) > 64:
        raise ConfigError(f"{len(ports)} ports per relay: every port is a socket per relay; keep it to 64 or fewer")


def parse_port_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """`5300,4000-4001` -> ((5300, 5300), (4000, 4001)); an empty string is no extended range."""
    ranges = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        first, _, last = item.partition("-")
        if not (first.isdecimal() and (not last or last.isdecimal())):
            raise ConfigError(f"port range {item[:20]!r}: write PORT or LOW-HIGH")
        ranges.append((int(first), int(last or first)))
    for low, high in ranges:
        if low > high:
            raise ConfigError(f"port range {low}-{high} is reversed")
    return tuple(ranges)


def plan_fleet(
    count: int,
    *,
    block: int,
    v6: V6Mode = V6Mode.MAPPED,
    main_port: int = DEFAULT_MAIN_PORT,
    port_ranges: tuple[tuple[int, int], ...] = DEFAULT_PORT_RANGES,
) -> SimPlan:
    if not 1 <= count <= MAX_RELAYS:
        raise ConfigError(f"--relays must be 1..{MAX_RELAYS}, got {count}")
    if block not in BLOCKS:
        raise ConfigError(f"--block must be {BLOCKS.start}..{BLOCKS.stop - 1} (the B of 127.B.0.0/16), got {block}")
    check_ports(main_port, port_ranges)
    wanted = (main_port, *expand_ranges(port_ranges))
    # ::1 is shared by every relay, so each gets free ports of its own; the inventory then lists them per relay.
    ports = tuple(0 for _ in wanted) if v6 is V6Mode.LOOPBACK else wanted
    relays = []
    for i in range(1, count + 1):
        subnet, host = divmod(i - 1, RELAYS_PER_SUBNET)
        ipv4 = IPv4Address(f"127.{block}.{1 + subnet}.{1 + host}")
        wrong = IPv4Address(f"127.{block}.{1 + subnet + _WRONG_EGRESS_OFFSET}.{1 + host}")
        ipv6 = {V6Mode.MAPPED: _mapped(ipv4), V6Mode.LOOPBACK: LOOPBACK_V6, V6Mode.NONE: None}[v6]
        labels = {"provider": LAB_PROVIDERS[(i - 1) % len(LAB_PROVIDERS)], "owned": "false" if i % 3 == 0 else "true"}
        relays.append(
            RelaySpec(
                name=relay_name(i),
                ipv4=ipv4,
                ipv6=ipv6,
                ports=ports,
                wrong_egress_v4=wrong,
                wrong_egress_v6=_mapped(wrong),
                labels=labels,
                index=i,
            )
        )
    return SimPlan(block=block, relays=tuple(relays), main_port=main_port, port_ranges=port_ranges, v6=v6)


def plan_agents(agents: int, identities: int = DEFAULT_IDENTITIES) -> tuple[AgentSpec, ...]:
    """Agent keys as the lab lays them out: 10.64.0.2, .3, ... and the same host parts in the IPv6 tunnel net."""
    if not 1 <= agents <= MAX_AGENTS:
        raise ConfigError(f"--agents must be 1..{MAX_AGENTS}, got {agents}")
    if not 1 <= identities <= MAX_IDENTITIES:
        raise ConfigError(f"--identities must be 1..{MAX_IDENTITIES}, got {identities}")
    out = []
    for a in range(1, agents + 1):
        name = "sim-agent" if a == 1 else f"sim-agent-{a}"
        ids = []
        for j in range(1, identities + 1):
            slot = (a - 1) * identities + j
            ids.append(
                ClientSpec(
                    agent=a,
                    number=j,
                    key_file=f"keys/{name}-{j}.key",
                    ipv4=IPv4Address(int(MULLVAD_IPV4_GATEWAY) + slot),
                    ipv6=IPv6Address(int(MULLVAD_IPV6_GATEWAY) + slot),
                )
            )
        out.append(AgentSpec(index=a, name=name, identities=tuple(ids)))
    return tuple(out)


def relay_key(seed: bytes, name: str) -> PrivateKey:
    """A relay's private key derived from the fleet's seed: a restarted fleet keeps its relays' public keys."""
    raw = bytearray(hashlib.blake2s(name.encode(), key=seed[:32], person=b"wgp-sim").digest())
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return PrivateKey(bytes(raw))


def address_text(address: IPv4Address | IPv6Address) -> str:
    """An address as written in files: an IPv4-mapped one as ::ffff:127.B.x.y (people read it), not ::ffff:7f4d:101."""
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def _mapped(address: IPv4Address) -> IPv6Address:
    return IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
