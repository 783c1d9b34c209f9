"""The lab's one boundary to netlink (pyroute2) and to the commands it runs inside namespaces.

Everything here converts pyroute2's and subprocess's exceptions into `LabError`, so the rest of the lab speaks only
in namespaces, links and addresses. pyroute2 is imported here and nowhere else, and only when the lab runs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from probe.errors import LabError

NETNS_DIR = Path("/run/netns")
IFA_F_NODAD = 0x02  # skip IPv6 duplicate address detection: addresses are usable at once, and the lab is ours


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    from pyroute2 import netns

    try:
        netns.create(name)
    except Exception as exc:  # pyroute2 raises OSError/NetlinkError variants; all mean "could not create"
        raise LabError(f"cannot create network namespace {name}: {exc}") from exc


def remove_netns(name: str) -> None:
    from pyroute2 import netns

    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise LabError(f"cannot remove network namespace {name}: {exc}") from exc


@contextmanager
def netns_links(name: str) -> Iterator[Any]:
    """A pyroute2 NetNS handle on namespace `name`, errors converted to LabError."""
    from pyroute2 import NetNS

    try:
        ns = NetNS(name)
    except Exception as exc:
        raise LabError(f"cannot open network namespace {name}: {exc}") from exc
    try:
        yield ns
    except LabError:
        raise
    except Exception as exc:
        raise LabError(f"netlink in {name}: {exc}") from exc
    finally:
        ns.close()


def _index(ns: Any, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"no interface {ifname}")
    return int(found[0])


def link_exists(netns: str, ifname: str) -> bool:
    with netns_links(netns) as ns:
        return bool(ns.link_lookup(ifname=ifname))


def add_bridge(netns: str, ifname: str) -> None:
    with netns_links(netns) as ns:
        ns.link("add", ifname=ifname, kind="bridge")
        ns.link("set", index=_index(ns, ifname), state="up")


def add_veth_to(hub_netns: str, bridge: str, hub_ifname: str, peer_netns: str, peer_ifname: str) -> None:
    """A veth pair made inside the hub namespace with its far end moved into `peer_netns`: nothing is ever created
    in the root namespace, so the lab cannot collide with the machine's own interfaces."""
    with netns_links(hub_netns) as ns:
        ns.link("add", ifname=hub_ifname, kind="veth", peer={"ifname": peer_ifname, "net_ns_fd": peer_netns})
        idx = _index(ns, hub_ifname)
        ns.link("set", index=idx, master=_index(ns, bridge))
        ns.link("set", index=idx, state="up")


def configure_link(
    netns: str,
    ifname: str,
    addresses: Sequence[tuple[IPv4Address | IPv6Address, int]],
    *,
    up: bool = True,
    secondary: Sequence[tuple[IPv4Address | IPv6Address, int]] = (),
) -> None:
    """Add `addresses` to a link and bring it up. `secondary` addresses are never picked as a source: IPv6 ones get
    a preferred lifetime of 0 (deprecated, RFC 4862 5.5.4) and IPv4 ones, added after a primary in the same subnet,
    are the kernel's secondaries. Masquerade then always uses the primary, as on a real relay."""
    with netns_links(netns) as ns:
        idx = _index(ns, ifname)
        for address, prefixlen in addresses:
            flags = IFA_F_NODAD if address.version == 6 else 0
            ns.addr("add", index=idx, address=str(address), prefixlen=prefixlen, flags=flags)
        for address, prefixlen in secondary:
            extra: dict[str, int] = {"preferred": 0, "valid": 0xFFFFFFFF} if address.version == 6 else {}
            flags = IFA_F_NODAD if address.version == 6 else 0
            ns.addr("add", index=idx, address=str(address), prefixlen=prefixlen, flags=flags, **extra)
        if up:
            ns.link("set", index=idx, state="up")
        lo = _index(ns, "lo")
        ns.link("set", index=lo, state="up")


def set_sysctls(netns: str, values: Mapping[str, str]) -> None:
    args = [f"{key}={value}" for key, value in values.items()]
    run_in(netns, ["sysctl", "-q", "-w", *args])


def run_in(
    netns: str, argv: Sequence[str], *, input_text: str | None = None, check: bool = True, timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    """Run a command inside `netns` (via `ip netns exec`) and return its output; failures become LabError."""
    cmd = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(cmd, input=input_text, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)} in {netns}: {exc}") from exc
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise LabError(f"{' '.join(argv)} in {netns} failed ({done.returncode}): {detail}")
    return done


def spawn_in(netns: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a long-running process in `netns`, detached in its own session, output to `log`; return its PID.

    posix_spawn rather than Popen: the process must outlive this one (`probe lab up` exits), and a Popen object
    dropped while its child runs warns. `ip netns exec` execs the command, so the PID is the command's own.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        cmd = ["ip", "netns", "exec", netns, *argv]
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, fd, 1)]
        actions.append((os.POSIX_SPAWN_DUP2, fd, 2))
        full_env = {**os.environ, **(env or {})}
        return os.posix_spawnp(cmd[0], cmd, full_env, file_actions=actions, setsid=True)
    except OSError as exc:
        raise LabError(f"cannot start {argv[0]} in {netns}: {exc}") from exc
    finally:
        os.close(fd)


def netns_pids(netns: str) -> list[int]:
    """PIDs of processes living in namespace `netns` (ours by construction: the namespace is the lab's)."""
    try:
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(tok) for tok in out.stdout.split() if tok.isdigit()]
