"""The lab's address and name plan: pure, so it is computed the same way by `up`, `status`, `down` and the tests.

Shape of the lab (every box is a network namespace; all names start with the lab prefix, `wgp` by default):

    {p}-agent-1 ─┐                     ┌─ {p}-r-se-got-wg-001  (wireguard-go, nft NAT + port redirects)
    {p}-agent-2 ─┤── {p}-inet (br0) ───┼─ {p}-r-se-got-wg-002
    {p}-outside ─┘   "the internet"    └─ ...

The internet segment uses the benchmarking range 198.18.0.0/15 (RFC 2544) and a ULA /64, so nothing in the lab can
be confused with a real address; traffic never leaves the namespaces. Inside every relay the tunnel side is the same
as on Mullvad's fleet: gateway 10.64.0.1 and fc00:bbbb:bbbb:bb01::1, clients at .2, .3, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from probe.errors import ConfigError
from probe.gateways import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.lab import DEFAULT_IDENTITIES, DEFAULT_PREFIX

WG_PORT = 51820
REFLECTOR_PORT = 7777
# The lab's relays are Mullvad-like: the same in-tunnel gateways as the inventories' defaults.
TUNNEL_V4_GATEWAY = MULLVAD_IPV4_GATEWAY
TUNNEL_V6_GATEWAY = MULLVAD_IPV6_GATEWAY
TUNNEL_V4_NET = "10.64.0.0/10"
TUNNEL_V6_NET = "fc00:bbbb:bbbb:bb01::/64"
INET_V4_PREFIXLEN = 15
INET_V6_PREFIXLEN = 64
_INET_V6 = "fd77:7770::"
# Mullvad's published entry port ranges; the lab redirects all of them to the WireGuard port as Mullvad's relays do.
PORT_RANGES: tuple[tuple[int, int], ...] = (
    (53, 53),
    (123, 123),
    (4000, 33433),
    (33565, 51820),
    (52001, 60000),
)
MAX_RELAYS = 500
MAX_AGENTS = 9
MAX_IDENTITIES = 8


@dataclass(frozen=True, slots=True)
class RelayPlan:
    index: int  # 1-based
    name: str
    netns: str
    wg_ifname: str  # unique machine-wide: wireguard-go control sockets share /var/run/wireguard/
    hub_ifname: str  # this relay's veth end inside the hub namespace
    ipv4: IPv4Address
    ipv6: IPv6Address
    wrong_egress_v4: IPv4Address  # a second address on the public link, used by the `egress` fault
    wrong_egress_v6: IPv6Address


@dataclass(frozen=True, slots=True)
class IdentityPlan:
    agent: int
    number: int  # 1-based within the agent
    ipv4: IPv4Address  # the tunnel address the relays allow for this key
    ipv6: IPv6Address

    key_file: str  # relative to the lab directory: keys/<agent name>-<number>.key


@dataclass(frozen=True, slots=True)
class AgentPlan:
    index: int
    name: str
    netns: str
    hub_ifname: str
    ipv4: IPv4Address
    ipv6: IPv6Address
    identities: tuple[IdentityPlan, ...]

    @property
    def config_file(self) -> str:
        return "agent.toml" if self.index == 1 else f"agent-{self.index}.toml"


@dataclass(frozen=True, slots=True)
class LabPlan:
    prefix: str
    relays: tuple[RelayPlan, ...]
    agents: tuple[AgentPlan, ...]
    hub_netns: str
    outside_netns: str
    outside_ipv4: IPv4Address
    outside_ipv6: IPv6Address
    reflector_port: int = REFLECTOR_PORT

    def relay(self, name: str) -> RelayPlan:
        for relay in self.relays:
            if relay.name == name:
                return relay
        raise ConfigError(f"no relay {name!r} in the lab (it has {self.relays[0].name}..{self.relays[-1].name})")


def relay_name(index: int) -> str:
    return f"se-got-wg-{index:03d}"


def _agent_name(index: int) -> str:
    return "lab-agent" if index == 1 else f"lab-agent-{index}"


def _inet_v4(third: int, fourth: int) -> IPv4Address:
    return IPv4Address(f"198.18.{third}.{fourth}")


def _inet_v6(group: int, host: int) -> IPv6Address:
    return IPv6Address(f"{_INET_V6}{group:x}:{host:x}")


def plan_lab(
    servers: int, agents: int = 1, identities: int = DEFAULT_IDENTITIES, prefix: str = DEFAULT_PREFIX
) -> LabPlan:
    if not 1 <= servers <= MAX_RELAYS:
        raise ConfigError(f"--servers must be 1..{MAX_RELAYS}, got {servers}")
    if not 1 <= agents <= MAX_AGENTS:
        raise ConfigError(f"--agents must be 1..{MAX_AGENTS}, got {agents}")
    if not 1 <= identities <= MAX_IDENTITIES:
        raise ConfigError(f"--identities must be 1..{MAX_IDENTITIES}, got {identities}")
    if not (prefix.isalnum() and prefix.islower() and 2 <= len(prefix) <= 4):
        raise ConfigError(f"lab prefix must be 2-4 lowercase letters/digits, got {prefix!r}")
    relays = tuple(
        RelayPlan(
            index=i,
            name=relay_name(i),
            netns=f"{prefix}-r-{relay_name(i)}",
            wg_ifname=f"{prefix}r{i:03d}",
            hub_ifname=f"r{i:03d}",
            # 200 relays per /24 keeps .0 and .255 unused; 198.18.1-3 hold relays, 198.18.101-103 their wrong egress.
            ipv4=_inet_v4(1 + (i - 1) // 200, 1 + (i - 1) % 200),
            ipv6=_inet_v6(1, i),
            wrong_egress_v4=_inet_v4(101 + (i - 1) // 200, 1 + (i - 1) % 200),
            wrong_egress_v6=_inet_v6(2, i),
        )
        for i in range(1, servers + 1)
    )
    agent_plans = []
    for a in range(1, agents + 1):
        ids = []
        for j in range(1, identities + 1):
            slot = (a - 1) * identities + j  # tunnel host part: 10.64.0.2, .3, ... as Mullvad hands out per key
            ids.append(
                IdentityPlan(
                    agent=a,
                    number=j,
                    ipv4=IPv4Address(int(TUNNEL_V4_GATEWAY) + slot),
                    ipv6=IPv6Address(int(TUNNEL_V6_GATEWAY) + slot),
                    key_file=f"keys/{_agent_name(a)}-{j}.key",
                )
            )
        agent_plans.append(
            AgentPlan(
                index=a,
                name=_agent_name(a),
                netns=f"{prefix}-agent-{a}",
                hub_ifname=f"a{a}",
                ipv4=_inet_v4(0, 10 + a),
                ipv6=_inet_v6(0xA, a),
                identities=tuple(ids),
            )
        )
    return LabPlan(
        prefix=prefix,
        relays=relays,
        agents=tuple(agent_plans),
        hub_netns=f"{prefix}-inet",
        outside_netns=f"{prefix}-outside",
        outside_ipv4=_inet_v4(0, 2),
        outside_ipv6=IPv6Address(f"{_INET_V6}2"),
    )
