"""What the store shows: the fleet at a glance, one relay in detail, the agents. Pure functions over the store.

The models are the JSON API (`/api/v1/servers`, `/api/v1/servers/{name}`, `/api/v1/agents`) and what the status
page renders: field names are a contract once published (add, never rename). Times are UTC datetimes; text that came
from agents or inventories (labels, details, evidence names) is data, to be escaped by whatever renders it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from probe.aggregator.health import HEALTH_STATES, AgentState, Exclusion, HealthState, Vote
from probe.aggregator.records import AgentInfo, Failure, HealthChange, PathRecord, ServerRecord, stage_result
from probe.aggregator.store import ResultStore
from probe.inventory import Relay
from probe.results import Reason, StageName, StageResult

SHARED_LABELS_SHOWN = 20
# Failing servers first, the worst first: the order of the status page and of `failing`.
_STATE_ORDER = {HealthState.down: 0, HealthState.degraded: 1, HealthState.unknown: 2, HealthState.up: 3}


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FailureView(_View):
    at: datetime  # when the failing result was taken
    agent: str
    reason: Reason | None
    stage: StageName | None
    port: int
    family: str
    detail: str | None
    evidence: str | None  # the pcap's file name on the agent's host


class HealthChangeView(_View):
    at: datetime
    state: HealthState
    previous: HealthState
    reason: Reason | None


class PathView(_View):
    port: int  # the port probed
    port_slot: str  # the inventory's name for it: the main port, or the range a rotated port was taken from
    family: Literal["ipv4", "ipv6"]
    entry: str
    ok: bool
    reason: Reason | None
    stages: tuple[StageResult, ...]
    identity: int
    evidence: str | None
    round: int
    taken_at: datetime
    fresh: bool
    control_ok: bool


class ServerAgentView(_View):
    """One agent's view of one relay: its newest result, whether it voted, and its newest path per port slot."""

    agent: str
    vote: Vote | None
    excluded: Exclusion | None  # why it did not vote
    result_id: str
    round: int
    taken_at: datetime
    age_seconds: float
    fresh: bool
    control_ok: bool
    ok: bool
    reason: Reason | None
    duration_seconds: float
    paths: tuple[PathView, ...]


class ServerSummary(_View):
    name: str
    state: HealthState
    since: datetime  # when it entered this state (or when the aggregator started, if it never changed)
    reason: Reason | None  # of its worst fresh failing path among the agents that voted
    agents_voting: int
    agents_failing: int  # voted that every path of their newest result failed
    quorum: int  # `failing` votes that make it down
    location: str | None
    country: str | None
    city: str | None
    labels: dict[str, str]
    last_failure: FailureView | None


class ServerDetail(ServerSummary):
    agents: tuple[ServerAgentView, ...]
    history: tuple[HealthChangeView, ...]  # oldest first


class SharedLabel(_View):
    """A label value among the failing relays, against how common it is in the fleet."""

    name: str
    value: str
    failing: int
    fleet: int
    share_of_failing: float


class CityGroup(_View):
    code: str | None
    name: str
    states: dict[HealthState, int]
    servers: tuple[ServerSummary, ...]


class CountryGroup(_View):
    code: str | None
    name: str
    states: dict[HealthState, int]
    cities: tuple[CityGroup, ...]


class AgentView(_View):
    name: str
    state: AgentState
    since: datetime
    online: bool | None  # None: no status received yet
    control_ok: bool
    control_detail: str | None
    # The agent's link to its broker at its last control check, as its status says (None: not said); not part of
    # control_ok (probe/messages.py ControlCheck says why).
    broker_ok: bool | None = None
    version: str | None
    interval_seconds: float | None
    round: int | None
    round_seconds: float | None
    inventory_size: int | None
    last_result_at: datetime | None  # when its newest result was taken
    status_at: datetime | None
    results: int  # results accepted from it since the aggregator started
    relays_voting: int  # relays on which its results count now
    # Seconds its clock is ahead of the aggregator's (negative: behind), from its newest status that arrived live
    # (None: none has yet); `clock_off` when two in a row were off by more than the store's CLOCK_TOLERANCE.
    clock_offset_seconds: float | None = None
    clock_off: bool = False


class FleetView(_View):
    generated_at: datetime
    servers: int
    states: dict[HealthState, int]
    failing: tuple[ServerSummary, ...]  # down, then degraded; longest-failing first
    shared_labels: tuple[SharedLabel, ...]
    countries: tuple[CountryGroup, ...]
    agents: tuple[AgentView, ...]
    broker_connected: bool | None = None  # the aggregator's own connection to the broker; None: no broker (serve)


def _time(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


def place(relay: Relay) -> tuple[tuple[str | None, str], tuple[str | None, str]]:
    """((country code, name), (city code, name)) from the location code ("se-got") and the country/city labels."""
    country_code = city_code = None
    if relay.location:
        country_code, _, rest = relay.location.partition("-")
        city_code = rest or None
    country = relay.labels.get("country") or (country_code.upper() if country_code else "unknown")
    city = relay.labels.get("city") or city_code or "unknown"
    return (country_code, country), (city_code, city)


def _failure(failure: Failure | None) -> FailureView | None:
    if failure is None:
        return None
    return FailureView(
        at=_time(failure.at),
        agent=failure.agent,
        reason=failure.reason,
        stage=failure.stage,
        port=failure.port,
        family=failure.family,
        detail=failure.detail,
        evidence=failure.evidence,
    )


def summary(server: ServerRecord) -> ServerSummary:
    relay = server.relay
    (country_code, _), (city_code, _) = place(relay)
    verdict = server.verdict
    return ServerSummary(
        name=relay.name,
        state=server.state,
        since=_time(server.since),
        reason=server.reason,
        agents_voting=verdict.eligible if verdict else 0,
        agents_failing=verdict.failing if verdict else 0,
        quorum=verdict.needed if verdict else 0,
        location=relay.location,
        country=country_code,
        city=city_code,
        labels=dict(relay.labels),
        last_failure=_failure(server.last_failure),
    )


def _path(path: PathRecord, fresh: bool) -> PathView:
    return PathView(
        port=path.port,
        port_slot=path.slot,
        family=path.family,  # type: ignore[arg-type]  # validated as the Literal when the result came in
        entry=path.entry,
        ok=path.ok,
        reason=path.reason,
        stages=tuple(stage_result(stage) for stage in path.stages),
        identity=path.identity,
        evidence=path.evidence,
        round=path.round,
        taken_at=_time(path.taken_at),
        fresh=fresh,
        control_ok=path.control_ok,
    )


def server_detail(store: ResultStore, name: str) -> ServerDetail | None:
    """One relay with every agent's view of it, or None when the inventory has no such relay."""
    store.refresh()
    server = store.servers.get(name)
    if server is None:
        return None
    now = store.now()
    judged = {judgement.agent: judgement for judgement in server.judgements}
    agents = []
    for agent, record in sorted(server.agents.items()):
        judgement = judged.get(agent)
        paths = sorted(record.paths.values(), key=lambda p: (p.family, p.port))
        newest = record.newest
        agents.append(
            ServerAgentView(
                agent=agent,
                vote=judgement.vote if judgement else None,
                excluded=judgement.exclusion if judgement else None,
                result_id=newest.result_id,
                round=newest.round,
                taken_at=_time(newest.taken_at),
                age_seconds=max(0.0, now - newest.taken_at),
                fresh=store.is_fresh(agent, newest.taken_at, now),
                control_ok=newest.control_ok,
                ok=newest.ok,
                reason=newest.reason,
                duration_seconds=newest.duration_seconds,
                paths=tuple(_path(p, store.is_fresh(agent, p.fresh_at, now)) for p in paths),
            )
        )
    history = tuple(_change(change) for change in server.history)
    return ServerDetail(**dict(summary(server)), agents=tuple(agents), history=history)


def _change(change: HealthChange) -> HealthChangeView:
    return HealthChangeView(at=_time(change.at), state=change.state, previous=change.previous, reason=change.reason)


def shared_labels(failing: Iterable[Relay], fleet: Iterable[Relay]) -> tuple[SharedLabel, ...]:
    """Label values the failing relays share, most common first, against their count in the fleet. Values every
    relay carries (the provider of a one-provider fleet) tell nothing apart and are left out. The 2020-04-27
    post-mortem lost an hour finding that every failing relay ran one kernel version."""
    relays = list(fleet)
    counts = Counter((key, value) for relay in relays for key, value in relay.labels.items())
    failing = list(failing)
    if not failing:
        return ()
    among = Counter(
        (key, value) for relay in failing for key, value in relay.labels.items() if counts[(key, value)] < len(relays)
    )
    ranked = sorted(among.items(), key=lambda item: (-item[1], counts[item[0]], item[0]))
    return tuple(
        SharedLabel(name=key, value=value, failing=n, fleet=counts[(key, value)], share_of_failing=n / len(failing))
        for (key, value), n in ranked[:SHARED_LABELS_SHOWN]
    )


def _states(summaries: Iterable[ServerSummary]) -> dict[HealthState, int]:
    counted = Counter(s.state for s in summaries)
    return {state: counted[state] for state in HEALTH_STATES}


def _group(summaries: list[ServerSummary], relays: dict[str, Relay]) -> tuple[CountryGroup, ...]:
    countries: dict[str, tuple[str | None, str, dict[str, tuple[str | None, str, list[ServerSummary]]]]] = {}
    for item in summaries:
        (country_code, country), (city_code, city) = place(relays[item.name])
        _, _, cities = countries.setdefault(country_code or country, (country_code, country, {}))
        cities.setdefault(city_code or city, (city_code, city, []))[2].append(item)
    groups = []
    for country_code, country, cities in sorted(countries.values(), key=lambda c: c[1].lower()):
        city_groups = tuple(
            CityGroup(code=code, name=name, states=_states(members), servers=tuple(members))
            for code, name, members in sorted(cities.values(), key=lambda c: c[1].lower())
        )
        every = [s for group in city_groups for s in group.servers]
        groups.append(CountryGroup(code=country_code, name=country, states=_states(every), cities=city_groups))
    return tuple(groups)


def agent_views(store: ResultStore, *, refresh: bool = True) -> tuple[AgentView, ...]:
    if refresh:
        store.refresh()
    voting = Counter(j.agent for server in store.servers.values() for j in server.judgements if j.vote is not None)
    return tuple(_agent(info, voting[info.name]) for _, info in sorted(store.agents.items()))


def _agent(info: AgentInfo, relays_voting: int) -> AgentView:
    status = info.status
    control = status.control if status else None
    return AgentView(
        name=info.name,
        state=info.state or AgentState.silent,
        since=_time(info.since),
        online=status.online if status else None,
        control_ok=info.newest_control_ok and info.status_control_ok,
        control_detail=control.detail if control and not control.ok else None,
        broker_ok=control.broker_ok if control else None,
        version=status.version if status else None,
        interval_seconds=status.interval_seconds if status else None,
        round=status.round if status else None,
        round_seconds=status.round_seconds if status else None,
        inventory_size=status.inventory_size if status else None,
        last_result_at=_time(info.newest_taken_at) if info.newest_taken_at is not None else None,
        status_at=_time(info.status_at) if info.status_at is not None else None,
        results=info.results,
        relays_voting=relays_voting,
        clock_offset_seconds=None if info.clock_offset is None else round(info.clock_offset, 3),
        clock_off=info.clock_off,
    )


def fleet_view(store: ResultStore) -> FleetView:
    """Every relay by place, the failing ones at once with their reasons and the labels they share, the agents."""
    store.refresh()
    servers = sorted(store.servers.values(), key=lambda s: s.relay.name)
    summaries = [summary(server) for server in servers]
    failing = sorted(
        (s for s in summaries if s.state in (HealthState.down, HealthState.degraded)),
        key=lambda s: (_STATE_ORDER[s.state], s.since, s.name),
    )
    relays = {server.relay.name: server.relay for server in servers}
    return FleetView(
        generated_at=_time(store.now()),
        servers=len(summaries),
        states=_states(summaries),
        failing=tuple(failing),
        shared_labels=shared_labels((relays[s.name] for s in failing), relays.values()),
        countries=_group(summaries, relays),
        agents=agent_views(store, refresh=False),
        broker_connected=store.broker_connected,
    )
