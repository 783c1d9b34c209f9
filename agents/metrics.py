"""The agent's own /metrics: every name and help text here, computed at scrape time from the agent's state, on an
explicit registry (never prometheus_client's global one). Base units, Prometheus naming. The relays' health is the
aggregator's to export; these say how the agent itself is doing: probing, its inventory, its control check, and
delivery (spool depth, publish failures by reason)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from probe import __version__

if TYPE_CHECKING:
    from agents.agent import Agent

PREFIX = "wgprobe_agent_"


class AgentCollector(Collector):
    def __init__(self, agent: Agent, now: Callable[[], float] = time.time) -> None:
        self.agent = agent
        self.now = now

    def collect(self) -> Iterator[Metric]:
        agent, counters = self.agent, self.agent.counters
        name = agent.config.agent.name
        info = GaugeMetricFamily(
            PREFIX + "info", "The agent's name and version (always 1).", labels=["agent", "version"]
        )
        info.add_metric([name, __version__], 1)
        yield info
        probes = CounterMetricFamily(
            PREFIX + "probes", "Relay probes finished, by outcome (ok, failed, overrun, error).", labels=["outcome"]
        )
        for outcome in ("ok", "failed", "overrun", "error"):
            probes.add_metric([outcome], counters.probes.get(outcome, 0))
        yield probes
        yield _counter("probe_duration_seconds", "Seconds spent in relay probes, summed.", counters.probe_seconds)
        commands = CounterMetricFamily(
            PREFIX + "commands",
            "Commands received (probe relays now, for a verification), by outcome: accepted, or why dropped.",
            labels=["outcome"],
        )
        for outcome, count in counters.commands.items():
            commands.add_metric([str(outcome)], count)
        yield commands
        yield _gauge("probes_in_flight", "Relay probes running now.", agent.in_flight)
        yield _gauge("relays", "Relays in the inventory the agent probes.", len(agent.inventory.relays))
        loaded = counters.inventory_loaded_at
        if loaded is not None:
            yield _gauge("inventory_age_seconds", "Seconds since the inventory was last loaded.", self.now() - loaded)
        yield _gauge("inventory_ok", "1 if the last inventory load succeeded.", 0 if counters.inventory_error else 1)
        yield _counter(
            "inventory_failures",
            "Inventory loads that failed (the last good one was kept).",
            counters.inventory_failures,
        )
        control = agent.control
        if control is not None:
            yield _gauge(
                "control_ok", "1 if the agent's own reach, through no relay, held at the last check.", int(control.ok)
            )
        if counters.last_round_seconds is not None:
            yield _gauge(
                "round_duration_seconds",
                "First start to last end of the probes of the last full round.",
                counters.last_round_seconds,
            )
        yield from _outbox(agent)


def _outbox(agent: Agent) -> Iterator[Metric]:
    stats = agent.outbox.stats()
    yield _counter("results_delivered", "Results the receiving side acknowledged.", stats.delivered)
    yield _gauge("spool_results", "Results held until the broker acknowledges them.", stats.pending)
    yield _gauge("spool_bytes", "Bytes of the results held.", stats.pending_bytes)
    yield _counter("spool_dropped", "Results given up to the spool's size or age bound, oldest first.", stats.dropped)
    if stats.oldest_pending_age_seconds is not None:
        yield _gauge("spool_oldest_age_seconds", "Age of the oldest result held.", stats.oldest_pending_age_seconds)
    yield _gauge("broker_connected", "1 while connected to the broker.", int(stats.connected))
    failures = CounterMetricFamily(PREFIX + "publish_failures", "Publishes that failed, by reason.", labels=["reason"])
    for reason, count in sorted(stats.failures.items()):
        failures.add_metric([reason], count)
    yield failures


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, help_text, value=value)


def registry(agent: Agent) -> CollectorRegistry:
    made = CollectorRegistry(auto_describe=False)
    made.register(AgentCollector(agent))
    return made


def exposition(agent: Agent) -> bytes:
    from prometheus_client.exposition import generate_latest

    return generate_latest(registry(agent))
