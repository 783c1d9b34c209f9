"""Bring the lab up and down, and change its faults live.

Every relay change goes through one reconciliation, `apply_faults`: given the faults a relay should have, it sets
the firewall table, forwarding, the WireGuard process and the delay holder to match. `up`, `break` and `heal` differ
only in the fault list they hand it, so a fault injected at start-up and one injected live are the same thing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from probe.errors import LabError
from probe.lab import DEFAULT_IDENTITIES, firewall, netns
from probe.lab.artifacts import identity_public_keys, write_artifacts
from probe.lab.faults import Fault, FaultKind
from probe.lab.processes import has_exited, is_running, log_tail, stop, wait_until
from probe.lab.state import LabState, RelayState, load_state, save_state, state_path
from probe.lab.topology import (
    INET_V4_PREFIXLEN,
    INET_V6_PREFIXLEN,
    TUNNEL_V4_GATEWAY,
    TUNNEL_V6_GATEWAY,
    WG_PORT,
    LabPlan,
    RelayPlan,
    plan_lab,
)

BRIDGE = "br0"
PUBLIC_IF = firewall.PUBLIC_IF
WG_SOCKET_DIR = Path("/var/run/wireguard")
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}  # silences wireguard-go's kernel-module banner
REQUIRED_TOOLS = ("ip", "wg", "wireguard-go", "nft", "iptables", "ip6tables", "sysctl")


def preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab builds network namespaces and needs root: run it as root (sudo)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: install them with scripts/setup.sh (Debian packages)")


Address = tuple[IPv4Address | IPv6Address, int]


def _endpoint(
    plan: LabPlan, ns_name: str, hub_ifname: str, addresses: list[Address], secondary: Sequence[Address] = ()
) -> None:
    netns.create_netns(ns_name)
    netns.add_veth_to(plan.hub_netns, BRIDGE, hub_ifname, ns_name, PUBLIC_IF)
    netns.set_sysctls(ns_name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
    netns.configure_link(ns_name, PUBLIC_IF, addresses, secondary=secondary)


def up(
    lab_dir: Path,
    servers: int,
    *,
    agents: int = 1,
    identities: int = DEFAULT_IDENTITIES,
    faults: Sequence[tuple[str, Fault]] = (),
    prefix: str | None = None,
) -> LabState:
    """Build the lab described by the arguments, replacing any stale lab with the same prefix."""
    preflight()
    plan = plan_lab(servers, agents, identities, prefix or "wgp")
    wanted: dict[str, list[Fault]] = {relay.name: [] for relay in plan.relays}
    for name, fault in faults:
        plan.relay(name)  # raises with the valid range for a name not in the lab
        wanted[name] = [f for f in wanted[name] if f.kind is not fault.kind] + [fault]
    down(lab_dir, prefix=plan.prefix, quiet=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    write_artifacts(lab_dir, plan)
    state = LabState(prefix=plan.prefix, servers=servers, agents=agents, identities=identities)
    try:
        _build(lab_dir, plan, state, wanted)
    except BaseException:
        down(lab_dir, prefix=plan.prefix, quiet=True)
        raise
    return state


def _build(lab_dir: Path, plan: LabPlan, state: LabState, wanted: dict[str, list[Fault]]) -> None:
    netns.create_netns(plan.hub_netns)
    netns.add_bridge(plan.hub_netns, BRIDGE)
    save_state(lab_dir, state)  # from here on, `down` can find what is made even if the build fails midway
    _endpoint(
        plan,
        plan.outside_netns,
        "out",
        [(plan.outside_ipv4, INET_V4_PREFIXLEN), (plan.outside_ipv6, INET_V6_PREFIXLEN)],
    )
    for agent in plan.agents:
        _endpoint(
            plan,
            agent.netns,
            agent.hub_ifname,
            [(agent.ipv4, INET_V4_PREFIXLEN), (agent.ipv6, INET_V6_PREFIXLEN)],
        )
    for relay in plan.relays:
        public: list[Address] = [(relay.ipv4, INET_V4_PREFIXLEN), (relay.ipv6, INET_V6_PREFIXLEN)]
        wrong: list[Address] = [(relay.wrong_egress_v4, INET_V4_PREFIXLEN), (relay.wrong_egress_v6, INET_V6_PREFIXLEN)]
        _endpoint(plan, relay.netns, relay.hub_ifname, public, secondary=wrong)
        state.relays[relay.name] = RelayState()
    listen = [f"{plan.outside_ipv4}:{plan.reflector_port}", f"[{plan.outside_ipv6}]:{plan.reflector_port}"]
    args = [sys.executable, "-m", "probe", "reflector"]
    for item in listen:
        args += ["--listen", item]
    state.reflector_pid = netns.spawn_in(plan.outside_netns, args, lab_dir / "logs" / "reflector.log")
    save_state(lab_dir, state)
    peers = identity_public_keys(lab_dir, plan)
    # Start every relay's WireGuard first and wait for them together: startup latency overlaps across relays.
    for relay in plan.relays:
        if not any(f.kind is FaultKind.DOWN for f in wanted[relay.name]):
            state.relays[relay.name].wg_pid = _spawn_wireguard(lab_dir, relay)
    save_state(lab_dir, state)
    for relay in plan.relays:
        apply_faults(lab_dir, plan, relay, state.relays[relay.name], wanted[relay.name], peers)
    wait_until(lambda: _reflector_listening(plan), "the reflector to listen", timeout=10)
    save_state(lab_dir, state)


def _reflector_listening(plan: LabPlan) -> bool:
    out = netns.run_in(plan.outside_netns, ["ss", "-Hlun"], check=False).stdout
    return f":{plan.reflector_port}" in out


def _spawn_wireguard(lab_dir: Path, relay: RelayPlan) -> int:
    log = lab_dir / "logs" / f"{relay.name}.log"
    return netns.spawn_in(relay.netns, ["wireguard-go", "-f", relay.wg_ifname], log, env=WG_ENV)


def wait_for_wireguard(namespace: str, ifname: str, pid: int, log: Path, what: str) -> None:
    """Wait until the wireguard-go `pid`, started for `ifname` in `namespace`, answers `wg show` (its control socket
    appears before it listens). A LabError quoting its log's errors when it exits first or does not answer in 10 s.
    """

    def ready() -> bool:
        return has_exited(pid) or netns.run_in(namespace, ["wg", "show", ifname], check=False).returncode == 0

    try:
        wait_until(ready, what, timeout=10)
    except LabError as exc:
        raise LabError(f"{exc}; its log: {log_tail(log)}") from exc
    if has_exited(pid):
        raise LabError(f"{what} exited: {log_tail(log)}")


def _configure_wireguard(lab_dir: Path, relay: RelayPlan, pid: int, peers: list[tuple[str, str]]) -> None:
    log = lab_dir / "logs" / f"{relay.name}.log"
    wait_for_wireguard(relay.netns, relay.wg_ifname, pid, log, f"wireguard-go of {relay.name} (log {log})")
    # Link up before adding peers, or the first initiation a peer sends is lost.
    netns.configure_link(relay.netns, relay.wg_ifname, [(TUNNEL_V4_GATEWAY, 10), (TUNNEL_V6_GATEWAY, 64)])
    key_file = lab_dir / "relays" / f"{relay.name}.key"
    cmd = ["wg", "set", relay.wg_ifname, "listen-port", str(WG_PORT), "private-key", str(key_file)]
    for public, allowed in peers:
        cmd += ["peer", public, "allowed-ips", allowed]
    netns.run_in(relay.netns, cmd)


def apply_faults(
    lab_dir: Path,
    plan: LabPlan,
    relay: RelayPlan,
    relay_state: RelayState,
    faults: list[Fault],
    peers: list[tuple[str, str]] | None = None,
) -> None:
    """Reconcile one relay with `faults` (idempotent)."""
    kinds = {fault.kind: fault for fault in faults}
    forwarding = "1" if firewall.needs_forwarding(faults) else "0"
    netns.set_sysctls(relay.netns, {"net.ipv4.ip_forward": forwarding, "net.ipv6.conf.all.forwarding": forwarding})
    netns.run_in(relay.netns, ["nft", "-f", "-"], input_text=firewall.render_ruleset(relay, faults))
    _reconcile_wireguard(lab_dir, plan, relay, relay_state, FaultKind.DOWN in kinds, peers)
    _reconcile_delay(lab_dir, relay, relay_state, kinds.get(FaultKind.DELAY))
    relay_state.faults = [str(fault) for fault in faults]


def _reconcile_wireguard(
    lab_dir: Path,
    plan: LabPlan,
    relay: RelayPlan,
    relay_state: RelayState,
    down: bool,
    peers: list[tuple[str, str]] | None,
) -> None:
    pid = relay_state.wg_pid
    running = pid is not None and is_running(pid, "wireguard-go")
    if down:
        if pid is not None:
            stop(pid, "wireguard-go")
        _remove_socket(relay.wg_ifname)
        relay_state.wg_pid = None
        # The TUN device outlives the process briefly; a restart before it is gone fails with EBUSY.
        wait_until(lambda: not netns.link_exists(relay.netns, relay.wg_ifname), f"{relay.wg_ifname} to go away")
        return
    if running and peers is None:
        return  # already up and configured
    if not running:
        pid = _spawn_wireguard(lab_dir, relay)
        relay_state.wg_pid = pid
    assert pid is not None
    _configure_wireguard(lab_dir, relay, pid, peers if peers is not None else identity_public_keys(lab_dir, plan))


def _reconcile_delay(lab_dir: Path, relay: RelayPlan, relay_state: RelayState, fault: Fault | None) -> None:
    pid = relay_state.delay_pid
    if pid is not None:
        stop(pid, "probe.lab.nfqueue")
        relay_state.delay_pid = None
    for cmd in firewall.delay_rules(relay.index, add=False):
        check = [cmd[0], *["-C" if part == "-D" else part for part in cmd[1:]]]
        while netns.run_in(relay.netns, check, check=False).returncode == 0:
            netns.run_in(relay.netns, cmd)
    if fault is None:
        return
    log = lab_dir / "logs" / f"{relay.name}-delay.log"
    argv = [sys.executable, "-m", "probe.lab.nfqueue", str(relay.index), str(fault.arg)]
    relay_state.delay_pid = netns.spawn_in(relay.netns, argv, log)
    # The rules carry --queue-bypass: added before the holder has bound its queue, the first packets would slip
    # through undelayed. /proc/net/netfilter/nfnetlink_queue lists the queues bound in this namespace.
    wait_until(lambda: _queue_bound(relay.netns, relay.index), f"the delay holder of {relay.name} to bind its queue")
    for cmd in firewall.delay_rules(relay.index, add=True):
        netns.run_in(relay.netns, cmd)


def _queue_bound(ns: str, queue: int) -> bool:
    table = netns.run_in(ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
    return any(line.split()[:1] == [str(queue)] for line in table.splitlines())


def _remove_socket(ifname: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (WG_SOCKET_DIR / f"{ifname}.sock").unlink()


def set_faults(lab_dir: Path, name: str, faults: list[Fault]) -> LabState:
    """Give relay `name` exactly `faults` (live), and record it."""
    preflight()
    state = load_state(lab_dir)
    plan = state.plan()
    relay = plan.relay(name)
    apply_faults(lab_dir, plan, relay, state.relays[name], faults)
    save_state(lab_dir, state)
    return state


def break_relay(lab_dir: Path, name: str, fault: Fault) -> LabState:
    state = load_state(lab_dir)
    current = state.relays[state.plan().relay(name).name].parsed_faults()
    return set_faults(lab_dir, name, [f for f in current if f.kind is not fault.kind] + [fault])


def heal_relay(lab_dir: Path, name: str, kind: FaultKind | None = None) -> LabState:
    state = load_state(lab_dir)
    current = state.relays[state.plan().relay(name).name].parsed_faults()
    return set_faults(lab_dir, name, [f for f in current if kind is not None and f.kind is not kind])


def _our_socket(prefix: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(prefix)}[rc]\d{{1,3}}\.sock", name) is not None


def down(lab_dir: Path, *, prefix: str | None = None, quiet: bool = False) -> list[str]:
    """Remove the lab recorded in `lab_dir`: its processes (by recorded PID, then any left in its namespaces),
    namespaces and sockets. Returns what was removed.

    Without a state file only an explicit `prefix` says what to remove (a crashed `up`, or `up` replacing a stale
    lab): a directory that holds no lab must never tear down some other lab that happens to use the default prefix.
    """
    state: LabState | None = None
    if state_path(lab_dir).exists():
        with contextlib.suppress(LabError):
            state = load_state(lab_dir)
    prefix = prefix or (state.prefix if state else None)
    if prefix is None:
        return [] if quiet else [f"nothing to remove (no lab state in {lab_dir})"]
    ours = state is not None and state.prefix == prefix
    removed = _stop_recorded(state) if ours and state is not None else []
    removed += _remove_namespaces(prefix)
    removed += _remove_sockets(prefix)
    if ours:
        state_path(lab_dir).unlink(missing_ok=True)
    if not quiet and not removed:
        removed.append("nothing to remove")
    return removed


def _stop_recorded(state: LabState) -> list[str]:
    removed = []
    recorded = [(state.reflector_pid, "reflector")]
    for relay_state in state.relays.values():
        recorded += [(relay_state.wg_pid, "wireguard-go"), (relay_state.delay_pid, "probe.lab.nfqueue")]
    for pid, expect in recorded:
        if pid is not None and is_running(pid, expect):
            stop(pid, expect)
            removed.append(f"process {pid} ({expect})")
    return removed


def _remove_namespaces(prefix: str) -> list[str]:
    removed = []
    for name in netns.list_netns():
        if not name.startswith(f"{prefix}-"):
            continue
        for pid in netns.netns_pids(name):  # anything still inside a namespace the lab made was started in it
            stop(pid, "")
            removed.append(f"process {pid} in {name}")
        netns.remove_netns(name)
        removed.append(f"namespace {name}")
    return removed


def _remove_sockets(prefix: str) -> list[str]:
    removed = []
    if WG_SOCKET_DIR.is_dir():
        for sock in WG_SOCKET_DIR.iterdir():
            if _our_socket(prefix, sock.name):
                sock.unlink(missing_ok=True)
                removed.append(f"socket {sock}")
    return removed
