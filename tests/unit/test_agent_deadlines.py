"""The agent's schedule under load, with a fake probe in place of the prober (the inventory and the control check are
a simulated fleet's): a probe that would outlive its interval is cut at its deadline and counted as an overrun, with
no result sent, and never more probes are in flight than `[schedule] concurrency`."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.agent import Agent, run_agent
from agents.log import Log
from agents.schedule import Job
from probe.agent_config import AgentConfig, ScheduleSection
from probe.aggregator.testing import make_result
from probe.bus import LocalOutbox
from probe.inventory import Relay, load_inventory
from probe.results import ServerResult
from probe.sim.testing import agent_fleet
from tests.unit.test_agent import Received, until

HANGS = "se-got-wg-001"  # its probe never ends by itself
CAP = 2


@dataclass
class Cut:
    job: Job
    finish_by: float  # event-loop time the agent gave the probe
    at: float  # event-loop time it was cancelled


@dataclass
class FakeProbe:
    """In place of `Agent.probe`: HANGS waits until cancelled; the others take `seconds` and pass."""

    agent: str
    seconds: float = 0.1
    running: int = 0
    most: int = 0
    cuts: list[Cut] = field(default_factory=list)

    async def __call__(self, relay: Relay, job: Job | None = None, *, finish_by: float | None = None) -> ServerResult:
        assert job is not None and finish_by is not None  # scheduled jobs only here
        loop = asyncio.get_running_loop()
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if relay.name == HANGS:
                await asyncio.Event().wait()
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cuts.append(Cut(job, finish_by, loop.time()))
            raise
        finally:
            self.running -= 1
        return make_result(relay.name, self.agent, taken_at=time.time())


def logged_agent(config: AgentConfig, received: Received, stream: io.StringIO) -> Agent:
    """An agent on the in-process bus whose JSON log lines go to `stream`."""
    return Agent(
        config,
        load_inventory(config.inventory.source),
        outbox=LocalOutbox(config.agent.name, received.deliver),
        load_inventory=lambda: load_inventory(config.inventory.source),
        log=Log(json_lines=True, stream=stream, agent=config.agent.name),
    )


@pytest.mark.asyncio
async def test_a_probe_past_its_interval_is_cut_at_the_deadline_and_the_concurrency_cap_holds(tmp_path: Path) -> None:
    # Six relays in a 1 s round's four slots (agents/schedule.py): se-got-wg-002 and -006 share one, and HANGS is
    # still in flight then, so a cap that did not hold would show three probes at once. The others' probes are
    # short, so with the cap's one free place they still pass (results flow) rather than all overrun waiting.
    async with agent_fleet(tmp_path / "sim", relays=6) as sim:
        base = sim.config()
        config = base.model_copy(update={"schedule": ScheduleSection(interval_seconds=1.0, concurrency=CAP)})
        received, stream = Received(), io.StringIO()
        agent = logged_agent(config, received, stream)
        fake = FakeProbe(config.agent.name)
        agent.probe = fake  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        loop_minus_wall = loop.time() - time.time()
        running = asyncio.create_task(run_agent(agent))
        try:
            await until(lambda: sum(c.job.relay == HANGS for c in fake.cuts) >= 2 and len(received.results) >= 4)
        finally:
            agent.stop()
            await asyncio.wait_for(running, 20)

    hung = [cut for cut in fake.cuts if cut.job.relay == HANGS]
    for cut in hung:
        # The agent's deadline is the job's (its due time plus one interval), moved to the event loop's clock,
        # and the probe was cut no earlier than that.
        assert cut.finish_by == pytest.approx(cut.job.deadline + loop_minus_wall, abs=0.05)
        assert cut.job.deadline == cut.job.due + agent.interval
        assert cut.at >= cut.finish_by
    # Each cut is an overrun (the stop's grace, 3 s, outlasts any deadline here), counted and logged, and sent
    # no result. Relays that waited for the cap past their own deadline are overruns too.
    overruns = agent.counters.probes.get("overrun", 0)
    assert overruns >= len(hung) >= 2 and stream.getvalue().count('"event": "probe_overrun"') == overruns
    assert not received.of(HANGS)
    assert fake.most == CAP  # reached, never passed


@pytest.mark.asyncio
async def test_a_job_that_raises_is_said_at_once_and_the_others_go_on(tmp_path: Path) -> None:
    """A probe job runs beside the agent's tree of tasks: an exception in it (a bug, a spool that refuses a result)
    reached nobody but asyncio's 'never retrieved' at collection. Now: logged with its traceback, counted."""
    async with agent_fleet(tmp_path / "sim", relays=3) as sim:
        base = sim.config()
        config = base.model_copy(update={"schedule": ScheduleSection(interval_seconds=1.0)})
        received, stream = Received(), io.StringIO()
        agent = logged_agent(config, received, stream)
        fake = FakeProbe(config.agent.name, seconds=0.01)

        async def broken(relay: Relay, job: Job | None = None, *, finish_by: float | None = None) -> ServerResult:
            if relay.name == HANGS:
                raise RuntimeError("a bug in a probe")
            return await fake(relay, job, finish_by=finish_by)

        agent.probe = broken  # type: ignore[method-assign]
        running = asyncio.create_task(run_agent(agent))
        try:
            await until(lambda: '"event": "probe_job_failed"' in stream.getvalue() and len(received.results) >= 2)
        finally:
            agent.stop()
            await asyncio.wait_for(running, 20)
    failed = [json.loads(line) for line in stream.getvalue().splitlines() if '"probe_job_failed"' in line]
    assert failed[0]["relay"] == HANGS and failed[0]["error"] == "RuntimeError: a bug in a probe"
    assert "Traceback" in failed[0]["traceback"] and agent.counters.probes.get("error", 0) == len(failed)
    assert {r.server for r in received.results} >= {"se-got-wg-002", "se-got-wg-003"}  # the others went on
