"""The agent's own /metrics (agents/metrics.py) rendered from a running agent: a simulated fleet, the real MQTT outbox
and spool, a real mosquitto. Each series says what the agent is living through: rounds done and how long the last
took, an inventory reload that failed (kept, and aging), its control check failing, publishes the broker refuses,
and a broker outage that fills the spool. `promtool check metrics` accepts every rendering."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from agents.agent import Agent, run_agent
from agents.log import Log
from agents.metrics import AgentCollector, exposition
from agents.outbox import MqttOutbox
from agents.spool import Spool
from probe import __version__
from probe.agent_config import ScheduleSection
from probe.aggregator.testing import make_result
from probe.inventory import load_inventory
from probe.mqtt import Backoff
from probe.sim.fleet import SimFleet
from probe.sim.testing import agent_fleet
from tests.integration.broker import Mosquitto
from tests.unit.test_agent import until
from tests.unit.test_agent_http import Samples, promtool_check, samples, value

pytestmark = pytest.mark.integration
AGENT = "sim-agent"  # the name agent_fleet gives its agent; the broker user is the same (the ACL's %u)


@dataclass
class Clock:
    """The spool's and outbox's clock: the wall clock, or held at `held` (ages become exact)."""

    held: float | None = None

    def __call__(self) -> float:
        return time.time() if self.held is None else self.held


def scrape(agent: Agent, now: Clock | None = None) -> Samples:
    """The agent's /metrics as `probe agent` serves it (or with the collector's clock at `now`), checked by
    promtool."""
    if now is None:
        text = exposition(agent)
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AgentCollector(agent, now=now))
        text = generate_latest(registry)
    promtool_check(text)
    return samples(text)


def metric(found: Samples, name: str, **labels: str) -> float | None:
    return value(found, "wgprobe_agent_" + name, **labels)


@pytest.mark.asyncio
async def test_the_agents_metrics_say_what_it_lives_through(broker: Mosquitto, tmp_path: Path) -> None:
    clock = Clock()
    async with agent_fleet(tmp_path / "sim", relays=3) as sim:
        config = sim.config().model_copy(update={"schedule": ScheduleSection(interval_seconds=1.0)})
        source = Path(config.inventory.source)
        with Spool(tmp_path / "spool.sqlite", max_bytes=1 << 24, max_age_seconds=86400.0, now=clock) as spool:
            outbox = MqttOutbox(broker.section(AGENT), AGENT, spool, now=clock, backoff=Backoff(0.05, 0.2))
            agent = Agent(
                config,
                load_inventory(source),
                outbox=outbox,
                load_inventory=lambda: load_inventory(source),
                log=Log(stream=io.StringIO(), agent=AGENT),
            )
            running = asyncio.create_task(run_agent(agent))
            try:
                await steady(agent, outbox)
                await inventory_kept(agent, source)
                await control_lost(agent, sim.fleet)
                await refused(agent, outbox)
                await outage(agent, outbox, broker, clock)
            finally:
                agent.stop()
                await asyncio.wait_for(running, 30)


async def steady(agent: Agent, outbox: MqttOutbox) -> None:
    await until(lambda: agent.counters.last_round is not None and outbox.stats().delivered >= 3)
    found, counters, stats = scrape(agent), agent.counters, outbox.stats()  # no await between: one moment
    assert metric(found, "info", agent=AGENT, version=__version__) == 1.0
    assert metric(found, "probes_total", outcome="ok") == counters.probes["ok"] >= 3
    assert metric(found, "probes_total", outcome="overrun") == 0.0
    assert metric(found, "relays") == 3.0
    assert metric(found, "inventory_ok") == 1.0 and metric(found, "inventory_failures_total") == 0.0
    assert metric(found, "control_ok") == 1.0
    assert counters.last_round_seconds is not None
    assert metric(found, "round_duration_seconds") == counters.last_round_seconds > 0.0
    assert metric(found, "broker_connected") == 1.0
    assert metric(found, "results_delivered_total") == stats.delivered
    assert metric(found, "spool_results") == stats.pending
    assert metric(found, "publish_failures_total", reason="not_authorized") is None


async def inventory_kept(agent: Agent, source: Path) -> None:
    """A reload that fails keeps the last good inventory: inventory_ok 0, the age still counted from the last good
    load."""
    loaded = agent.counters.inventory_loaded_at
    assert loaded is not None
    good = source.read_text()
    source.write_text("{ not an inventory")
    agent.reload()
    await until(lambda: agent.counters.inventory_failures == 1)
    found = scrape(agent, now=Clock(loaded + 42.0))
    assert metric(found, "inventory_ok") == 0.0 and metric(found, "inventory_failures_total") == 1.0
    assert metric(found, "inventory_age_seconds") == 42.0
    assert metric(found, "relays") == 3.0
    source.write_text(good)
    agent.reload()
    await until(lambda: agent.counters.inventory_error is None)
    found = scrape(agent)
    assert metric(found, "inventory_ok") == 1.0 and metric(found, "inventory_failures_total") == 1.0


async def control_lost(agent: Agent, fleet: SimFleet) -> None:
    fleet.set_outside(up=False)
    await until(lambda: agent.control is not None and not agent.control.ok)
    assert metric(scrape(agent), "control_ok") == 0.0
    fleet.set_outside(up=True)
    await until(lambda: agent.control is not None and agent.control.ok)
    assert metric(scrape(agent), "control_ok") == 1.0


async def refused(agent: Agent, outbox: MqttOutbox) -> None:
    """Results on another agent's topics: the broker's ACL refuses them (MQTT v5 reason code), counted by reason."""
    for n in range(2):
        outbox.put_result(make_result("se-got-wg-001", "other-agent", taken_at=time.time(), result_id=f"foreign-{n}"))
    await until(lambda: outbox.stats().failures.get("not_authorized") == 2)
    assert metric(scrape(agent), "publish_failures_total", reason="not_authorized") == 2.0


async def outage(agent: Agent, outbox: MqttOutbox, broker: Mosquitto, clock: Clock) -> None:
    """The broker away: results wait in the spool, its depth and the oldest's age say how long; back, it drains."""
    clock.held = time.time()  # every result spooled from now on is stamped with this moment
    broker.stop()
    await until(lambda: not outbox.stats().connected and outbox.stats().pending >= 2)
    clock.held += 100.0
    found, stats = scrape(agent), outbox.stats()
    assert metric(found, "broker_connected") == 0.0
    assert metric(found, "spool_results") == stats.pending >= 2
    assert metric(found, "spool_bytes") == stats.pending_bytes > 0
    age = metric(found, "spool_oldest_age_seconds")  # the outbox's clock: 100 s on, or more for one sent before
    assert age is not None and age >= 100.0
    assert metric(found, "publish_failures_total", reason="unavailable") == stats.failures["unavailable"] >= 1
    clock.held = None
    broker.start()
    await until(lambda: outbox.stats().connected and outbox.stats().pending == 0)
    found = scrape(agent)
    assert metric(found, "spool_results") == 0.0 and metric(found, "spool_bytes") == 0.0
    assert metric(found, "spool_oldest_age_seconds") is None  # nothing held: no age
    assert metric(found, "broker_connected") == 1.0
