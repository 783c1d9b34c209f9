"""`probe lab status`: what the lab is made of and whether its processes are healthy, as plain data the CLI renders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probe.lab import netns
from probe.lab.processes import is_running
from probe.lab.state import load_state


@dataclass(frozen=True, slots=True)
class RelayStatus:
    name: str
    netns: str
    ipv4: str
    ipv6: str
    faults: tuple[str, ...]
    wg_pid: int | None
    wg_running: bool
    delay_running: bool | None  # None when no delay fault is set
    namespace_present: bool

    @property
    def healthy(self) -> bool:
        """The lab's own processes match the relay's faults (a `down` relay is healthy with no process)."""
        expects_wg = not any(fault == "down" for fault in self.faults)
        return self.namespace_present and self.wg_running == expects_wg and self.delay_running is not False


@dataclass(frozen=True, slots=True)
class LabStatus:
    lab_dir: Path
    prefix: str
    reflector_pid: int | None
    reflector_running: bool
    agents: tuple[str, ...]
    relays: tuple[RelayStatus, ...]

    @property
    def healthy(self) -> bool:
        return self.reflector_running and all(relay.healthy for relay in self.relays)


def lab_status(lab_dir: Path) -> LabStatus:
    state = load_state(lab_dir)
    plan = state.plan()
    present = set(netns.list_netns())
    relays = []
    for relay in plan.relays:
        rs = state.relays.get(relay.name)
        faults = tuple(rs.faults) if rs else ()
        wg_pid = rs.wg_pid if rs else None
        delay_pid = rs.delay_pid if rs else None
        relays.append(
            RelayStatus(
                name=relay.name,
                netns=relay.netns,
                ipv4=str(relay.ipv4),
                ipv6=str(relay.ipv6),
                faults=faults,
                wg_pid=wg_pid,
                wg_running=wg_pid is not None and is_running(wg_pid, "wireguard-go"),
                delay_running=None if delay_pid is None else is_running(delay_pid, "probe.lab.nfqueue"),
                namespace_present=relay.netns in present,
            )
        )
    return LabStatus(
        lab_dir=lab_dir,
        prefix=state.prefix,
        reflector_pid=state.reflector_pid,
        reflector_running=state.reflector_pid is not None and is_running(state.reflector_pid, "reflector"),
        agents=tuple(agent.netns for agent in plan.agents),
        relays=tuple(relays),
    )
