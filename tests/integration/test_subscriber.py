"""The aggregator's subscriber (probe/aggregator/subscriber.py) against a real mosquitto: results and statuses into
a real ResultStore, bad messages counted without stopping, state recovered from retained messages after a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from probe.aggregator import store as store_module
from probe.aggregator.health import AgentState, HealthState
from probe.aggregator.intake import MAX_PAYLOAD, Ingested, Outcome
from probe.aggregator.store import ResultStore
from probe.aggregator.subscriber import FLAPPING_EVENT, Subscriber
from probe.aggregator.testing import make_inventory, make_result, make_status, payload
from probe.messages import ResultMessage, result_topic, status_topic
from probe.mqtt import Backoff, BrokerError, LastWill, connect
from probe.results import StageName
from tests.integration.broker import AGGREGATOR_USER, Mosquitto
from tests.integration.mqtt_support import HANG_GUARD, LogLines, Recorder, running, wait_until

pytestmark = pytest.mark.integration

SERVERS = ("se-got-wg-001", "se-got-wg-002", "de-fra-wg-001")


def new_store() -> ResultStore:
    return ResultStore(make_inventory(SERVERS), now=time.time)


def subscriber(broker: Mosquitto, store: Recorder | ResultStore, log: LogLines | None = None) -> Subscriber:
    return Subscriber(
        broker.section(AGGREGATOR_USER),
        "test-aggregator",
        store,
        log=log,
        settle_seconds=0.5,
        backoff=Backoff(initial=0.05, cap=0.5),
    )


async def publish(broker: Mosquitto, agent: str, *messages: tuple[str, bytes]) -> None:
    """Publish as `agent` (its own broker user), retained, QoS 1, each acknowledged."""
    async with connect(broker.section(agent), f"test-{agent}") as connection:
        for topic, body in messages:
            await connection.publish(topic, body, retain=True, timeout=HANG_GUARD)


def fleet_round(agent: str, n: int, *, fail: StageName | dict[int, StageName] | None = None) -> list[tuple[str, bytes]]:
    """An agent's status and its result on every relay, as one round publishes them."""
    now = time.time()
    messages: list[tuple[str, bytes]] = [(status_topic(agent), payload(make_status(agent, at=now)))]
    for server in SERVERS:
        message = make_result(server, agent, taken_at=now, round=n, result_id=f"{agent}-{server}-{n}", fail=fail)
        messages.append((result_topic(agent, server), payload(message)))
    return messages


class SettleWatch(Recorder):
    """A recorder that notes, for each message, whether the subscriber already said the retained state was in."""

    consumer: Subscriber | None = None
    after_settled: int = 0

    def ingest_result(self, payload: bytes | bytearray, topic: str) -> Ingested:
        self._note()
        return super().ingest_result(payload, topic)

    def ingest_status(self, payload: bytes | bytearray, topic: str, *, live: bool = True) -> Ingested:
        self._note()
        return super().ingest_status(payload, topic, live=live)

    def _note(self) -> None:
        if self.consumer is not None and self.consumer.settled.is_set():
            self.after_settled += 1


@pytest.mark.asyncio
async def test_results_and_statuses_feed_the_store(broker: Mosquitto) -> None:
    store = new_store()
    consumer = subscriber(broker, store)
    async with running(consumer.run()):
        await wait_until(consumer.settled.is_set, "subscribed and settled")
        await publish(broker, "agent-a", *fleet_round("agent-a", 1, fail={51820: StageName.forward}))
        await wait_until(lambda: store.messages[Outcome.accepted] == 4, "three results and a status")
        assert consumer.connected
    store.refresh()
    for server in SERVERS:
        record = store.servers[server]
        assert record.agents["agent-a"].newest.result_id == f"agent-a-{server}-1"
        assert record.state is HealthState.down  # the only agent, with a good control check, sees it failing
        assert record.last_failure is not None and record.last_failure.stage is StageName.forward
    status = store.agents["agent-a"].status
    assert status is not None and status.online


@pytest.mark.asyncio
async def test_an_agent_clock_is_read_from_its_live_statuses_not_from_a_retained_one(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker hands a retained status out at every subscription, whenever it was published: a status an hour old
    # must not read as a clock an hour behind. What agent-c publishes while we are subscribed does say its clock.
    monkeypatch.setattr(store_module, "REDELIVERY_WINDOW", 0.0)  # nothing queued for us here: measure at once
    await publish(broker, "agent-c", (status_topic("agent-c"), payload(make_status("agent-c", at=time.time() - 3600))))
    store = new_store()
    consumer = subscriber(broker, store)
    async with running(consumer.run()):
        await wait_until(consumer.settled.is_set, "subscribed and settled")
        assert store.agents["agent-c"].status is not None  # the retained one came
        assert store.agents["agent-c"].clock_offset is None
        for _ in range(2):
            ahead = payload(make_status("agent-c", at=time.time() + 120))
            await publish(broker, "agent-c", (status_topic("agent-c"), ahead))
        await wait_until(lambda: store.agents["agent-c"].clock_off, "two live statuses two minutes ahead")
    offset = store.agents["agent-c"].clock_offset
    assert offset is not None and 115 < offset <= 120


@pytest.mark.asyncio
async def test_bad_messages_are_counted_logged_once_per_sender_and_reason_and_stop_nothing(
    broker: Mosquitto,
) -> None:
    log = LogLines()
    store = new_store()
    consumer = subscriber(broker, store, log)
    now = time.time()
    good = make_result(SERVERS[0], "agent-b", taken_at=now, result_id="agent-b-good")
    other_schema = json.loads(payload(make_result(SERVERS[1], "agent-b", taken_at=now)))
    other_schema["schema_version"] = 99
    stranger = make_result("xx-nowhere-wg-999", "agent-b", taken_at=now)
    impostor = make_result(SERVERS[2], "agent-a", taken_at=now)  # agent-a's payload on agent-b's topic
    topic = result_topic("agent-b", SERVERS[0])
    bad = [
        (topic, b"not json at all"),
        (topic, b"\xff\xfe\x00garbage"),
        (result_topic("agent-b", SERVERS[1]), b'{"server": "se-got-wg-002"}'),
        (status_topic("agent-b"), b"[1, 2, 3]"),
        (topic, b"x" * (MAX_PAYLOAD + 1)),
        (result_topic("agent-b", SERVERS[1]), json.dumps(other_schema).encode()),
        (result_topic("agent-b", stranger.server), payload(stranger)),
        (result_topic("agent-b", SERVERS[2]), payload(impostor)),
    ]
    async with running(consumer.run()):
        await wait_until(consumer.settled.is_set, "subscribed and settled")
        await publish(broker, "agent-b", *bad, (topic, payload(good)))
        await wait_until(lambda: "agent-b" in store.servers[SERVERS[0]].agents, "the good message after the bad")
        await publish(broker, "agent-b", (topic, payload(good)))  # sent again: QoS 1 at work, not a fault
        await wait_until(lambda: store.messages[Outcome.duplicate] == 1, "the re-send")
        assert consumer.connected
        assert consumer.received == len(bad) + 2
    counts = {outcome: n for outcome, n in store.messages.items() if n}
    assert counts == {
        Outcome.malformed: 4,
        Outcome.oversized: 1,
        Outcome.unknown_schema: 1,
        Outcome.unknown_server: 1,
        Outcome.topic_mismatch: 1,
        Outcome.accepted: 1,
        Outcome.duplicate: 1,
    }
    dropped = log.events("message dropped")
    assert sorted(str(fields["reason"]) for fields in dropped) == [
        "duplicate", "malformed", "oversized", "topic_mismatch", "unknown_schema", "unknown_server",
    ]  # fmt: skip
    levels = {str(fields["reason"]): level for level, name, fields in log.lines if name == "message dropped"}
    assert levels.pop("duplicate") == logging.INFO and set(levels.values()) == {logging.WARNING}
    assert {fields["sender"] for fields in dropped} == {"agent-b"}
    for fields in dropped:
        assert str(fields["detail"]).isprintable()


@pytest.mark.asyncio
async def test_a_restarted_aggregator_has_the_fleet_back_when_settled(broker: Mosquitto) -> None:
    await publish(broker, "agent-a", *fleet_round("agent-a", 1))
    await publish(broker, "agent-b", *fleet_round("agent-b", 1, fail=StageName.handshake))
    watch = SettleWatch(new_store())
    consumer = watch.consumer = subscriber(broker, watch)
    async with running(consumer.run()):
        await wait_until(consumer.settled.is_set, "the retained burst settled")
        assert watch.store.messages[Outcome.accepted] == 8  # every retained result and status
    assert watch.after_settled == 0  # and none of them came after `settled`: refresh() may judge from here on
    store = watch.store
    store.refresh()
    for server in SERVERS:
        assert set(store.servers[server].agents) == {"agent-a", "agent-b"}
        # One agent sees it up, one failing: no quorum of two for down. Judged on both, not on the first alone.
        assert store.servers[server].state is HealthState.degraded
    assert set(store.agents) == {"agent-a", "agent-b"}


@pytest.mark.asyncio
async def test_the_persistent_session_keeps_what_came_while_the_aggregator_was_away(broker: Mosquitto) -> None:
    first = Recorder(new_store())
    consumer = subscriber(broker, first)
    async with running(consumer.run()):
        await wait_until(consumer.settled.is_set, "subscribed")
    # Away: five rounds on one relay. Retained keeps only the last; the session queues all five.
    rounds: list[ResultMessage] = [
        make_result(SERVERS[0], "agent-a", taken_at=time.time(), round=n, result_id=f"agent-a-{n}") for n in range(5)
    ]
    await publish(broker, "agent-a", *((result_topic("agent-a", SERVERS[0]), payload(m)) for m in rounds))
    again = Recorder(new_store())
    consumer = subscriber(broker, again)  # same name: same client id, same session
    async with running(consumer.run()):
        await wait_until(lambda: len(set(again.result_ids())) == 5, "every round, not only the retained one")
    assert again.first_arrivals() == [m.result_id for m in rounds]
    assert again.store.servers[SERVERS[0]].agents["agent-a"].newest.round == 4


@pytest.mark.asyncio
async def test_two_aggregators_with_one_name_are_told_they_share_a_client_id(broker: Mosquitto) -> None:
    # The broker drops the older of two clients with one client id, with a reason code that does not say so
    # (mosquitto 2.0: "Unspecified error"): both take turns for ever unless the log says why.
    logs = LogLines(), LogLines()
    first, second = (subscriber(broker, new_store(), log) for log in logs)
    async with running(first.run()), running(second.run()):
        await wait_until(lambda: all(log.events(FLAPPING_EVENT) for log in logs), "both told")
    for log in logs:
        (told,) = log.events(FLAPPING_EVENT)  # once per run of drops, not at every drop
        assert told["client_id"] == "wgprobe-test-aggregator" and "client id" in str(told["hint"])


@pytest.mark.asyncio
async def test_one_aggregator_with_a_steady_connection_is_not_told_so(broker: Mosquitto) -> None:
    log = LogLines()
    consumer = subscriber(broker, new_store(), log)
    async with running(consumer.run()):
        await wait_until(consumer.settled.is_set, "subscribed")
        await asyncio.sleep(0.2)
        assert log.events(FLAPPING_EVENT) == []


@pytest.mark.asyncio
async def test_a_broker_unreachable_from_the_start_shows_as_not_connected(broker: Mosquitto) -> None:
    # Not an absent series: an alert on wgprobe_aggregator_broker_connected == 0 must see an aggregator that never
    # got through.
    store = new_store()
    assert store.broker_connected is None  # no broker at all (probe serve): the series is absent
    broker.stop()
    consumer = subscriber(broker, store)
    async with running(consumer.run()):
        await wait_until(lambda: store.broker_connected is False, "told it is not connected")
        broker.start()
        await wait_until(lambda: store.broker_connected is True, "subscribed once the broker is up")


async def _agent_online(broker: Mosquitto, agent: str, connects: list[str], allowed: asyncio.Event) -> None:
    """An agent as the outbox keeps it: connected with a last will that says offline, its status online on every
    (re)connect, reconnecting when the broker goes away (once `allowed`)."""
    will = LastWill(status_topic(agent), payload(make_status(agent, at=time.time(), online=False)))
    while True:
        await allowed.wait()
        try:
            async with connect(broker.section(agent), f"live-{agent}", will=will) as connection:
                await connection.publish(
                    status_topic(agent), payload(make_status(agent, at=time.time())), retain=True, timeout=HANG_GUARD
                )
                connects.append(agent)
                await connection.wait_closed()
        except BrokerError:
            pass
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_broker_restart_marks_no_agent_offline_and_moves_no_verdict(broker: Mosquitto) -> None:
    # mosquitto publishes every connected client's last will as it shuts down (at once, whatever will delay was
    # asked for), keeps them retained and hands them out again after its restart. Read as they stand, every agent
    # would go offline and every relay unknown, resolving a `down` relay's alert, until the agents reconnect.
    store, log = new_store(), LogLines()
    recorder = Recorder(store)
    consumer = subscriber(broker, recorder, log)
    connects: list[str] = []
    allowed = asyncio.Event()
    allowed.set()
    seen: set[tuple[HealthState, ...]] = set()
    offline: set[str] = set()

    def watch() -> None:
        store.refresh()
        seen.add(tuple(store.servers[name].state for name in SERVERS))
        offline.update(name for name, info in store.agents.items() if info.state is AgentState.offline)

    async def watching() -> None:
        while True:
            watch()
            await asyncio.sleep(0.01)

    async with (
        running(consumer.run()),
        running(_agent_online(broker, "agent-a", connects, allowed)),
        running(_agent_online(broker, "agent-b", connects, allowed)),
        running(watching()),
    ):
        await wait_until(lambda: len(connects) == 2 and consumer.settled.is_set(), "both agents connected")
        await publish(broker, "agent-a", *fleet_round("agent-a", 1, fail=StageName.forward)[1:])
        await publish(broker, "agent-b", *fleet_round("agent-b", 1, fail=StageName.forward)[1:])
        await wait_until(lambda: store.servers[SERVERS[0]].state is HealthState.down, "the relays down")
        seen.clear()
        allowed.clear()  # the agents come back only after the aggregator has had the retained wills again
        broker.stop()
        await wait_until(lambda: not consumer.connected, "the aggregator told the broker is gone")
        assert store.broker_connected is False
        del connects[:]
        mark = len(recorder.statuses)
        broker.start()

        def redelivered() -> set[str]:  # agents whose retained will came again after the restart
            return {topic for topic, body in recorder.statuses[mark:] if b'"online":false' in body}

        await wait_until(lambda: len(redelivered()) == 2, "the broker's retained wills, again")
        allowed.set()
        await wait_until(lambda: len(connects) == 2, "the agents back")
    watch()
    assert seen == {(HealthState.down,) * len(SERVERS)}
    assert offline == set()
    held = log.events("last wills held")
    assert held and held[0]["agents"] == 2, log.lines
    assert len(held) == 1, log.lines
