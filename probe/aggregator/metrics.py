"""The aggregator's Prometheus metrics: every name and help text here, computed from the store at scrape time.

Registered on an explicit CollectorRegistry (never the global one), as tailscale's prober does with its
`Probe.Collect`. Label values come only from closed sets (states, stages, families, outcomes), inventory names
(relays, port slots) and agent names (bounded by the store). Base units (seconds), Prometheus naming.

Only fresh data is exported per path and stage: a series that is absent says "nobody knows", as `wgprobe_server_up`
is absent while a relay is unknown; `wgprobe_result_age_seconds` stays for every (relay, agent) the store holds, so
staleness itself can be alerted on. Importing this module imports prometheus_client: the library never does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from probe.aggregator.health import HEALTH_STATES, AgentState, HealthState
from probe.aggregator.intake import Outcome
from probe.aggregator.records import AgentRecord, PacketCounts, PathRecord
from probe.aggregator.store import ResultStore
from probe.results import STAGE_ORDER

STAGE_NAMES = tuple(stage.value for stage in STAGE_ORDER)
log = logging.getLogger("wgprobe.aggregator.metrics")


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
AGENT_CLOCK_OFFSET = MetricSpec(
    "wgprobe_agent_clock_offset_seconds",
    "Seconds the agent's clock is ahead of the aggregator's (negative: behind), from its newest status that arrived "
    "live; absent until one has.",
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
# A failed reload keeps the last good inventory and would otherwise be seen only in the log.
INVENTORY_OK = MetricSpec("wgprobe_inventory_ok", "1 if the last load of the inventory succeeded.", ())
INVENTORY_AGE = MetricSpec(
    "wgprobe_inventory_age_seconds", "Seconds since the inventory in use was loaded (a failed reload keeps it).", ()
)
# A broker outage leaves the aggregator blind: verdicts age into `unknown`, which resolves a `down` alert. This says
# why (absent in `probe serve`, which has no broker).
BROKER_CONNECTED = MetricSpec(
    "wgprobe_aggregator_broker_connected",
    "1 while the aggregator is connected and subscribed to the broker, else 0.",
    (),
)

ALL_METRICS: tuple[MetricSpec, ...] = (
    SERVER_UP,
    SERVER_HEALTH,
    PROBE_SUCCESS,
    STAGE_SUCCESS,
    STAGE_DURATION,
    RESULT_AGE,
    AGENT_UP,
    AGENT_CONTROL_OK,
    AGENT_CLOCK_OFFSET,
    MESSAGES,
    PACKETS_SENT,
    PACKETS_RECEIVED,
    SERVERS,
    AGENTS,
    INVENTORY_OK,
    INVENTORY_AGE,
    BROKER_CONNECTED,
)


Labels = tuple[str, ...]
Samples = dict[str, list[tuple[Labels, float]]]  # metric name -> (label values in spec order, value)
PathSample = tuple[str, str, float]  # (port slot, family, 1.0 or 0.0)
StageSample = tuple[str, float, float]  # (stage, success, duration in seconds)


def _median(values: list[float]) -> float:
    # statistics.median's result (the mean of the middle two for an even count), without its conversions and checks.
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def agent_series(record: AgentRecord, limit: float, now: float) -> tuple[list[PathSample], list[StageSample]]:
    """One agent's path and stage samples for one relay: its fresh paths (control check held), and each stage where
    it was judged on any of them. The one place these values are decided, for the collector and the renderer."""
    paths, stages, _ = _series(record, limit, now)
    return paths, stages


def _series(record: AgentRecord, limit: float, now: float) -> tuple[list[PathSample], list[StageSample], float]:
    """agent_series, and the first moment a line shown leaves: the oldest fresh_at of the paths shown (their staleness
    is counted from it), or the agent's newest result if that is older (it takes them all out); inf if none is."""
    if now - record.newest.taken_at > limit:
        return [], [], math.inf  # the agent went quiet: a rotated path's longer freshness only holds while it reports
    oldest = math.inf
    paths: list[PathSample] = []
    # Per stage, the seconds of the judged stages that passed and of those that failed: one append a stage (this
    # runs for every result kept, ~60 stages each).
    passed: dict[str, list[float]] = {name: [] for name in STAGE_NAMES}
    failed: dict[str, list[float]] = {name: [] for name in STAGE_NAMES}
    for path in record.paths.values():
        fresh_at = path.fresh_at
        if not path.control_ok or now - fresh_at > limit:
            continue
        oldest = min(oldest, fresh_at)
        paths.append((path.slot, path.family, 1.0 if path.ok else 0.0))
        for stage in path.stages:
            if stage.judged:
                (passed if stage.ok else failed)[stage.name].append(stage.seconds)
    stages: list[StageSample] = []
    for stage_name in STAGE_NAMES:
        good, bad = passed[stage_name], failed[stage_name]
        if good or bad:
            # Where it passed nowhere: the time it waited.
            stages.append((stage_name, 0.0 if bad else 1.0, _median(good or bad)))
    return paths, stages, min(oldest, record.newest.taken_at) if paths else math.inf


def collect_samples(store: ResultStore) -> Samples:
    """Every sample of every aggregator metric, computed now, for the registry's collector (the renderer below
    writes the same from the same functions)."""
    store.refresh()
    now = store.now()
    out: Samples = {spec.name: [] for spec in ALL_METRICS}
    states = dict.fromkeys(HEALTH_STATES, 0)
    server_up, server_health = out[SERVER_UP.name], out[SERVER_HEALTH.name]
    success, stage_success, duration = out[PROBE_SUCCESS.name], out[STAGE_SUCCESS.name], out[STAGE_DURATION.name]
    for name, server in store.servers.items():
        states[server.state] += 1
        if server.state is not HealthState.unknown:
            server_up.append(((name,), 0.0 if server.state is HealthState.down else 1.0))
        for state in HEALTH_STATES:
            server_health.append(((name, state.value), 1.0 if state is server.state else 0.0))
        for agent, record in server.agents.items():
            out[RESULT_AGE.name].append(((name, agent), max(0.0, now - record.newest.taken_at)))
            paths, stages = agent_series(record, store.stale_after(agent), now)
            success += [((name, agent, slot, family), value) for slot, family, value in paths]
            for stage, ok, seconds in stages:
                stage_success.append(((name, agent, stage), ok))
                duration.append(((name, agent, stage), seconds))
    out[SERVERS.name] = [((state.value,), float(count)) for state, count in states.items()]
    _agents(store, out)
    _own_state(store, out)
    out[MESSAGES.name] = [((outcome.value,), float(store.messages[outcome])) for outcome in Outcome]
    sent, received = out[PACKETS_SENT.name], out[PACKETS_RECEIVED.name]
    for (server_name, agent), counts in store.packets.items():
        for stage, stage_sent, stage_received in counts.per_stage():
            sent.append(((server_name, agent, stage.value), float(stage_sent)))
            received.append(((server_name, agent, stage.value), float(stage_received)))
    return out


def _agents(store: ResultStore, out: Samples) -> None:
    counts = dict.fromkeys(AgentState, 0)
    for name, info in store.agents.items():
        state = info.state or AgentState.silent
        counts[state] += 1
        up = state in (AgentState.ok, AgentState.control_failed)
        out[AGENT_UP.name].append(((name,), 1.0 if up else 0.0))
        control_ok = info.newest_control_ok and info.status_control_ok
        out[AGENT_CONTROL_OK.name].append(((name,), 1.0 if control_ok else 0.0))
        if info.clock_offset is not None:
            out[AGENT_CLOCK_OFFSET.name].append(((name,), info.clock_offset))
    out[AGENTS.name] = [((state.value,), float(count)) for state, count in counts.items()]


def _own_state(store: ResultStore, out: Samples) -> None:
    """The aggregator's own inputs: its inventory, and its connection to the broker."""
    out[INVENTORY_OK.name] = [((), 1.0 if store.inventory_ok else 0.0)]
    out[INVENTORY_AGE.name] = [((), max(0.0, store.now() - store.inventory_loaded_at))]
    connected = store.broker_connected
    out[BROKER_CONNECTED.name] = [] if connected is None else [((), 1.0 if connected else 0.0)]


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
_ZERO_ONE = ("0.0", "1.0")
_STALE_MARGIN = 0.001  # seconds


def _number(value: float) -> str:
    # floatToGoString is repr() below a million (its exponent form starts past six digits before the point).
    return repr(value) if 0.0 <= value < 1e6 else _float_text(value)


def _count(value: int) -> str:
    return f"{value}.0" if 0 <= value < 1_000_000 else _float_text(float(value))


def _header(spec: MetricSpec) -> bytes:
    help_text = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {spec.name} {help_text}\n# TYPE {spec.name} {spec.kind}\n".encode()


_HEADERS = {spec.name: _header(spec) for spec in ALL_METRICS}


@dataclass(slots=True)
class _ServerBlock:
    state: HealthState
    up: bytes
    health: bytes


class _AgentLabels:
    """The label part of one (relay, agent)'s lines, kept across rebuilds: only the values change."""

    __slots__ = ("age", "agent", "duration", "name", "received", "sent", "stage", "success")

    def __init__(self, name: str, agent: str) -> None:
        self.name, self.agent = name, agent
        self.success: dict[tuple[str, str], str] = {}
        self.stage = {s: f'wgprobe_stage_success{{agent="{agent}",server="{name}",stage="{s}"}} ' for s in STAGE_NAMES}
        self.duration = {
            s: f'wgprobe_stage_duration_seconds{{agent="{agent}",server="{name}",stage="{s}"}} ' for s in STAGE_NAMES
        }
        self.age = f'wgprobe_result_age_seconds{{agent="{agent}",server="{name}"}} '
        counter = [f'{{agent="{agent}",server="{name}",stage="{s}"}} ' for s in STAGE_NAMES]  # in STAGE_NAMES' order
        self.sent = tuple(f"wgprobe_stage_packets_sent_total{labels}" for labels in counter)
        self.received = tuple(f"wgprobe_stage_packets_received_total{labels}" for labels in counter)

    def path(self, slot: str, family: str) -> str:
        prefix = self.success.get((slot, family))
        if prefix is None:
            labels = f'agent="{self.agent}",family="{family}",port="{slot}",server="{self.name}"'
            prefix = self.success[(slot, family)] = f"wgprobe_probe_success{{{labels}}} "
        return prefix


@dataclass(slots=True)
class _AgentBlock:
    """One (relay, agent)'s path and stage lines, valid while its paths are the same records, its staleness limit is
    the same and no path it shows has gone stale."""

    record: AgentRecord
    labels: _AgentLabels
    paths: tuple[PathRecord, ...]
    limit: float
    built_at: float
    oldest: float  # fresh_at of the oldest path shown: the first to go stale
    success: bytes
    stage_success: bytes
    duration: bytes

    def valid(self, paths: tuple[PathRecord, ...], limit: float, now: float) -> bool:
        # Time only takes paths out: one left out as stale stays out while the clock does not go back, and the oldest
        # path shown is the first to leave (by the comparison agent_series makes).
        return limit == self.limit and now >= self.built_at and not now - self.oldest > limit and paths == self.paths


@dataclass(slots=True)
class _CounterBlock:
    sent: list[int]
    received: list[int]
    judged: list[bool]
    sent_lines: bytes
    received_lines: bytes


class MetricsRenderer:
    """The text exposition of a store, as `exposition(make_registry(store))` writes it, from blocks of lines kept
    per relay and per (relay, agent), each rewritten only when what it shows changed.

    prometheus_client spends ~10 us per sample validating and escaping, which at 1,000 relays x 3 agents
    (~100,000 samples) is over a second, and even writing every line directly is ~0.1 s of CPU per scrape. Here a
    (relay, agent) block is rewritten when its paths changed (a new result), one of them went stale, its staleness
    limit changed or its packet counts moved; the rest is joined as it is. What moves with the clock alone (result
    ages, agents, message counts) is written every time: a few thousand lines.

    `update()` does the rewriting without judging anything; `render()` judges (store.refresh), updates and joins.
    A renderer that `follow`s the store (the aggregator's HTTP app's, while it serves) also rewrites a (relay,
    agent)'s blocks the moment the store keeps its result (the store's `on_kept`), ~40 us each, so a scrape right
    after a whole round finds every block written; `update()` on a timer between scrapes (the app's, every second)
    still rewrites what time alone moved (paths gone stale). Without following, a scrape after a round of 3,000
    results writes 3,000 blocks itself (~0.15 s).

    Whether a block is current needs no version counter in the store: the store replaces its path records
    (immutable tuples) when results arrive, so a block keeps the records it was built from and compares them, an
    identity check per path while they are unchanged.

    Label values are not escaped because none can need it: relay names are held to a hostname alphabet by the
    inventory model, agent names to the agent-name alphabet at intake, port slots are digits and '-', and the rest
    are closed sets (the test comparing the renderer with prometheus_client would catch a difference).
    """

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._servers: dict[str, _ServerBlock] = {}
        self._agents: dict[tuple[str, str], _AgentBlock] = {}
        self._counters: dict[tuple[str, str], _CounterBlock] = {}
        self.rebuilt = 0  # (relay, agent) blocks rewritten by the last update: for tests and benchmarks
        self.written_on_arrival = 0  # (relay, agent) blocks rewritten by `kept`, since the start
        # What lets `update` skip its pass over every block while following (see `_nothing_to_do`).
        self._pass_due = True
        self._passed_over: tuple[object, object, dict[str, float]] | None = None  # servers, packets, limits
        self._first_stale = -math.inf  # before this moment no block shown has a path going stale
        self._newest_built = math.inf  # the latest built_at of a block: the clock going back below it moves paths

    def follow(self) -> None:
        """Write each result's lines as the store keeps it (see `kept`), until `unfollow`."""
        if self.kept not in self.store.on_kept:
            self.store.on_kept.append(self.kept)
            self._pass_due = True  # results kept before now were not written on arrival

    def unfollow(self) -> None:
        if self.kept in self.store.on_kept:
            self.store.on_kept.remove(self.kept)

    def kept(self, name: str, agent: str, record: AgentRecord) -> None:
        """The store's `on_kept`: write this (relay, agent)'s lines now. Never raises into the store's ingest: a bug
        here is logged once and the renderer stops following (scrapes then write the blocks themselves)."""
        try:
            key = (name, agent)
            store = self.store
            block = self._agents.get(key)
            labels = block.labels if block is not None else _AgentLabels(name, agent)
            paths = tuple(record.paths.values())
            # A new key is inserted where it lands: `update` then puts every block back in the store's order before a
            # render joins them.
            written = _agent_block(labels, record, paths, store.stale_after(agent), store.now())
            self._agents[key] = written
            self._first_stale = min(self._first_stale, written.oldest + written.limit)
            self._newest_built = max(self._newest_built, written.built_at)
            counts = store.packets.get(key)
            if counts is not None:
                self._pass_due = self._pass_due or key not in self._counters
                self._counters[key] = _counter_block(labels, counts)
            self._pass_due = self._pass_due or block is None
            self.written_on_arrival += 1
        except Exception:
            log.exception("writing the metrics of a new result failed; they will be written at scrape time")
            self.unfollow()

    def update(self) -> int:
        """Rewrite the blocks whose inputs changed, in the store's order; how many (relay, agent) blocks were."""
        store = self.store
        now = store.now()
        limits = {agent: store.stale_after(agent) for agent in store.agents}
        if self._nothing_to_do(now, limits):
            self.rebuilt = 0
            return 0
        held = self._agents
        blocks: dict[tuple[str, str], _AgentBlock] = {}
        rebuilt = 0
        for name, server in store.servers.items():
            for agent, record in server.agents.items():
                paths = tuple(record.paths.values())
                limit = limits.get(agent) or store.stale_after(agent)
                block = held.get((name, agent))
                if block is None or block.record is not record or not block.valid(paths, limit, now):
                    labels = block.labels if block is not None else _AgentLabels(name, agent)
                    block = _agent_block(labels, record, paths, limit, now)
                    rebuilt += 1
                blocks[(name, agent)] = block
        self._agents = blocks
        self._update_counters()
        self.rebuilt = rebuilt
        self._pass_due = False
        self._passed_over = (store.servers, store.packets, limits)
        self._first_stale = min((block.oldest + block.limit for block in blocks.values()), default=math.inf)
        self._newest_built = max((block.built_at for block in blocks.values()), default=-math.inf)
        return rebuilt

    def _nothing_to_do(self, now: float, limits: dict[str, float]) -> bool:
        """Whether every block is known current without looking at each: while following, every result kept since
        the last pass was written on arrival, so only time (a path going stale, the clock going back), a staleness
        limit or the inventory (the store's servers and counters replaced) can have moved anything. A new (relay,
        agent) sets `_pass_due`, for the blocks' order."""
        if self._pass_due or self.kept not in self.store.on_kept or self._passed_over is None:
            return False
        servers, packets, held_limits = self._passed_over
        # A margin below the first path's staleness: its own test (`valid`) is `now - oldest > limit`, which rounds
        # differently from `now > oldest + limit`; the pass makes the exact test.
        return (
            servers is self.store.servers
            and packets is self.store.packets
            and held_limits == limits
            and self._newest_built <= now < self._first_stale - _STALE_MARGIN
        )

    def render(self) -> bytes:
        store = self.store
        store.refresh()
        self.update()
        now = store.now()
        up, health, success, stage_success, duration = ([_HEADERS[spec.name]] for spec in ALL_METRICS[:5])
        held = self._servers
        servers: dict[str, _ServerBlock] = {}
        for name, server in store.servers.items():
            block = held.get(name)
            if block is None or block.state is not server.state:
                block = _server_block(name, server.state)
            servers[name] = block
            up.append(block.up)
            health.append(block.health)
        self._servers = servers
        ages = []
        for agent_block in self._agents.values():
            success.append(agent_block.success)
            stage_success.append(agent_block.stage_success)
            duration.append(agent_block.duration)
            age = now - agent_block.record.newest.taken_at
            ages.append(f"{agent_block.labels.age}{_number(age) if age > 0 else '0.0'}\n")
        sent, received = [_HEADERS[PACKETS_SENT.name]], [_HEADERS[PACKETS_RECEIVED.name]]
        for counter in self._counters.values():
            sent.append(counter.sent_lines)
            received.append(counter.received_lines)
        head, tail = self._small()
        age_lines = _HEADERS[RESULT_AGE.name] + "".join(ages).encode()
        return b"".join((*up, *health, *success, *stage_success, *duration, age_lines, head, *sent, *received, tail))

    def _update_counters(self) -> None:
        held = self._counters
        counters: dict[tuple[str, str], _CounterBlock] = {}
        for key, counts in self.store.packets.items():
            block = held.get(key)
            if block is None or not (
                counts.sent == block.sent and counts.received == block.received and counts.judged == block.judged
            ):
                agent_block = self._agents.get(key)
                labels = agent_block.labels if agent_block is not None else _AgentLabels(*key)
                block = _counter_block(labels, counts)
            counters[key] = block
        self._counters = counters

    def _small(self) -> tuple[bytes, bytes]:
        """The families of a handful of lines, written every time: (agents and messages, relay and agent counts)."""
        store = self.store
        samples: Samples = {spec.name: [] for spec in (AGENT_UP, AGENT_CONTROL_OK, AGENT_CLOCK_OFFSET, AGENTS)}
        _agents(store, samples)
        _own_state(store, samples)
        samples[MESSAGES.name] = [((o.value,), float(store.messages[o])) for o in Outcome]
        states = dict.fromkeys(HEALTH_STATES, 0)
        for server in store.servers.values():
            states[server.state] += 1
        samples[SERVERS.name] = [((s.value,), float(n)) for s, n in states.items()]
        head_specs = (AGENT_UP, AGENT_CONTROL_OK, AGENT_CLOCK_OFFSET, MESSAGES)
        head = b"".join(_lines(spec, samples[spec.name]) for spec in head_specs)
        tail_specs = (SERVERS, AGENTS, INVENTORY_OK, INVENTORY_AGE, BROKER_CONNECTED)
        tail = b"".join(_lines(spec, samples[spec.name]) for spec in tail_specs)
        return head, tail


def _lines(spec: MetricSpec, samples: list[tuple[Labels, float]]) -> bytes:
    """A whole family, header included, in generate_latest's form (label names sorted)."""
    order = sorted(range(len(spec.labels)), key=lambda i: spec.labels[i])
    out = [_HEADERS[spec.name].decode()]
    for values, value in samples:
        labels = ",".join(f'{spec.labels[i]}="{values[i]}"' for i in order)
        braces = f"{{{labels}}}" if labels else ""  # a family without labels is written bare, as generate_latest does
        out.append(f"{spec.name}{braces} {_float_text(value)}\n")
    return "".join(out).encode()


def _server_block(name: str, state: HealthState) -> _ServerBlock:
    up = b""
    if state is not HealthState.unknown:
        up = f'wgprobe_server_up{{server="{name}"}} {_ZERO_ONE[state is not HealthState.down]}\n'.encode()
    health = "".join(
        f'wgprobe_server_health{{server="{name}",state="{each.value}"}} {_ZERO_ONE[each is state]}\n'
        for each in HEALTH_STATES
    )
    return _ServerBlock(state, up, health.encode())


def _agent_block(
    labels: _AgentLabels, record: AgentRecord, paths: tuple[PathRecord, ...], limit: float, now: float
) -> _AgentBlock:
    path_samples, stage_samples, oldest = _series(record, limit, now)
    prefixes, path = labels.success, labels.path
    success = [
        f"{prefixes.get((slot, family)) or path(slot, family)}{_ZERO_ONE[value == 1.0]}\n"
        for slot, family, value in path_samples
    ]
    stage = labels.stage
    stage_success = [f"{stage[name]}{_ZERO_ONE[ok == 1.0]}\n" for name, ok, _ in stage_samples]
    duration = labels.duration
    durations = [f"{duration[name]}{_number(seconds)}\n" for name, _, seconds in stage_samples]
    return _AgentBlock(
        record=record,
        labels=labels,
        paths=paths,
        limit=limit,
        built_at=now,
        oldest=oldest,
        success="".join(success).encode(),
        stage_success="".join(stage_success).encode(),
        duration="".join(durations).encode(),
    )


def _counter_block(labels: _AgentLabels, counts: PacketCounts) -> _CounterBlock:
    sent, received = [], []
    for index, judged in enumerate(counts.judged):
        if judged:
            sent.append(f"{labels.sent[index]}{_count(counts.sent[index])}\n")
            received.append(f"{labels.received[index]}{_count(counts.received[index])}\n")
    return _CounterBlock(
        counts.sent.copy(),
        counts.received.copy(),
        counts.judged.copy(),
        "".join(sent).encode(),
        "".join(received).encode(),
    )


def render(store: ResultStore) -> bytes:
    """The text exposition of a store once, by a renderer without history; a server keeps one `MetricsRenderer`."""
    return MetricsRenderer(store).render()
