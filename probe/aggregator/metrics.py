"""The aggregator's Prometheus metrics: every name and help text here, computed from the store at scrape time.

Registered on an explicit CollectorRegistry (never the global one), as tailscale's prober does with its
`Probe.Collect`. Label values come only from closed sets (states, stages, families, outcomes), inventory names
(relays, port slots) and agent names (bounded by the store). Base units (seconds), Prometheus naming.

Only fresh data is exported per path and stage: a series that is absent says "nobody knows", as `wgprobe_server_up`
is absent while a relay is unknown; `wgprobe_result_age_seconds` stays for every (relay, agent) the store holds, so
staleness itself can be alerted on. Importing this module imports prometheus_client: the library never does.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from probe.aggregator.health import HEALTH_STATES, AgentState, HealthState
from probe.aggregator.intake import Outcome
from probe.aggregator.records import ServerRecord
from probe.aggregator.store import ResultStore
from probe.results import STAGE_ORDER, StageName, StageResult


@dataclass(frozen=True)
class MetricSpec:
    name: str
    help: str
    labels: tuple[str, ...]
    kind: Literal["gauge", "counter"] = "gauge"

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


SERVER_UP = MetricSpec(
    "wgprobe_server_up",
    "1 when the relay is up or degraded, 0 when down; absent while its health is unknown.",
    ("server",),
)
SERVER_HEALTH = MetricSpec(
    "wgprobe_server_health",
    "The relay's health by quorum of agents: 1 for its current state (up, degraded, down, unknown), 0 for the others.",
    ("server", "state"),
)
PROBE_SUCCESS = MetricSpec(
    "wgprobe_probe_success",
    "1 when the agent's newest fresh probe of the path (port: main port or inventory port range) passed every stage.",
    ("server", "agent", "port", "family"),
)
STAGE_SUCCESS = MetricSpec(
    "wgprobe_stage_success",
    "1 when the stage passed on every fresh path of the agent where it was judged, else 0; absent when unjudged.",
    ("server", "agent", "stage"),
)
STAGE_DURATION = MetricSpec(
    "wgprobe_stage_duration_seconds",
    "Median round-trip time of the stage over the agent's fresh paths where it passed (where it passed on none: the "
    "time it waited).",
    ("server", "agent", "stage"),
)
RESULT_AGE = MetricSpec(
    "wgprobe_result_age_seconds",
    "Seconds since the agent's newest result for the relay was taken.",
    ("server", "agent"),
)
AGENT_UP = MetricSpec(
    "wgprobe_agent_up", "1 when the agent is online and was heard from within the staleness limit, else 0.", ("agent",)
)
AGENT_CONTROL_OK = MetricSpec(
    "wgprobe_agent_control_ok",
    "1 when the agent's own control check (its reach through no relay) held, else 0: its results are then left out.",
    ("agent",),
)
MESSAGES = MetricSpec(
    "wgprobe_messages_total",
    "Messages received (results and agent statuses) by what became of them: accepted, or why they were dropped.",
    ("result",),
    "counter",
)
PACKETS_SENT = MetricSpec(
    "wgprobe_stage_packets_sent_total",
    "Packets the agents sent in the stage, summed over every result (judged stages, control check held).",
    ("server", "agent", "stage"),
    "counter",
)
PACKETS_RECEIVED = MetricSpec(
    "wgprobe_stage_packets_received_total",
    "Good answers the agents received in the stage, summed over every result (judged stages, control check held).",
    ("server", "agent", "stage"),
    "counter",
)
SERVERS = MetricSpec("wgprobe_servers", "Relays in the inventory by health state.", ("state",))
AGENTS = MetricSpec("wgprobe_agents", "Agents by state (ok, control_failed, offline, silent).", ("state",))

ALL_METRICS: tuple[MetricSpec, ...] = (
    SERVER_UP,
    SERVER_HEALTH,
    PROBE_SUCCESS,
    STAGE_SUCCESS,
    STAGE_DURATION,
    RESULT_AGE,
    AGENT_UP,
    AGENT_CONTROL_OK,
    MESSAGES,
    PACKETS_SENT,
    PACKETS_RECEIVED,
    SERVERS,
    AGENTS,
)


_Families = dict[str, GaugeMetricFamily | CounterMetricFamily]


class StoreCollector(Collector):
    """Builds every aggregator metric from the store when Prometheus scrapes."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        # Names without samples: lets the registry check for clashes without computing a scrape.
        for spec in ALL_METRICS:
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        store = self.store
        store.refresh()
        now = store.now()
        families = {spec.name: spec.family() for spec in ALL_METRICS}
        states = dict.fromkeys(HEALTH_STATES, 0)
        for name, server in store.servers.items():
            states[server.state] += 1
            if server.state is not HealthState.unknown:
                families[SERVER_UP.name].add_metric([name], 0.0 if server.state is HealthState.down else 1.0)
            for state in HEALTH_STATES:
                families[SERVER_HEALTH.name].add_metric([name, state.value], 1.0 if state is server.state else 0.0)
            self._paths(families, name, server, now)
        for state, servers in states.items():
            families[SERVERS.name].add_metric([state.value], servers)
        self._agents(families)
        for outcome in Outcome:
            families[MESSAGES.name].add_metric([outcome.value], store.messages[outcome])
        for (server_name, agent, stage), count in store.packets.items():
            families[PACKETS_SENT.name].add_metric([server_name, agent, stage.value], count.sent)
            families[PACKETS_RECEIVED.name].add_metric([server_name, agent, stage.value], count.received)
        yield from families.values()

    def _paths(self, families: _Families, name: str, server: ServerRecord, now: float) -> None:
        for agent, record in server.agents.items():
            families[RESULT_AGE.name].add_metric([name, agent], max(0.0, now - record.taken_at))
            limit = self.store.stale_after(agent)
            fresh = [p for p in record.paths.values() if p.control_ok and now - p.taken_at <= limit]
            by_stage: dict[StageName, list[StageResult]] = {}
            for held in fresh:
                families[PROBE_SUCCESS.name].add_metric(
                    [name, agent, held.slot, held.path.family], 1.0 if held.path.ok else 0.0
                )
                for stage in held.path.stages:
                    if stage.judged:
                        by_stage.setdefault(stage.name, []).append(stage)
            for stage_name in STAGE_ORDER:
                stages = by_stage.get(stage_name)
                if not stages:
                    continue
                passed = [s.seconds for s in stages if s.ok]
                labels = [name, agent, stage_name.value]
                families[STAGE_SUCCESS.name].add_metric(labels, 1.0 if len(passed) == len(stages) else 0.0)
                seconds = statistics.median(passed or [s.seconds for s in stages])
                families[STAGE_DURATION.name].add_metric(labels, seconds)

    def _agents(self, families: _Families) -> None:
        counts = dict.fromkeys(AgentState, 0)
        for name, info in self.store.agents.items():
            state = info.state or AgentState.silent
            counts[state] += 1
            up = state in (AgentState.ok, AgentState.control_failed)
            families[AGENT_UP.name].add_metric([name], 1.0 if up else 0.0)
            control_ok = info.newest_control_ok and info.status_control_ok
            families[AGENT_CONTROL_OK.name].add_metric([name], 1.0 if control_ok else 0.0)
        for state, agents in counts.items():
            families[AGENTS.name].add_metric([state.value], agents)


def make_registry(store: ResultStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format (0.0.4) of a registry, as /metrics serves it."""
    return generate_latest(registry)
