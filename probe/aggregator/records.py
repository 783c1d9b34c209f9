"""What the store keeps: plain records, owned and mutated by `ResultStore` only, read by the views and metrics.

Times are seconds since the epoch from the store's clock (results' own timestamps converted by `epoch`).

Results are read into the structs of probe/aggregator/wire.py (checked against the contract's pydantic models) and
kept as these records, which hold each path's stage structs as they were read: a validated 12-path result is ~83 KB
of pydantic model objects but ~10 KB as these, and the store holds one per relay and agent (plus older paths per port
slot), so at 1,000 relays x 3 agents the difference is ~250 MB against ~30 MB.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple

import msgspec

from probe.aggregator.health import AgentState, Exclusion, HealthState, Verdict, Vote
from probe.aggregator.wire import WirePath, WireResult, WireStage
from probe.inventory import Relay
from probe.messages import AgentStatus
from probe.results import STAGE_ORDER, Reason, StageName, StageResult

# What a UTC datetime can hold: the views turn every kept time back into one. "0001-01-01T00:00:00+14:00" is valid
# ISO 8601 a few hours before the first, and kept as it came it made every fleet view fail.
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC).timestamp()
_LATEST: Final = datetime.max.replace(tzinfo=UTC).timestamp()


def epoch(moment: datetime) -> float:
    # A timestamp without a zone is taken as UTC (agents write "Z"), never as the aggregator's local time.
    seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return min(max(seconds, _EARLIEST), _LATEST)


@dataclass(frozen=True, slots=True)
class PortSlots:
    """A relay's port slots: its main port, or the range a rotated port lies in ("4000-33433")."""

    main_port: int
    ranges: tuple[tuple[int, int, str], ...]  # (low, high, name), single-port ranges left out

    @classmethod
    def of(cls, relay: Relay) -> PortSlots:
        ranges = tuple((low, high, f"{low}-{high}") for low, high in relay.port_ranges if low != high)
        return cls(relay.main_port, ranges)

    def slot(self, port: int) -> str:
        if port != self.main_port:
            for low, high, name in self.ranges:
                if low <= port <= high:
                    return name
        return str(port)


def port_slot(relay: Relay, port: int) -> str:
    """The inventory's name for the port a path was probed on: its main port, or the range it lies in."""
    return PortSlots.of(relay).slot(port)


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


@dataclass(frozen=True, slots=True)
class ClockChange:
    """An agent's clock found off (or back within CLOCK_TOLERANCE) by its statuses' times against their arrival."""

    agent: str
    at: float
    offset: float  # seconds the agent's clock is ahead of ours (negative: behind), by its newest live status
    off: bool


Change = HealthChange | AgentChange | ClockChange


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


STAGE_RANK: dict[str, int] = {stage.value: rank for rank, stage in enumerate(STAGE_ORDER)}

# A stage as the store keeps it: the struct the result was read into (probe/aggregator/wire.py), its name and reason
# as their string values. The structs are not tracked by the cyclic garbage collector (gc=False: they hold only
# strings, numbers and None): a 1,000-relay, 3-agent store holds ~180,000 stages, and as tracked objects (named
# tuples, dataclasses, tuples holding enum members) the collector's passes over them took ~15% of ingest time.
Stage = WireStage


def stage_result(stage: Stage) -> StageResult:
    return StageResult.model_validate(msgspec.structs.asdict(stage))


_new_tuple = tuple.__new__


class PathRecord(NamedTuple):
    """One path of one result, compact, with where and when it was taken."""

    slot: str
    port: int
    family: str
    entry: str
    ok: bool
    reason: Reason | None
    identity: int
    evidence: str | None
    stages: tuple[Stage, ...]
    taken_at: float
    round: int
    control_ok: bool
    # What staleness is counted from: taken_at for a main-port path; for a rotated one (an extended range, visited
    # one round in `rotation_rounds`) later by the rounds it waits between visits, so it stays one series and one
    # vote until its next visit is overdue, like a main-port path, rather than dropping out for part of every cycle.
    fresh_at: float

    @classmethod
    def of(
        cls, path: WirePath, slot: str, taken_at: float, round: int, control_ok: bool, fresh_at: float
    ) -> PathRecord:
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function, a frame more per path.
        return _new_tuple(
            cls,
            (
                slot,
                path.port,
                path.family,
                path.entry,
                path.ok,
                path.reason,
                path.identity,
                path.evidence,
                path.stages,
                taken_at,
                round,
                control_ok,
                fresh_at,
            ),
        )

    @property
    def failed_stage(self) -> Stage | None:
        return next((stage for stage in self.stages if not stage.ok), None)


def worst_reason(paths: Iterable[PathRecord]) -> Reason | None:
    """The reason of the path that failed at the earliest stage, as `probe.results.worst_reason` for results."""
    worst: tuple[int, str] | None = None
    for path in paths:
        failed = path.failed_stage
        if failed is not None and failed.reason is not None:
            rank = STAGE_RANK[failed.name]
            if worst is None or rank < worst[0]:
                worst = (rank, failed.reason)
    return None if worst is None else Reason(worst[1])


class ResultSummary(NamedTuple):
    """The newest result of one agent on one relay: its own fields and its paths (also held per slot)."""

    result_id: str
    round: int
    taken_at: float
    received_at: float
    ok: bool
    reason: Reason | None
    control_ok: bool
    duration_seconds: float
    paths: tuple[PathRecord, ...]

    @classmethod
    def of(cls, message: WireResult, paths: tuple[PathRecord, ...], taken_at: float, now: float) -> ResultSummary:
        return cls(
            message.result_id,
            message.round,
            taken_at,
            now,
            message.ok,
            message.reason,
            message.control_ok,
            message.duration_seconds,
            paths,
        )


@dataclass(slots=True)
class AgentRecord:
    """One agent's view of one relay."""

    newest: ResultSummary
    paths: dict[tuple[str, str], PathRecord] = field(default_factory=dict)  # (slot, family) -> newest path


@dataclass(frozen=True, slots=True)
class AgentJudgement:
    agent: str
    vote: Vote | None  # None when the agent did not vote
    exclusion: Exclusion | None


@dataclass(slots=True)
class ServerRecord:
    relay: Relay
    slots: PortSlots
    since: float
    history: deque[HealthChange]
    state: HealthState = HealthState.unknown
    reason: Reason | None = None
    verdict: Verdict | None = None
    judgements: tuple[AgentJudgement, ...] = ()
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    last_failure: Failure | None = None
    due: float = -math.inf  # judge again once the clock passes this (-inf: at the next refresh)


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
    standing: tuple[bool, bool, float] | None = None  # as of the last refresh (see ResultStore._standing)
    # An offline status not in effect yet, because the broker may have published it at its own shutdown (see
    # probe.aggregator.store.WILL_GRACE): the status, its status_at, and when it takes effect unless a newer one comes.
    held: tuple[AgentStatus, float, float] | None = None
    # Seconds its clock is ahead of ours (negative: behind): its newest live status's updated_at against its arrival.
    clock_offset: float | None = None
    clock_off: bool = False  # said off (a ClockChange) and not said back yet

    @property
    def status_control_ok(self) -> bool:
        control = self.status.control if self.status else None
        return control is None or control.ok


@dataclass(slots=True)
class PacketCounts:
    """Packets one agent sent to one relay and answers it got, per stage (indexed in STAGE_ORDER), over every
    result; `judged` says which stages were ever judged (a stage never judged has no series)."""

    sent: list[int] = field(default_factory=lambda: [0] * len(STAGE_ORDER))
    received: list[int] = field(default_factory=lambda: [0] * len(STAGE_ORDER))
    judged: list[bool] = field(default_factory=lambda: [False] * len(STAGE_ORDER))

    def add_paths(self, paths: Iterable[Iterable[Stage]]) -> None:
        """The judged stages of several paths (each path's stages): one call a result rather than one a path."""
        sent, received, judged = self.sent, self.received, self.judged
        for stages in paths:
            for stage in stages:
                if stage.judged:
                    index = STAGE_RANK[stage.name]
                    sent[index] += stage.sent
                    received[index] += stage.received
                    judged[index] = True

    def for_stage(self, stage: StageName) -> tuple[int, int] | None:
        """(sent, received) of one stage, None if it was never judged."""
        index = STAGE_RANK[stage.value]
        return (self.sent[index], self.received[index]) if self.judged[index] else None

    def per_stage(self) -> Iterator[tuple[StageName, int, int]]:
        for index, stage in enumerate(STAGE_ORDER):
            if self.judged[index]:
                yield stage, self.sent[index], self.received[index]
