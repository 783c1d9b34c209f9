"""Commands to the agent (probe relays now, for `probe verify --aggregator`): what is taken and what is dropped
(pure), and a real agent against a simulated fleet answering one with results tagged by its request id, on every
path, under its concurrency cap, leaving the schedule alone. The broker's side is in
tests/integration/test_verify_aggregator.py."""

from __future__ import annotations

import asyncio
import io
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.agent import Agent, run_agent
from agents.commands import MAX_QUEUED, CommandIntake, CommandOutcome
from agents.log import Log
from agents.metrics import exposition
from probe.agent_config import ScheduleSection
from probe.bus import LocalOutbox
from probe.inventory import load_inventory
from probe.messages import Command, ResultMessage, command_topic
from probe.results import ServerResult
from probe.runner import PathSpec
from probe.sim.testing import SimSetup, agent_fleet
from tests.unit.test_agent import Received, until

T0 = 1_800_000_000.0
AGENT = "sim-agent"
INVENTORY = frozenset({"se-got-wg-001", "se-got-wg-002", "se-got-wg-003"})


def command(*servers: str, request_id: str | None = None, issued: float = T0, **fields: object) -> bytes:
    """A command's payload as the aggregator writes it, with `fields` added or replaced (valid or not)."""
    made = Command(
        request_id=request_id or uuid.uuid4().hex, servers=servers, issued_at=datetime.fromtimestamp(issued, UTC)
    )
    return json.dumps({**json.loads(made.model_dump_json()), **fields}).encode()


def test_what_a_command_must_be_to_be_taken() -> None:
    intake = CommandIntake(AGENT, max_bytes=4096)
    topic = command_topic(AGENT)

    def admit(payload: bytes, *, on: str = topic, queued: int = 0) -> CommandOutcome:
        return intake.admit(payload, on, now=T0 + 1, inventory=INVENTORY, queued=queued).outcome

    assert admit(b'{"request_id": "x", "servers": "all"') is CommandOutcome.malformed  # not even JSON
    assert admit(b'{"request_id": "x", "servers": []}') is CommandOutcome.malformed
    assert admit(command("se-got-wg-001", hostile="\x1b[31m")) is CommandOutcome.malformed  # extra field
    assert admit(command("se-got-wg-001", schema_version=2)) is CommandOutcome.unknown_schema
    assert admit(command("se-got-wg-001"), on=command_topic("other-agent")) is CommandOutcome.wrong_topic
    assert admit(command(*(f"relay-{n:05d}" for n in range(300)))) is CommandOutcome.oversized
    assert admit(command("se-got-wg-001", issued=T0 - 3600)) is CommandOutcome.expired
    assert admit(command("se-got-wg-001", issued=T0 + 3600)) is CommandOutcome.expired  # would never expire
    assert admit(command("se-got-wg-001", issued=T0 + 60)) is CommandOutcome.accepted  # clocks a little apart
    assert admit(command("elsewhere-wg-001")) is CommandOutcome.no_known_server
    assert admit(command("se-got-wg-001", "se-got-wg-002"), queued=MAX_QUEUED - 1) is CommandOutcome.busy

    taken = command("se-got-wg-002", "elsewhere-\x1b[2J", "se-got-wg-001", "se-got-wg-002", request_id="a" * 32)
    admitted = intake.admit(taken, topic, now=T0 + 1, inventory=INVENTORY, queued=0)
    assert admitted.accepted and admitted.known == ("se-got-wg-002", "se-got-wg-001")
    assert admitted.unknown == ("elsewhere-\\x1b[2J",)  # outside text made printable before it is logged
    # A QoS 1 re-delivery (the same request id) is not probed twice; a refused command was never remembered.
    assert admit(taken) is CommandOutcome.duplicate
    assert admit(command("se-got-wg-001", request_id="b" * 32)) is CommandOutcome.accepted


def make_agent(sim: SimSetup, received: Received, *, interval: float = 60.0, concurrency: int = 64) -> Agent:
    base = sim.config()
    schedule = ScheduleSection(interval_seconds=interval, concurrency=concurrency)
    config = base.model_copy(update={"schedule": schedule})
    return Agent(
        config,
        load_inventory(config.inventory.source),
        outbox=LocalOutbox(config.agent.name, received.deliver),
        load_inventory=lambda: load_inventory(config.inventory.source),
        log=Log(stream=io.StringIO(), agent=config.agent.name),
    )


def tagged(received: Received, request_id: str) -> list[ResultMessage]:
    return [r for r in received.results if r.request_id == request_id]


@pytest.mark.asyncio
async def test_a_command_is_answered_now_on_every_path_tagged_and_the_schedule_is_left_alone(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=3) as sim:
        received = Received()
        agent = make_agent(sim, received, concurrency=2)
        running = asyncio.create_task(run_agent(agent))
        try:
            await until(lambda: agent.control is not None)
            due_before, rounds_before = agent.schedule.next_due(), agent.counters.last_round
            in_flight, most = 0, 0
            probe_paths = agent.prober.probe_paths

            async def counted(relay: object, specs: list[PathSpec], *, finish_by: float | None = None) -> ServerResult:
                nonlocal in_flight, most
                in_flight += 1
                most = max(most, in_flight)
                try:
                    return await probe_paths(relay, specs, finish_by=finish_by)  # type: ignore[arg-type]
                finally:
                    in_flight -= 1

            agent.prober.probe_paths = counted  # type: ignore[method-assign]
            request_id = uuid.uuid4().hex
            names = ("se-got-wg-001", "se-got-wg-002", "se-got-wg-003", "elsewhere-wg-001")
            agent.take_command(command(*names, request_id=request_id, issued=agent.now()), command_topic(AGENT))
            agent.take_command(command(*names, request_id=request_id, issued=agent.now()), command_topic(AGENT))
            await until(lambda: len(tagged(received, request_id)) == 3)
            await asyncio.sleep(0.2)  # a duplicate would have been probed by now
            answers = tagged(received, request_id)
            assert sorted(r.server for r in answers) == sorted(names[:3])  # once each, nothing for elsewhere
            inventory = agent.inventory
            for result in answers:
                relay = inventory.require(result.server)
                assert result.ok and result.control_ok and result.agent == AGENT
                assert len(result.paths) == 2 * (1 + len(relay.port_ranges))  # every path, both families
                assert result.round == math.floor(result.started_at.timestamp() / agent.interval)
            assert len({r.result_id for r in answers}) == 3
            assert most == 2  # the cap held, and bound: three relays, two at once
            assert agent.schedule.next_due() == due_before and agent.counters.last_round == rounds_before
            assert agent.counters.commands[CommandOutcome.accepted] == 1
            assert agent.counters.commands[CommandOutcome.duplicate] == 1
            metrics = exposition(agent).decode()
            assert 'wgprobe_agent_commands_total{outcome="duplicate"} 1.0' in metrics
        finally:
            agent.stop()
            await running


@pytest.mark.asyncio
async def test_malformed_commands_are_counted_logged_once_and_the_agent_goes_on(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=1) as sim:
        received = Received()
        agent = make_agent(sim, received)
        stream = io.StringIO()
        agent.log = Log(stream=stream, agent=AGENT)
        running = asyncio.create_task(run_agent(agent))
        try:
            for garbage in (b"\xff\xfe not json", b"[]", b'{"servers": ["se-got-wg-001"]}'):
                agent.take_command(garbage, command_topic(AGENT))
            stale = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
            agent.take_command(command("se-got-wg-001", issued=stale), command_topic(AGENT))
            assert agent.counters.commands[CommandOutcome.malformed] == 3
            assert agent.counters.commands[CommandOutcome.expired] == 1
            assert stream.getvalue().count("command_dropped") == 2  # once per outcome; the counts go on
            request_id = uuid.uuid4().hex
            agent.take_command(
                command("se-got-wg-001", request_id=request_id, issued=agent.now()), command_topic(AGENT)
            )
            await until(lambda: len(tagged(received, request_id)) == 1)
            assert not running.done()
        finally:
            agent.stop()
            await running
