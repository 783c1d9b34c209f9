"""The agent's MQTT outbox (agents/outbox.py) against a real mosquitto with passwords and ACLs: nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.outbox import MqttOutbox
from agents.spool import Spool, Spooled
from probe.aggregator.intake import Outcome
from probe.aggregator.store import ResultStore
from probe.aggregator.subscriber import Subscriber
from probe.aggregator.testing import make_inventory, make_result
from probe.messages import AgentStatus, ResultMessage, result_topic
from probe.mqtt import CREDENTIALS_HINT, Backoff
from probe.service_config import BrokerUrl
from tests.integration.broker import AGGREGATOR_USER, Mosquitto
from tests.integration.mqtt_support import HANG_GUARD, LogLines, Proxy, Recorder, running, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("se-got-wg-001", "se-got-wg-002", "de-fra-wg-001")


def fast() -> Backoff:
    """Reconnect quickly: the tests' outages last seconds, not minutes."""
    return Backoff(initial=0.05, cap=0.5)


def new_store() -> ResultStore:
    return ResultStore(make_inventory(SERVERS), now=time.time)


def result(agent: str, n: int) -> ResultMessage:
    return make_result(SERVERS[n % len(SERVERS)], agent, taken_at=time.time(), round=n, result_id=f"{agent}-{n:04d}")


def online(agent: str) -> AgentStatus:
    now = datetime.now(UTC)
    return AgentStatus(agent=agent, online=True, started_at=now, updated_at=now, interval_seconds=15.0)


def spool_at(path: Path, *, max_bytes: int = 1 << 24) -> Spool:
    return Spool(path, max_bytes=max_bytes, max_age_seconds=86400.0, now=time.time)


@contextlib.asynccontextmanager
async def aggregator(broker: Mosquitto, name: str = "test-aggregator") -> AsyncIterator[tuple[Subscriber, Recorder]]:
    """A subscriber (persistent session) feeding a recording store, subscribed and settled."""
    recorder = Recorder(new_store())
    subscriber = Subscriber(broker.section(AGGREGATOR_USER), name, recorder, settle_seconds=0.3, backoff=fast())
    async with running(subscriber.run()):
        await wait_until(subscriber.settled.is_set, "the subscriber settled")
        yield subscriber, recorder


@pytest.mark.asyncio
async def test_results_arrive_on_their_topics_retained_in_order(broker: Mosquitto, tmp_path: Path) -> None:
    messages = [result("agent-a", n) for n in range(30)]
    with spool_at(tmp_path / "spool.sqlite") as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool)
        async with aggregator(broker) as (_, recorder):
            outbox.put_status(online("agent-a"))
            for message in messages:
                outbox.put_result(message)
            assert outbox.stats().pending == 30  # spooled before anything was sent
            async with running(outbox.run()):
                await wait_until(lambda: len(recorder.result_ids()) >= 30, "30 results at the aggregator")
                await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
                stats = outbox.stats()
                assert (stats.delivered, stats.pending, stats.dropped, stats.connected) == (30, 0, 0, True)
                assert stats.failures == {}
            status = recorder.last_status("agent-a")
            assert status is not None and status.online is False  # cancelled: said goodbye
    assert recorder.result_ids() == [m.result_id for m in messages]
    assert [a.topic for a in recorder.results] == [result_topic("agent-a", m.server) for m in messages]
    assert recorder.store.messages[Outcome.accepted] == 30 + 2  # and two statuses (online, offline)
    assert set(recorder.store.servers[SERVERS[0]].agents) == {"agent-a"}

    # Retained: a subscriber that comes later gets the latest result per relay and the status.
    async with aggregator(broker, "later-aggregator") as (_, later):
        pass
    assert sorted(later.result_ids()) == sorted(m.result_id for m in messages[-3:])
    status = later.last_status("agent-a")
    assert status is not None and status.online is False


@pytest.mark.asyncio
async def test_relays_left_out_of_the_inventory_are_retained_no_more_even_after_a_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # A relay left the agent's inventory: its retained result is deleted on the broker (an empty retained publish,
    # after the results spooled before it), so a later aggregator is not handed it; the other relays' stay. The
    # spool remembers what was published, so a relay removed while the agent was down is cleared at its next start.
    messages = [result("agent-a", n) for n in range(6)]  # two rounds of the three relays
    path = tmp_path / "spool.sqlite"
    with spool_at(path) as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool)
        for message in messages:
            outbox.put_result(message)
        assert outbox.clear_except([SERVERS[0], SERVERS[2]]) == [SERVERS[1]]
        assert outbox.clear_except([SERVERS[0], SERVERS[2]]) == []  # cleared once
        async with aggregator(broker) as (_, recorder), running(outbox.run()):
            await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
            await wait_until(lambda: recorder.store.messages[Outcome.cleared] == 1, "the clear at the aggregator")
            stats = outbox.stats()
            assert (stats.delivered, stats.failures) == (6, {})  # a clear is no result delivered
            # ...and the aggregator forgot the agent's record of that relay at once, not when it went stale.
            assert "agent-a" not in recorder.store.servers[SERVERS[1]].agents
            assert "agent-a" in recorder.store.servers[SERVERS[0]].agents
    assert [a.topic for a in recorder.results][-1] == result_topic("agent-a", SERVERS[1])  # after its results

    async def retained(name: str) -> dict[str, str | None]:
        """What a new subscriber is handed (a new name: a session of its own kept nothing queued for it)."""
        async with aggregator(broker, name) as (_, later):
            pass
        return {a.topic: a.result_id for a in later.results}

    assert await retained("later-aggregator") == {
        result_topic("agent-a", m.server): m.result_id for m in messages[3:] if m.server != SERVERS[1]
    }

    # The agent stops; SERVERS[2] leaves the inventory meanwhile; the agent starts again on the same spool.
    with spool_at(path) as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool)
        assert outbox.clear_except([SERVERS[0]]) == [SERVERS[2]]
        async with running(outbox.run()):
            await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
    assert await retained("restarted-aggregator") == {result_topic("agent-a", SERVERS[0]): messages[3].result_id}


class CountingSpool(Spool):
    """A spool that counts the reads and deletes the outbox asks of it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, max_bytes=1 << 24, max_age_seconds=86400.0, now=time.time)
        self.queries = 0  # peeks that found something after the cursor
        self.acks: list[int] = []  # the size of each batch of ids taken out

    def peek(self, n: int, *, after: int = 0) -> list[Spooled]:
        rows = super().peek(n, after=after)
        self.queries += bool(rows)
        return rows

    def ack(self, ids: Iterable[int]) -> int:
        wanted = list(ids)
        if wanted:
            self.acks.append(len(wanted))
        return super().ack(wanted)


@pytest.mark.asyncio
async def test_results_put_while_the_drain_lingers_go_out_together(broker: Mosquitto, tmp_path: Path) -> None:
    """Issue 8's CPU budget: results that come one after another (as the agent's probes end, ~35 a second at the
    Mullvad list's size) are read from the spool, published and forgotten as one batch, not one by one. Before the
    linger, each put woke the drain: ten reads and ten deletes for ten results."""
    messages = [result("agent-a", n) for n in range(10)]
    spool = CountingSpool(tmp_path / "spool.sqlite")
    with spool:
        # A long linger, so that the test's own pauses between puts (not a claim about timing) stay inside it.
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool, linger=3.0)
        async with aggregator(broker) as (_, recorder), running(outbox.run()):
            await wait_until(lambda: outbox.stats().connected, "connected")
            for message in messages:
                outbox.put_result(message)
                await asyncio.sleep(0.01)
            await wait_until(lambda: len(recorder.result_ids()) >= 10, "10 results at the aggregator")
            await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
            assert (spool.queries, spool.acks) == (1, [10])
            assert outbox.stats().delivered == 10
    assert recorder.result_ids() == [m.result_id for m in messages]


@pytest.mark.asyncio
async def test_a_broker_outage_loses_nothing_and_keeps_order(
    broker: Mosquitto, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    produced: list[str] = []
    with spool_at(tmp_path / "spool.sqlite") as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool, backoff=fast())
        outbox.put_status(online("agent-a"))
        async with aggregator(broker) as (subscriber, recorder), running(outbox.run()):
            for n in range(90):
                message = result("agent-a", n)
                outbox.put_result(message)
                produced.append(message.result_id)
                if n == 20:
                    broker.stop()  # for 40 publish intervals, while results keep coming
                    assert not outbox.stats().connected or outbox.stats().pending > 0
                if n == 60:
                    assert outbox.stats().pending >= 35  # the outage's results wait in the spool
                    broker.start()
                await asyncio.sleep(0.05)
            await wait_until(lambda: set(produced) <= set(recorder.result_ids()), "every result delivered")
            await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
            stats = outbox.stats()
            assert subscriber.connected
    assert recorder.first_arrivals() == produced  # each at least once, first arrivals in order
    duplicates = recorder.duplicates()
    record_property("duplicates", duplicates)
    assert recorder.store.messages[Outcome.duplicate] == duplicates  # the aggregator dropped exactly the re-sends
    assert stats.failures.get("unavailable", 0) >= 1
    assert stats.delivered >= 90
    assert stats.dropped == 0


@pytest.mark.asyncio
async def test_publishes_in_flight_on_a_dying_link_are_sent_again(broker: Mosquitto, tmp_path: Path) -> None:
    proxy = Proxy(broker.port)
    await proxy.start()
    section = broker.section("agent-a").model_copy(update={"url": BrokerUrl.parse(f"mqtt://127.0.0.1:{proxy.port}")})
    produced = [result("agent-a", n) for n in range(30)]
    try:
        with spool_at(tmp_path / "spool.sqlite") as spool:
            outbox = MqttOutbox(section, "agent-a", spool, ack_timeout=1.0, backoff=fast())
            outbox.put_status(online("agent-a"))
            async with aggregator(broker) as (_, recorder), running(outbox.run()):
                for message in produced[:10]:
                    outbox.put_result(message)
                await wait_until(lambda: outbox.stats().pending == 0, "the first results delivered")
                proxy.blackhole()  # the link dies silently: publishes leave, nothing comes back
                for message in produced[10:]:
                    outbox.put_result(message)
                await wait_until(lambda: proxy.swallowed > 0, "publishes lost on the link")
                assert outbox.stats().pending == 20  # sent is not delivered
                # No PUBACK within ack_timeout: the outbox gives up on the link, reconnects, sends them again.
                await wait_until(lambda: outbox.stats().pending == 0, "the rest delivered over a new link")
                await wait_until(lambda: len(recorder.result_ids()) >= 30, "all 30 at the aggregator")
                stats = outbox.stats()
                # The old link's last will went out when the broker dropped it; the reconnect said online again.
                await wait_until(lambda: len(recorder.statuses) >= 3, "online, the will, online again")
                status = recorder.last_status("agent-a")
                assert status is not None and status.online is True
    finally:
        await proxy.close()
    assert recorder.first_arrivals() == [m.result_id for m in produced]
    assert stats.failures.get("unavailable", 0) >= 1
    assert stats.delivered == 30


@pytest.mark.asyncio
async def test_cancel_mid_drain_flushes_then_says_offline(broker: Mosquitto, tmp_path: Path) -> None:
    messages = [result("agent-a", n) for n in range(2000)]
    with spool_at(tmp_path / "spool.sqlite") as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool, flush_seconds=HANG_GUARD / 2)
        outbox.put_status(online("agent-a"))
        async with aggregator(broker) as (_, recorder):
            for message in messages:
                outbox.put_result(message)
            task = asyncio.ensure_future(outbox.run())
            await wait_until(lambda: outbox.stats().delivered > 0, "delivery started")
            pending_at_cancel = outbox.stats().pending
            task.cancel()  # what SIGTERM does to the agent's task tree
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, HANG_GUARD)
            assert task.cancelled()
            stats = outbox.stats()
            await wait_until(lambda: len(recorder.result_ids()) >= 2000, "all results at the aggregator")
            await wait_until(lambda: getattr(recorder.last_status("agent-a"), "online", True) is False, "offline")
    assert pending_at_cancel > 0  # the cancellation came mid-drain...
    assert (stats.pending, stats.delivered, stats.connected) == (0, 2000, False)  # ...and the flush finished it
    assert recorder.result_ids() == [m.result_id for m in messages]


@pytest.mark.asyncio
async def test_cancel_on_a_dead_link_ends_within_the_deadline_and_keeps_the_results(
    broker: Mosquitto, tmp_path: Path
) -> None:
    proxy = Proxy(broker.port)
    await proxy.start()
    section = broker.section("agent-a").model_copy(update={"url": BrokerUrl.parse(f"mqtt://127.0.0.1:{proxy.port}")})
    try:
        with spool_at(tmp_path / "spool.sqlite") as spool:
            outbox = MqttOutbox(section, "agent-a", spool, flush_seconds=1.0)
            outbox.put_status(online("agent-a"))
            task = asyncio.ensure_future(outbox.run())
            await wait_until(lambda: outbox.stats().connected, "connected")
            proxy.blackhole()
            for n in range(10):
                outbox.put_result(result("agent-a", n))
            await wait_until(lambda: proxy.swallowed > 0, "publishes lost on the link")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, HANG_GUARD)  # a dead link does not hold the shutdown up
            assert task.cancelled()
            assert outbox.stats().pending == 10  # kept for the next start
    finally:
        await proxy.close()


@pytest.mark.asyncio
async def test_the_spool_bound_holds_in_a_long_outage_and_drops_are_counted(broker: Mosquitto, tmp_path: Path) -> None:
    first = result("agent-a", 0)
    size = len(first.model_dump_json().encode()) + len(result_topic("agent-a", first.server))
    path = tmp_path / "spool.sqlite"
    with spool_at(path, max_bytes=10 * size + size // 2) as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool, backoff=fast())
        async with aggregator(broker) as (_, recorder):
            broker.stop()
            async with running(outbox.run()):
                produced = []
                for n in range(50):
                    message = result("agent-a", n)
                    outbox.put_result(message)
                    produced.append(message.result_id)
                    assert spool.bytes <= spool.max_bytes
                    await asyncio.sleep(0.01)
                stats = outbox.stats()
                assert (stats.pending, stats.dropped, stats.delivered) == (10, 40, 0)
                broker.start()
                await wait_until(lambda: len(recorder.result_ids()) >= 10, "the kept results delivered")
                await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
            # The newest kept, the oldest dropped first (a re-subscribe after the restart may repeat retained ones).
            assert recorder.first_arrivals() == produced[-10:]
            assert outbox.stats().dropped == 40
    with spool_at(path) as reopened:
        assert reopened.dropped_size == 40  # the count survives a restart


@pytest.mark.asyncio
async def test_a_publish_the_acl_refuses_is_counted_dropped_and_blocks_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    log = LogLines()
    own = [result("agent-a", n) for n in range(4)]
    foreign = [result("agent-b", n) for n in range(2)]  # agent-a's credentials, agent-b's topics
    with spool_at(tmp_path / "spool.sqlite") as spool:
        outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool, log=log)
        async with aggregator(broker) as (_, recorder), running(outbox.run()):
            for message in (own[0], foreign[0], own[1], own[2], foreign[1], own[3]):
                outbox.put_result(message)
            await wait_until(lambda: len(recorder.result_ids()) >= 4, "agent-a's own results delivered")
            await wait_until(lambda: outbox.stats().pending == 0, "the spool emptied")
            stats = outbox.stats()
    assert recorder.result_ids() == [m.result_id for m in own]
    assert stats.failures == {"not_authorized": 2}
    assert stats.delivered == 4
    refusals = log.events("publish refused by the broker; message dropped")
    assert len(refusals) == 1  # once per reason; the count goes on in stats
    assert refusals[0]["reason"] == "not_authorized"
    assert refusals[0]["topic"] == result_topic("agent-b", foreign[0].server)


@pytest.mark.asyncio
async def test_a_wrong_password_is_logged_as_an_error_that_says_what_to_check(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # mosquitto answers a wrong password with 0x87 not_authorized, which alone reads like an ACL problem.
    section = broker.wrong_section("agent-a", tmp_path)
    log = LogLines()
    with spool_at(tmp_path / "spool.sqlite") as spool:
        outbox = MqttOutbox(section, "agent-a", spool, log=log, backoff=fast())
        outbox.put_result(result("agent-a", 0))
        async with running(outbox.run()):
            await wait_until(lambda: outbox.stats().failures.get("not_authorized", 0) >= 2, "two refused connects")
        assert outbox.stats().pending == 1  # kept for when the credentials are fixed
    (said,) = [line for line in log.lines if line[1] == "broker unavailable; results wait in the spool"]
    level, _, fields = said
    assert level == logging.ERROR and fields["hint"] == CREDENTIALS_HINT and "not_authorized" in str(fields["error"])
    assert "not-the-password" not in repr(log.lines)


# -- a separate agent process: last will and SIGTERM ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def agent_process(
    broker: Mosquitto, tmp_path: Path, *, count: int, interval: float
) -> AsyncIterator[asyncio.subprocess.Process]:
    credentials = broker.users.get("agent-a") or broker.add_user("agent-a")
    config = {
        "mqtt": {"url": broker.url, "username": "agent-a", "password_file": str(credentials.password_file)},
        "agent": "agent-a",
        "servers": list(SERVERS),
        "count": count,
        "interval": interval,
        "spool": str(tmp_path / "agent-spool.sqlite"),
        "flush_seconds": 3.0,
    }
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps(config))
    with (tmp_path / "agent.stderr").open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.outbox_process", str(config_file),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()  # our own child, by its PID
            await process.wait()


async def read_until(process: asyncio.subprocess.Process, word: str) -> None:
    assert process.stdout is not None

    async def scan() -> None:
        assert process.stdout is not None
        while (line := await process.stdout.readline()) and line.split()[0].decode() != word:
            pass

    await asyncio.wait_for(scan(), HANG_GUARD)


@pytest.mark.asyncio
async def test_sigkill_leaves_the_last_will_offline_and_retained(broker: Mosquitto, tmp_path: Path) -> None:
    async with aggregator(broker) as (_, recorder):
        async with agent_process(broker, tmp_path, count=100_000, interval=0.05) as process:
            await wait_until(lambda: len(recorder.result_ids()) >= 5, "the agent's first results")
            status = recorder.last_status("agent-a")
            assert status is not None and status.online is True
            process.send_signal(signal.SIGKILL)
            await process.wait()
            assert process.returncode == -signal.SIGKILL
        await wait_until(lambda: recorder.store.agents["agent-a"].status is not None, "a status")
        await wait_until(lambda: getattr(recorder.last_status("agent-a"), "online", True) is False, "the last will")
    async with aggregator(broker, "later-aggregator") as (_, later):
        pass
    status = later.last_status("agent-a")
    assert status is not None and status.online is False  # retained: a restarted aggregator sees it too


@pytest.mark.asyncio
async def test_sigterm_flushes_says_offline_and_exits_0(broker: Mosquitto, tmp_path: Path) -> None:
    async with aggregator(broker) as (_, recorder):
        async with agent_process(broker, tmp_path, count=40, interval=0.0) as process:
            await read_until(process, "done")
            done_at = datetime.now(UTC)
            process.send_signal(signal.SIGTERM)  # at once: results may still be in the spool, unsent
            assert await asyncio.wait_for(process.wait(), HANG_GUARD) == 0
        await wait_until(lambda: len(set(recorder.result_ids())) >= 40, "all 40 results")
        await wait_until(lambda: getattr(recorder.last_status("agent-a"), "online", True) is False, "offline")
    assert recorder.first_arrivals() == [f"agent-a-{n}" for n in range(40)]
    status = recorder.last_status("agent-a")
    assert status is not None and status.updated_at is not None
    assert status.updated_at >= done_at  # said at shutdown, not the will registered at connect
    with spool_at(tmp_path / "agent-spool.sqlite") as spool:
        assert spool.count == 0


@pytest.mark.asyncio
async def test_sigterm_without_a_broker_keeps_results_for_the_next_start(broker: Mosquitto, tmp_path: Path) -> None:
    async with aggregator(broker) as (_, recorder):
        broker.stop()
        async with agent_process(broker, tmp_path, count=25, interval=0.0) as process:
            await read_until(process, "done")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), HANG_GUARD) == 0
        with spool_at(tmp_path / "agent-spool.sqlite") as spool:
            assert spool.count == 25
            broker.start()
            outbox = MqttOutbox(broker.section("agent-a"), "agent-a", spool)  # the next start of the agent
            async with running(outbox.run()):
                await wait_until(lambda: len(recorder.result_ids()) >= 25, "the kept results")
    assert recorder.first_arrivals() == [f"agent-a-{n}" for n in range(25)]
