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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from probe.aggregator.health import HEALTH_STATES, AgentState, HealthState
from probe.aggregator.intake import Outcome
from probe.aggregator.records import JUDGED, NAME, OK, SECONDS, ServerRecord, Stage
from probe.aggregator.store import ResultStore
from probe.results import STAGE_ORDER

STAGE_NAMES = tuple(stage.value for stage in STAGE_ORDER)


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


Labels = tuple[str, ...]
Samples = dict[str, list[tuple[Labels, float]]]  # metric name -> (label values in spec order, value)


def collect_samples(store: ResultStore) -> Samples:
    """Every sample of every aggregator metric, computed now: the one place values are decided, for both the
    registry's collector and the direct renderer."""
    store.refresh()
    now = store.now()
    out: Samples = {spec.name: [] for spec in ALL_METRICS}
    states = dict.fromkeys(HEALTH_STATES, 0)
    server_up, server_health = out[SERVER_UP.name], out[SERVER_HEALTH.name]
    for name, server in store.servers.items():
        states[server.state] += 1
        if server.state is not HealthState.unknown:
            server_up.append(((name,), 0.0 if server.state is HealthState.down else 1.0))
        for state in HEALTH_STATES:
            server_health.append(((name, state.value), 1.0 if state is server.state else 0.0))
        _paths(store, out, name, server, now)
    out[SERVERS.name] = [((state.value,), float(count)) for state, count in states.items()]
    _agents(store, out)
    out[MESSAGES.name] = [((outcome.value,), float(store.messages[outcome])) for outcome in Outcome]
    sent, received = out[PACKETS_SENT.name], out[PACKETS_RECEIVED.name]
    for (server_name, agent), counts in store.packets.items():
        for stage, stage_sent, stage_received in counts.per_stage():
            sent.append(((server_name, agent, stage.value), float(stage_sent)))
            received.append(((server_name, agent, stage.value), float(stage_received)))
    return out


def _paths(store: ResultStore, out: Samples, name: str, server: ServerRecord, now: float) -> None:
    success, stage_success, duration = out[PROBE_SUCCESS.name], out[STAGE_SUCCESS.name], out[STAGE_DURATION.name]
    for agent, record in server.agents.items():
        out[RESULT_AGE.name].append(((name, agent), max(0.0, now - record.newest.taken_at)))
        limit = store.stale_after(agent)
        by_stage: dict[str, list[Stage]] = {}
        for path in record.paths.values():
            if not path.control_ok or now - path.taken_at > limit:
                continue
            success.append(((name, agent, path.slot, path.family), 1.0 if path.ok else 0.0))
            for stage in path.stages:
                if stage[JUDGED]:
                    by_stage.setdefault(stage[NAME], []).append(stage)
        for stage_name in STAGE_NAMES:
            stages = by_stage.get(stage_name)
            if not stages:
                continue
            passed = [s[SECONDS] for s in stages if s[OK]]
            labels = (name, agent, stage_name)
            stage_success.append((labels, 1.0 if len(passed) == len(stages) else 0.0))
            duration.append((labels, statistics.median(passed or [s[SECONDS] for s in stages])))


def _agents(store: ResultStore, out: Samples) -> None:
    counts = dict.fromkeys(AgentState, 0)
    for name, info in store.agents.items():
        state = info.state or AgentState.silent
        counts[state] += 1
        up = state in (AgentState.ok, AgentState.control_failed)
        out[AGENT_UP.name].append(((name,), 1.0 if up else 0.0))
        control_ok = info.newest_control_ok and info.status_control_ok
        out[AGENT_CONTROL_OK.name].append(((name,), 1.0 if control_ok else 0.0))
    out[AGENTS.name] = [((state.value,), float(count)) for state, count in counts.items()]


class StoreCollector(Collector):
    """Every aggregator metric from the store, built when Prometheus scrapes, for an explicit registry."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        # Names without samples: lets the registry check for clashes without computing a scrape.
        for spec in ALL_METRICS:
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        samples = collect_samples(self.store)
        for spec in ALL_METRICS:
            family = spec.family()
            for labels, value in samples[spec.name]:
                family.add_metric(list(labels), value)
            yield family


def make_registry(store: ResultStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format (0.0.4) of a registry, by prometheus_client."""
    return generate_latest(registry)


# prometheus_client's own number format (Go's), so both paths print the same; typed here, untyped there.
_float_text: Callable[[float], str] = floatToGoString
_COMMON_VALUES = {value: _float_text(value) for value in (0.0, 1.0)}


def render(store: ResultStore) -> bytes:
    """The same text exposition as `exposition(make_registry(store))`, written directly: prometheus_client spends
    ~10 us per sample validating and escaping, which at 1,000 relays x 3 agents (~100,000 samples) is a second.

    Label values are not escaped here because none can need it: relay names are held to a hostname alphabet by the
    inventory model, agent names to the agent-name alphabet at intake, port slots are digits and '-', and the rest
    are closed sets (the test comparing both paths would catch a difference).
    """
    samples = collect_samples(store)
    out: list[str] = []
    for spec in ALL_METRICS:
        # generate_latest sorts label names; str.format's indices put the values in that order without a per-sample
        # shuffle. Braces in the sample line are doubled for format().
        order = sorted(range(len(spec.labels)), key=lambda i: spec.labels[i])
        labels = ",".join(f'{spec.labels[i]}="{{{i}}}"' for i in order)
        template = f"{spec.name}{{{{{labels}}}}} {{{len(spec.labels)}}}\n"
        help_text = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {spec.name} {help_text}\n# TYPE {spec.name} {spec.kind}\n")
        line = template.format
        common = _COMMON_VALUES.get
        for values, value in samples[spec.name]:
            out.append(line(*values, common(value) or _float_text(value)))
    return "".join(out).encode()
