"""A relay's firewall, rendered from its faults: one nftables table per relay namespace, replaced atomically.

Healthy relay (as on Mullvad's fleet): the extended entry port ranges are redirected to the WireGuard port, tunnel
traffic is masqueraded out of the public interface, nothing is filtered. Each fault removes or adds exactly one
piece, so a test can check that a fault produces its symptom and nothing else.

This kernel has no nft `queue` expression (CONFIG_NFT_QUEUE is off) but has the xtables NFQUEUE target, so the
`delay` fault alone uses iptables-nft rules (see `delay_rules`) feeding `probe.lab.nfqueue`.
"""

from __future__ import annotations

from collections.abc import Iterable

from probe.lab.faults import MTU_FAULT_LIMIT, Fault, FaultKind
from probe.lab.topology import PORT_RANGES, TUNNEL_V4_NET, TUNNEL_V6_NET, WG_PORT, RelayPlan

TABLE = "wgprobe_lab"
ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"
PUBLIC_IF = "eth0"


def _kinds(faults: Iterable[Fault]) -> dict[FaultKind, Fault]:
    return {fault.kind: fault for fault in faults}


def _redirect_ports() -> str:
    # The main port needs no redirect; every other range is sent to it, as Mullvad's port_ranges are.
    parts = [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in PORT_RANGES if not lo <= WG_PORT <= hi]
    parts += [f"{lo}-{WG_PORT - 1}" for lo, hi in PORT_RANGES if lo < WG_PORT == hi]
    return ", ".join(parts)


def render_ruleset(relay: RelayPlan, faults: Iterable[Fault]) -> str:
    """The `nft -f` script that replaces the relay's table with one matching `faults`."""
    active = _kinds(faults)
    wg = relay.wg_ifname
    pre: list[str] = []
    if FaultKind.PORTS not in active:
        pre.append(f'iifname "{PUBLIC_IF}" udp dport {{ {_redirect_ports()} }} redirect to :{WG_PORT}')

    post_nat: list[str] = []
    if FaultKind.EGRESS in active:
        post_nat.append(f'oifname "{PUBLIC_IF}" ip saddr {TUNNEL_V4_NET} snat ip to {relay.wrong_egress_v4}')
        post_nat.append(f'oifname "{PUBLIC_IF}" ip6 saddr {TUNNEL_V6_NET} snat ip6 to {relay.wrong_egress_v6}')
    else:
        if FaultKind.NAT not in active:
            post_nat.append(f'oifname "{PUBLIC_IF}" ip saddr {TUNNEL_V4_NET} masquerade')
        if FaultKind.NAT not in active and FaultKind.V6NAT not in active:
            post_nat.append(f'oifname "{PUBLIC_IF}" ip6 saddr {TUNNEL_V6_NET} masquerade')

    forward: list[str] = []
    if FaultKind.DROP in active:
        forward.append(f'iifname "{wg}" drop')
    if FaultKind.MTU in active:
        forward.append(f'iifname "{wg}" meta length > {MTU_FAULT_LIMIT} drop')

    egress_filter: list[str] = []
    ingress_filter: list[str] = []
    loss = active.get(FaultKind.LOSS)
    if loss is not None:
        # numgen's range is 0-99, so 100% is a plain drop rather than "< 100" (which nft refuses).
        chance = "" if loss.arg == 100 else f" numgen random mod 100 < {loss.arg}"
        # Each way, as lossy transit is: packets leaving the relay and packets arriving at it. Neighbour discovery
        # is spared: the loss models transit, and a relay's link to its own router is not where that happens.
        # Losing NS/NA would stall IPv6 for the kernel's 1 s retransmit timer instead.
        for rules, match in ((egress_filter, "oifname"), (ingress_filter, "iifname")):
            rules.append(f'{match} "{PUBLIC_IF}" icmpv6 type {{ {ND_TYPES} }} accept')
            rules.append(f'{match} "{PUBLIC_IF}"{chance} drop')

    return "\n".join(
        [
            delete_ruleset(),
            f"table inet {TABLE} {{",
            _chain("entry_ports", "nat hook prerouting priority dstnat", pre),
            _chain("source_nat", "nat hook postrouting priority srcnat", post_nat),
            _chain("forward_filter", "filter hook forward priority filter", forward),
            _chain("public_egress", "filter hook postrouting priority filter", egress_filter),
            # Before connection tracking and NAT, as a packet lost on the way never reaches them.
            _chain("public_ingress", "filter hook prerouting priority raw", ingress_filter),
            "}",
            "",
        ]
    )


def _chain(name: str, hook: str, rules: list[str]) -> str:
    body = "".join(f"    {rule}\n" for rule in rules)
    return f"  chain {name} {{\n    type {hook}; policy accept;\n{body}  }}"


def delete_ruleset() -> str:
    # `table X` first makes the delete succeed whether or not the table exists.
    return f"table inet {TABLE}\ndelete table inet {TABLE}"


def delay_rules(queue: int, *, add: bool) -> list[list[str]]:
    """iptables/ip6tables commands that send every packet arriving on the public link to NFQUEUE `queue`.

    Held in the raw table, before connection tracking sees the packet: queued after conntrack (in postrouting),
    several packets of one new flow would sit unconfirmed at once and all but the first be dropped as clashes on
    reinjection, turning "delay" into "delay plus loss". A round trip through the relay's NAT crosses the link
    inbound twice (agent to relay, target to relay), so it grows by twice the delay, as with a delay outbound.
    `--queue-bypass` lets packets through if the holder process is gone, so a crashed holder degrades to "no delay"
    rather than "relay dead" (that would be a different fault).
    """
    action = "-A" if add else "-D"
    rule = ["-t", "raw", action, "PREROUTING", "-i", PUBLIC_IF, "-j", "NFQUEUE"]
    rule += ["--queue-num", str(queue), "--queue-bypass"]
    return [["iptables", *rule], ["ip6tables", *rule]]


def needs_forwarding(faults: Iterable[Fault]) -> bool:
    return FaultKind.FORWARD not in _kinds(faults)
