"""`probe aggregator` as a real process behind a real mosquitto (password file, per-agent ACL), no lab and no root:
hand-made and hypothesis-generated bad payloads published with an agent's own credentials are counted by reason
while the aggregator keeps serving, and a restarted aggregator has the fleet's health back from the retained
messages alone, with a real `probe agent` against a simulated fleet (`probe sim up`) frozen so no new round can
come."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from probe.aggregator.intake import MAX_PAYLOAD, Outcome
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import make_result, make_status, payload
from probe.inventory import load_inventory
from probe.messages import result_topic, status_topic
from probe.results import StageName
from tests.integration.broker import Mosquitto
from tests.integration.service_process import (
    HANG_GUARD,
    AgentProcess,
    AggregatorProcess,
    agent_up,
    messages,
    server_up,
    service_tables,
    stop_process,
)

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "inventory" / "mullvad-app-relays-sample.json"
AGENT = "agent-x"  # a broker user of its own: the ACL lets it publish only under its own topics
OUTCOMES = [outcome.value for outcome in Outcome]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    """Poll until `condition()` is truthy and return it; fail naming `what` (a hang guard, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout:g} s: {what}")
        time.sleep(0.1)


class Publisher:
    """A plain MQTT v5 client with an agent's credentials: publishes and waits for each PUBACK, refusals raised."""

    def __init__(self, broker: Mosquitto, user: str) -> None:
        credentials = broker.users.get(user) or broker.add_user(user)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=paho.MQTTv5)
        self.client.username_pw_set(user, credentials.password_file.read_text().strip())
        self.refused: list[int] = []
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if reason.value >= 0x80:
            self.refused.append(reason.value)

    def publish(self, topic: str, body: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, body, qos=1, retain=retain)
        info.wait_for_publish(timeout=HANG_GUARD)
        assert info.is_published(), f"no PUBACK for {topic}"
        assert not self.refused, f"the broker refused a publish: {self.refused}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def aggregator(tmp_path: Path, broker: Mosquitto) -> Iterator[AggregatorProcess]:
    process = AggregatorProcess(tmp_path / "aggregator", broker, inventory=SAMPLE, interval=15.0)
    process.start()
    try:
        wait_for(lambda: any(e.get("event") == "judging" for e in process.events()), "the aggregator judging")
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.tail()


@pytest.fixture
def publisher(broker: Mosquitto) -> Iterator[Publisher]:
    client = Publisher(broker, AGENT)
    try:
        yield client
    finally:
        client.close()


def counts(aggregator: AggregatorProcess) -> dict[str, float]:
    metrics = aggregator.metrics()
    return {outcome: messages(metrics, outcome) for outcome in OUTCOMES}


def wait_counted(aggregator: AggregatorProcess, before: dict[str, float], sent: int) -> dict[str, int]:
    """Once the aggregator has counted `sent` more messages than `before`: how many of each outcome."""

    def counted() -> dict[str, float] | None:
        now = counts(aggregator)
        return now if sum(now.values()) >= sum(before.values()) + sent else None

    now = wait_for(counted, f"{sent} messages counted")
    delta = {outcome: int(now[outcome] - before[outcome]) for outcome in OUTCOMES}
    return {outcome: n for outcome, n in delta.items() if n}


def still_serving(aggregator: AggregatorProcess) -> None:
    assert aggregator.running, aggregator.tail()
    status, body = aggregator.get("/healthz")
    assert status in (200, 503) and json.loads(body)["status"], body  # answers, whatever it says of the data
    fleet = aggregator.json("/api/v1/servers")
    assert fleet["servers"] == len(load_inventory(SAMPLE).relays)


def test_hand_made_bad_messages_are_counted_by_reason_logged_once_and_stop_nothing(
    aggregator: AggregatorProcess, publisher: Publisher
) -> None:
    now = time.time()
    first, second = "se-got-wg-001", "se-got-wg-002"
    good = make_result(first, AGENT, taken_at=now, result_id="x-good-1")
    newer = make_result(second, AGENT, taken_at=now, result_id="x-good-2", fail=StageName.forward)
    other_schema = json.loads(payload(make_result(first, AGENT, taken_at=now, result_id="x-v2")))
    other_schema["schema_version"] = 2
    oversized = make_result(first, AGENT, taken_at=now, result_id="x-big").model_copy(
        update={"labels": {"padding": "x" * MAX_PAYLOAD}}
    )
    impostor = make_result(first, "agent-y", taken_at=now, result_id="y-1")  # another agent's payload on our topic
    elsewhere = make_result(second, AGENT, taken_at=now, result_id="x-elsewhere")  # another server's, on first's
    stranger = make_result("xx-nowhere-wg-001", AGENT, taken_at=now, result_id="x-stranger")
    bad_status = make_status("agent-y", at=now)
    topic = result_topic(AGENT, first)
    sent = [
        (topic, payload(good)),
        (topic, payload(good)),  # an at-least-once re-send: the same result_id
        (topic, json.dumps(other_schema).encode()),
        (topic, payload(oversized)),
        (topic, payload(impostor)),
        (topic, payload(elsewhere)),
        (topic, b"\x00\xffnot json"),
        (topic, b'{"server": "se-got-wg-001"}'),
        (result_topic(AGENT, stranger.server), payload(stranger)),
        (status_topic(AGENT), b"[1, 2, 3]"),
        (status_topic(AGENT), payload(bad_status)),
        (result_topic(AGENT, second), payload(newer)),  # and a good one after all that: the consumer is not stuck
    ]
    before = counts(aggregator)
    for message_topic, body in sent:
        publisher.publish(message_topic, body)
    assert wait_counted(aggregator, before, len(sent)) == {
        "accepted": 2,
        "duplicate": 1,
        "unknown_schema": 1,
        "oversized": 1,
        "topic_mismatch": 3,
        "malformed": 3,
        "unknown_server": 1,
    }
    still_serving(aggregator)
    detail = aggregator.json(f"/api/v1/servers/{second}")
    assert [(a["agent"], a["result_id"], a["vote"]) for a in detail["agents"]] == [(AGENT, "x-good-2", "failing")]
    assert aggregator.json(f"/api/v1/servers/{first}")["agents"][0]["result_id"] == "x-good-1"
    dropped = [e for e in aggregator.events() if e.get("event") == "message dropped"]
    # Logged once per sender and reason, whatever the count; every detail one printable line.
    assert sorted(e["reason"] for e in dropped) == sorted(
        ["duplicate", "unknown_schema", "oversized", "topic_mismatch", "malformed", "unknown_server"]
    )
    assert {e["sender"] for e in dropped} == {AGENT}
    assert all(str(e["detail"]).isprintable() for e in dropped)


# -- hypothesis: whatever an agent's credentials can publish -----------------------------------------------------

SERVERS = st.sampled_from(["se-got-wg-001", "au-syd-wg-101", "xx-nowhere-wg-001", "se-got-wg-001.", "-"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=40,
)
VALID = json.loads(
    payload(make_result("se-got-wg-001", AGENT, taken_at=1_800_000_000.0, ports=(51820, 53), result_id="x-fuzz"))
)


def mutated(key: str, value: Any, drop: bool) -> Any:
    """A valid result with one field replaced by any JSON, or left out."""
    message = dict(VALID)
    if drop:
        message.pop(key)
    else:
        message[key] = value
    return message


PAYLOADS = st.one_of(
    st.binary(max_size=3000),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.builds(mutated, st.sampled_from(sorted(VALID)), JSON, st.booleans()).map(lambda m: json.dumps(m).encode()),
)


def test_hypothesis_payloads_on_the_results_and_status_topics_are_counted_as_the_store_would(
    aggregator: AggregatorProcess, publisher: Publisher
) -> None:
    # The store in this process is the model: the real aggregator, behind the real broker, must count each message
    # as the store classifies it (same order: one publisher, QoS 1, one connection), and survive every one.
    model = ResultStore(load_inventory(SAMPLE), now=time.time)
    published: list[tuple[str, bytes]] = []

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=PAYLOADS, server=SERVERS, status=st.booleans())
    def publish(body: bytes, server: str, status: bool) -> None:
        topic = status_topic(AGENT) if status else result_topic(AGENT, server)
        publisher.publish(topic, body)
        published.append((topic, body))

    before = counts(aggregator)
    publish()
    expected: Counter[str] = Counter()
    for topic, body in published:
        ingest = model.ingest_status if "/agents/" in topic else model.ingest_result
        expected[ingest(body, topic).outcome.value] += 1
    assert wait_counted(aggregator, before, len(published)) == dict(expected)
    assert len(expected) >= 3, expected  # the strategies reach several reasons, not one
    still_serving(aggregator)


# -- a restart: the fleet's health back from the retained messages alone ------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    """`probe sim up` with three relays, se-got-wg-002's NAT broken; stopped by PID."""
    directory = tmp_path / "sim"
    proc = subprocess.Popen(
        [sys.executable, "-m", "probe", "sim", "up", "--relays", "3", "--dir", str(directory), *NAT_FAULT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = b""
    while not seen.startswith(b"ready") and b"\nready" not in seen:
        line = proc.stdout.readline()
        assert line, f"probe sim up ended before it was ready: {seen!r}"
        seen += line
    try:
        yield directory
    finally:
        stop_process(proc)
        proc.stdout.close()


NAT_FAULT = ("--fault", "se-got-wg-002:nat")
FAST_PROBE = "\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
SIM_AGENT = "sim-agent"  # `probe sim up`'s first agent; its broker user must be named alike (the ACL's %u)
RESTART_INTERVAL = 10.0  # long enough that a frozen agent's results stay fresh (3 intervals) through a restart


def sim_agent(tmp_path: Path, broker: Mosquitto, fleet: Path) -> AgentProcess:
    """`probe agent` on the simulated fleet's first agent config, publishing to `broker` every 10 s (not started)."""
    config = fleet / "agent-service.toml"
    config.write_text(
        (fleet / "agent.toml").read_text() + FAST_PROBE + service_tables(broker, SIM_AGENT, fleet, interval=10.0)
    )
    return AgentProcess(SIM_AGENT, config, tmp_path / "agent.log")


def states(aggregator: AggregatorProcess, names: list[str]) -> dict[str, float | None]:
    metrics = aggregator.metrics()
    return {name: server_up(metrics, name) for name in names}


def test_a_restarted_aggregator_has_the_health_back_from_retained_messages_without_a_new_round(
    tmp_path: Path, broker: Mosquitto, fleet: Path
) -> None:
    names = ["se-got-wg-001", "se-got-wg-002", "se-got-wg-003"]
    agent = sim_agent(tmp_path, broker, fleet)
    first = AggregatorProcess(tmp_path / "first", broker, inventory=fleet / "relays.json", interval=RESTART_INTERVAL)
    agent.start()
    first.start()
    try:
        wanted = {"se-got-wg-001": 1.0, "se-got-wg-002": 0.0, "se-got-wg-003": 1.0}
        wait_for(lambda: states(first, names) == wanted, "every relay judged from the agent's first round")
        assert agent.process is not None
        agent.process.send_signal(signal.SIGSTOP)  # frozen: from here on no result can be published
        try:
            held = {name: first.json(f"/api/v1/servers/{name}")["agents"][0]["result_id"] for name in names}
            assert first.stop() == 0, first.tail()
            second = AggregatorProcess(tmp_path / "second", broker, inventory=first.inventory, interval=10.0)
            second.start()
            try:
                wait_for(lambda: states(second, names) == wanted, "the health back after the restart")
                again = {name: second.json(f"/api/v1/servers/{name}")["agents"][0]["result_id"] for name in names}
                assert again == held  # the same results: recovered, not measured anew
                agents = second.json("/api/v1/agents")["agents"]
                assert [(a["name"], a["state"]) for a in agents] == [(SIM_AGENT, "ok")]  # its retained status too
                # What came back is the broker's retained burst: every relay's result and the agent's status.
                burst = wait_for(
                    lambda: [e for e in second.events() if e.get("event") == "retained state received"],
                    "the retained burst settled",
                )
                assert burst[0]["retained"] >= len(names) + 1, second.tail()
            finally:
                assert second.stop() == 0, second.tail()
        finally:
            if agent.process is not None:
                agent.process.send_signal(signal.SIGCONT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nagent log:\n{agent.tail()}\naggregator log:\n{first.tail()}") from None
    finally:
        first.stop()
        assert agent.stop() == 0, agent.tail()


def test_a_broker_restart_leaves_every_verdict_and_the_agent_as_they_were(
    tmp_path: Path, broker: Mosquitto, fleet: Path
) -> None:
    # Real processes end to end: mosquitto, stopped (SIGTERM: it publishes every agent's last will as it goes, keeps
    # them retained and sends them again once back) and started again. The broken relay stays down, the agent
    # online, and the aggregator says meanwhile that it lost the broker.
    names = ["se-got-wg-001", "se-got-wg-002", "se-got-wg-003"]
    agent = sim_agent(tmp_path, broker, fleet)
    aggregator = AggregatorProcess(tmp_path / "agg", broker, inventory=fleet / "relays.json", interval=10.0)
    agent.start()
    aggregator.start()
    wanted = {"se-got-wg-001": 1.0, "se-got-wg-002": 0.0, "se-got-wg-003": 1.0}
    seen: list[tuple[dict[str, float | None], float | None, float | None]] = []

    def look() -> tuple[dict[str, float | None], float | None, float | None]:
        metrics = aggregator.metrics()
        now = (
            {name: server_up(metrics, name) for name in names},
            agent_up(metrics, SIM_AGENT),
            metrics.get("wgprobe_aggregator_broker_connected"),
        )
        seen.append(now)
        return now

    try:
        wait_for(lambda: look() == (wanted, 1.0, 1.0), "every relay judged, the agent up, the broker connected")
        seen.clear()
        broker.stop()
        wait_for(lambda: look()[2] == 0.0, "the aggregator says it lost the broker")
        broker.start()
        wait_for(lambda: look()[2] == 1.0, "the aggregator back on the broker")
        # The retained wills come with the resubscribe; the agent comes back within its backoff and says online.
        wait_for(lambda: agent.log.read_text().count('"connected to the broker"') >= 2, "the agent back")
        wait_for(lambda: look() == (wanted, 1.0, 1.0), "all as it was")
        held = [e for e in aggregator.events() if e.get("event") == "last wills held"]
        assert held and held[0]["agents"] == 1, aggregator.tail()
        assert all(verdicts == wanted and agent_state == 1.0 for verdicts, agent_state, _ in seen), seen
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nagent log:\n{agent.tail()}\naggregator log:\n{aggregator.tail()}") from None
    finally:
        assert aggregator.stop() == 0, aggregator.tail()
        assert agent.stop() == 0, agent.tail()
