"""What the store keeps: plain records, owned and mutated by `ResultStore` only, read by the views and metrics.

Times are seconds since the epoch from the store's clock (results' own timestamps converted by `epoch`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from probe.aggregator.health import AgentState, Exclusion, HealthState, Verdict, Vote
from probe.inventory import Relay
from probe.messages import AgentStatus, ResultMessage
from probe.results import PathResult, Reason, StageName


def epoch(moment: datetime) -> float:
    # A timestamp without a zone is taken as UTC (agents write "Z"), never as the aggregator's local time.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def port_slot(relay: Relay, port: int) -> str:
    """The inventory's name for the port a path was probed on: its main port, or the range it lies in."""
    if port != relay.main_port:
        for low, high in relay.port_ranges:
            if low <= port <= high and low != high:
                return f"{low}-{high}"
    return str(port)


@dataclass(frozen=True, slots=True)
class HealthChange:
    server: str
    at: float
    state: HealthState
    previous: HealthState
    reason: Reason | None


@dataclass(frozen=True, slots=True)
class AgentChange:
    agent: str
    at: float
    state: AgentState
    previous: AgentState | None


Change = HealthChange | AgentChange


@dataclass(frozen=True, slots=True)
class Failure:
    """The last failure seen on a relay by an agent whose control check held."""

    at: float  # when the result was taken
    agent: str
    reason: Reason | None
    stage: StageName | None
    port: int
    family: str
    detail: str | None
    evidence: str | None


@dataclass(slots=True)
class PathRecord:
    slot: str
    path: PathResult
    taken_at: float
    round: int
    control_ok: bool


@dataclass(slots=True)
class AgentRecord:
    """One agent's view of one relay."""

    newest: ResultMessage
    taken_at: float
    received_at: float
    paths: dict[tuple[str, str], PathRecord] = field(default_factory=dict)  # (slot, family) -> newest path


@dataclass(frozen=True, slots=True)
class AgentJudgement:
    agent: str
    vote: Vote | None  # None when the agent did not vote
    exclusion: Exclusion | None


@dataclass(slots=True)
class ServerRecord:
    relay: Relay
    since: float
    history: deque[HealthChange]
    state: HealthState = HealthState.unknown
    reason: Reason | None = None
    verdict: Verdict | None = None
    judgements: tuple[AgentJudgement, ...] = ()
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    last_failure: Failure | None = None


@dataclass(slots=True)
class AgentInfo:
    name: str
    since: float
    state: AgentState | None = None
    status: AgentStatus | None = None
    status_at: float | None = None  # the status's updated_at, else when it arrived
    newest_taken_at: float | None = None
    newest_control_ok: bool = True  # of its newest result, whatever the relay
    results: int = 0  # results accepted from it

    @property
    def status_control_ok(self) -> bool:
        control = self.status.control if self.status else None
        return control is None or control.ok


@dataclass(slots=True)
class PacketCount:
    sent: int = 0
    received: int = 0
