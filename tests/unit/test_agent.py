"""The agent against a simulated fleet on loopback, with the in-process bus: every relay probed every round with the
right verdict, a live fault seen in the next round, the inventory followed (and kept when broken), the control check
carried by every result, and an orderly stop that loses nothing. No root, no broker."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.agent import Agent, run_agent
from agents.log import Log
from agents.schedule import Job
from probe.agent_config import AgentConfig, ScheduleSection
from probe.aggregator.testing import make_result
from probe.bus import LocalOutbox, OutboxStats
from probe.inventory import load_inventory
from probe.messages import AgentStatus, ResultMessage
from probe.sim.faults import SimFault
from probe.sim.testing import SimSetup, agent_fleet

INTERVAL = 1.0  # the schedule's minimum: rounds come quickly in a test


class Received:
    """What the in-process bus delivered: results and statuses, in order, parsed back from their payloads."""

    def __init__(self) -> None:
        self.results: list[ResultMessage] = []
        self.statuses: list[AgentStatus] = []
        self.topics: list[str] = []
        self.deliveries: list[tuple[str, bool]] = []  # (topic, cleared: an empty payload)

    def deliver(self, topic: str, payload: bytes) -> None:
        self.topics.append(topic)
        self.deliveries.append((topic, not payload))
        if not payload:  # a retained result cleared (a relay left the inventory): no message to parse
            return
        if "/results/" in topic:
            self.results.append(ResultMessage.model_validate_json(payload))
        else:
            self.statuses.append(AgentStatus.model_validate_json(payload))

    def of(self, relay: str) -> list[ResultMessage]:
        return [r for r in self.results if r.server == relay]


def make_agent(sim: SimSetup, received: Received, tmp_path: Path) -> Agent:
    base = sim.config()
    config: AgentConfig = base.model_copy(update={"schedule": ScheduleSection(interval_seconds=INTERVAL)})
    log = Log(stream=io.StringIO(), agent=config.agent.name)
    return Agent(
        config,
        load_inventory(config.inventory.source),
        outbox=LocalOutbox(config.agent.name, received.deliver),
        load_inventory=lambda: load_inventory(config.inventory.source),
        log=log,
    )


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for `condition`; the timeout is a hang guard, far above what any condition here needs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def probing(relay: str) -> None:
    """Until a probe of `relay` is under way: its task has begun (past the inventory check it makes first) and
    not ended. A broken relay's probe waits out its timeouts (~0.5 s here), time enough for a reload."""
    deadline = asyncio.get_running_loop().time() + 20.0  # a hang guard, as in until()
    while asyncio.get_running_loop().time() < deadline:
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == f"probe {relay}"]
        if tasks:
            await asyncio.sleep(0.02)  # the new task's first step runs
            if any(not t.done() for t in tasks):
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no probe of {relay} under way in time")


@pytest.mark.asyncio
async def test_every_relay_every_round_with_its_verdict_and_a_live_fault_in_the_next_round(tmp_path: Path) -> None:
    faults = [("se-got-wg-002", SimFault.parse("nat"))]
    async with agent_fleet(tmp_path / "sim", relays=3, faults=faults) as sim:
        received = Received()
        agent = make_agent(sim, received, tmp_path)
        running = asyncio.create_task(run_agent(agent))
        await until(lambda: all(len(received.of(f"se-got-wg-00{n}")) >= 2 for n in (1, 2, 3)))
        for relay in ("se-got-wg-001", "se-got-wg-003"):
            assert all(r.ok and r.control_ok for r in received.of(relay))
        assert {r.reason for r in received.of("se-got-wg-002")} == {"forward_timeout"}
        # One result per relay per round; every result_id unique; topics name the agent and the relay.
        rounds = [(r.server, r.round) for r in received.results]
        assert len(rounds) == len(set(rounds))
        assert len({r.result_id for r in received.results}) == len(received.results)
        assert f"wgprobe/v1/results/{agent.config.agent.name}/se-got-wg-002" in received.topics
        # Each round's paths are the main port on both families plus a share of the others.
        assert all(
            {(p.port, p.family) for p in r.paths} >= {(51820, "ipv4"), (51820, "ipv6")} for r in received.results
        )

        seen = len(received.of("se-got-wg-003"))
        sim.fleet.break_relay("se-got-wg-003", SimFault.parse("nat"))
        await until(lambda: len(received.of("se-got-wg-003")) >= seen + 2)
        assert received.of("se-got-wg-003")[-1].reason == "forward_timeout"

        agent.stop()
        await asyncio.wait_for(running, 10)
    assert received.statuses[0].online and not received.statuses[-1].online
    assert agent.counters.probes.get("ok", 0) > 0 and agent.counters.probes.get("failed", 0) > 0


@pytest.mark.asyncio
async def test_the_inventory_is_followed_and_a_broken_one_is_kept_out(tmp_path: Path) -> None:
    # se-got-wg-003's NAT is broken: its probes wait out their timeouts, so one is in flight when it is removed.
    async with agent_fleet(tmp_path / "sim", relays=3, faults=[("se-got-wg-003", SimFault.parse("nat"))]) as sim:
        received = Received()
        agent = make_agent(sim, received, tmp_path)
        running = asyncio.create_task(run_agent(agent))
        source = Path(agent.config.inventory.source)
        whole = json.loads(source.read_text())

        source.write_text("{ this is not an inventory")
        agent.reload()
        await until(lambda: agent.counters.inventory_failures == 1)
        assert len(agent.inventory.relays) == 3 and agent.counters.inventory_error

        fewer = dict(whole)
        fewer["wireguard"] = {**whole["wireguard"], "relays": whole["wireguard"]["relays"][:2]}
        source.write_text(json.dumps(fewer))
        # Removed while probed, after a result of it went out (a relay nothing was published for needs no clear).
        await until(lambda: len(received.of("se-got-wg-003")) >= 1)
        await probing("se-got-wg-003")
        agent.reload()
        await until(lambda: len(agent.inventory.relays) == 2)
        assert agent.counters.inventory_error is None
        before = len(received.of("se-got-wg-003"))
        await until(lambda: min(len(received.of(f"se-got-wg-00{n}")) for n in (1, 2)) >= 3)
        # Its retained result cleared, once, and the last word on its topic: a probe running at the removal is
        # not published after the clear (it would put the relay's result back on the broker for good).
        topic = f"wgprobe/v1/results/{agent.config.agent.name}/se-got-wg-003"
        assert [cleared for t, cleared in received.deliveries if t == topic] == [False] * before + [True]
        stream = agent.log.stream
        assert isinstance(stream, io.StringIO)
        await until(lambda: "result_withheld" in stream.getvalue())  # the one in flight, ended since
        agent.reload()  # nothing changed: a SIGHUP is still answered in the log
        await until(lambda: "inventory_reloaded" in stream.getvalue())
        agent.stop()
        await asyncio.wait_for(running, 10)


@pytest.mark.asyncio
async def test_what_an_inventory_load_skips_is_logged_at_start_and_on_reload(tmp_path: Path) -> None:
    # Relay entries and labels that do not validate are left out; the agent says which, as `probe server` does,
    # when it starts and at every reload, rather than leaving a relay unprobed without a word.
    from agents.inventory import first_inventory
    from probe.config import InventorySection
    from probe.inventory.configured import ConfiguredInventory

    async with agent_fleet(tmp_path / "sim", relays=2) as sim:
        source_file = sim.directory / "relays.json"
        whole = json.loads(source_file.read_text())
        whole["wireguard"]["relays"][1]["public_key"] = "not-a-key"
        source_file.write_text(json.dumps(whole))
        labels = sim.directory / "labels.json"
        labels.write_text(
            json.dumps({"se-got-wg-001": {"kernel": "6.1", "bad name!": "x"}, "se-got-wg-01": {"os": "x"}})
        )
        source = ConfiguredInventory(InventorySection(source=str(source_file), labels=str(labels)))
        said = io.StringIO()
        log = Log(json_lines=True, stream=said, agent="sim-agent")
        inventory = await first_inventory(source, log, asyncio.Event())
        assert inventory is not None and inventory.names == ["se-got-wg-001"]

        def lines(event: str) -> list[str]:
            return [line["problem"] for line in map(json.loads, said.getvalue().splitlines()) if line["event"] == event]

        assert ["se-got-wg-002" in line for line in lines("inventory_entry_skipped")] == [True]
        assert ["bad name!" in line for line in lines("labels_entry_skipped")] == [True]
        assert lines("labels_host_not_in_inventory") == ["labels for 1 host(s) not in the inventory: se-got-wg-01"]
        config = sim.config()
        agent = Agent(
            config,
            inventory,
            outbox=LocalOutbox(config.agent.name, Received().deliver),
            load_inventory=source.load,
            skipped=source.skipped,
            log=log,
        )
        await agent.refresh_inventory(asked=True)
        assert len(lines("inventory_entry_skipped")) == 2 and len(lines("labels_entry_skipped")) == 2
        assert len(lines("labels_host_not_in_inventory")) == 2


@pytest.mark.asyncio
async def test_results_carry_the_control_check_and_the_status_says_why(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=2) as sim:
        received = Received()
        agent = make_agent(sim, received, tmp_path)
        running = asyncio.create_task(run_agent(agent))
        await until(lambda: len(received.results) >= 2)
        assert all(r.control_ok for r in received.results)

        sim.fleet.set_outside(up=False)  # the agent's own outside is gone: reflector and forward target silent
        await until(lambda: agent.control is not None and not agent.control.ok)
        count = len(received.results)
        await until(lambda: len(received.results) >= count + 2)
        assert not received.results[-1].control_ok
        assert agent.control is not None and agent.control.detail and "reflector" in agent.control.detail
        await until(lambda: received.statuses[-1].control is not None and not received.statuses[-1].control.ok)

        sim.fleet.set_outside(up=True)
        await until(lambda: agent.control is not None and agent.control.ok)
        agent.stop()
        await asyncio.wait_for(running, 10)


class BrokenOutbox(LocalOutbox):
    async def run(self) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("outbox bug")


@pytest.mark.asyncio
async def test_a_task_of_the_tree_that_fails_takes_the_agent_down_loudly(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=1) as sim:
        received = Received()
        agent = make_agent(sim, received, tmp_path)
        agent.outbox = BrokenOutbox(agent.config.agent.name, received.deliver)
        with pytest.raises(ExceptionGroup) as raised:
            await asyncio.wait_for(run_agent(agent), 20)  # a hang guard: it must end by itself
        assert raised.group_contains(RuntimeError, match="outbox bug")


@pytest.mark.asyncio
async def test_a_failure_checks_the_agents_own_reach_before_it_is_blamed_on_the_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: results taken between a cut of the agent's own network and its next periodic control check
    carried the old check's "held", and a lone agent called every relay down."""

    async def never(self: Agent) -> None:  # no periodic check at all: only the one at start and those on failure
        await asyncio.Event().wait()

    monkeypatch.setattr(Agent, "_control_loop", never)
    async with agent_fleet(tmp_path / "sim", relays=2) as sim:
        received = Received()
        agent = make_agent(sim, received, tmp_path)
        running = asyncio.create_task(run_agent(agent))
        await until(lambda: len(received.results) >= 2)
        assert all(r.ok and r.control_ok for r in received.results)
        cut = len(received.results)
        sim.fleet.set_outside(up=False)
        await until(lambda: sum(1 for r in received.results[cut:] if not r.ok) >= 3)
        failed = [r for r in received.results[cut:] if not r.ok]
        assert not any(r.control_ok for r in failed), [(r.server, r.reason) for r in failed]
        agent.stop()
        await asyncio.wait_for(running, 10)


def test_a_broker_user_not_named_after_the_agent_is_said_at_start() -> None:
    # The shipped ACL holds a user to wgprobe/v1/results/<user>/: otherwise every result is refused, and the log
    # would say so only when the first round is published, one line per reason.
    import io

    from agents.cli import warn_foreign_username
    from agents.log import Log
    from probe.service_config import MqttSection

    for username, said in (("agent-se-got", False), (None, False), ("agent-other", True)):
        stream = io.StringIO()
        mqtt = MqttSection.model_validate({"url": "mqtt://127.0.0.1:1883", "username": username})
        warn_foreign_username(mqtt, "agent-se-got", Log(json_lines=True, stream=stream))
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert bool(lines) is said
        if said:
            (line,) = lines
            assert line["level"] == "warning" and line["event"] == "mqtt_username_not_agent_name"
            assert "wgprobe/v1/results/agent-other/" in line["hint"] and "[agent] name" in line["hint"]


class LinkOutbox(LocalOutbox):
    """The in-process bus with a broker connection that a test can cut (the MQTT outbox's `connected`)."""

    link = True

    def stats(self) -> OutboxStats:
        return dataclasses.replace(super().stats(), connected=self.link)


@pytest.mark.asyncio
async def test_the_control_check_reports_the_broker_link_without_failing_the_agents_results(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=2) as sim:
        received = Received()
        agent = make_agent(sim, received, tmp_path)
        outbox = LinkOutbox(agent.config.agent.name, received.deliver)
        agent.outbox = outbox
        running = asyncio.create_task(run_agent(agent))
        await until(lambda: agent.control is not None and agent.control.broker_ok is True)

        outbox.link = False  # the broker is out of reach; reflector and forward target still answer
        await until(lambda: agent.control is not None and agent.control.broker_ok is False)
        assert agent.control is not None and agent.control.ok
        count = len(received.results)
        await until(lambda: len(received.results) >= count + 2)
        # Results taken meanwhile measured the relays like any other: they would wait in the spool and must count.
        assert all(r.control_ok for r in received.results[count:])
        await until(lambda: (c := received.statuses[-1].control) is not None and c.broker_ok is False and c.ok)

        outbox.link = True
        await until(lambda: agent.control is not None and agent.control.broker_ok is True)
        agent.stop()
        await asyncio.wait_for(running, 10)


@pytest.mark.asyncio
async def test_the_round_it_started_in_is_never_reported_as_a_round(tmp_path: Path) -> None:
    # It started partway through round 1000, which held only the relays whose slots were still ahead: its status
    # reported that part as the last round, its duration as the round's.
    async with agent_fleet(tmp_path / "sim", relays=1) as sim:
        config = sim.config().model_copy(update={"schedule": ScheduleSection(interval_seconds=INTERVAL)})
        inventory = load_inventory(config.inventory.source)
        agent = Agent(
            config,
            inventory,
            outbox=LocalOutbox(config.agent.name, lambda topic, payload: None),
            load_inventory=lambda: inventory,
            log=Log(stream=io.StringIO(), agent=config.agent.name),
            now=lambda: 1000.6 * INTERVAL,
        )
    relay = inventory.relays[0].name
    result = make_result(relay, config.agent.name, taken_at=1000.0)
    for number in (1000, 1001, 1002):
        job = Job(relay, number, number * INTERVAL, (number + 1) * INTERVAL, 0, 0)
        agent._book(job, number * INTERVAL + 0.7, number * INTERVAL + 0.8, result)
    assert agent.counters.last_round is None  # round 1000 is over (1002 began), and was not a whole round
    agent._book(Job(relay, 1003, 1003 * INTERVAL, 1004 * INTERVAL, 0, 0), 1003.1, 1003.2, result)
    assert agent.counters.last_round == 1001
    assert agent.counters.last_round_seconds == pytest.approx(0.1)
