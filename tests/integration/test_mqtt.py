"""probe/mqtt.py against a real mosquitto: reason codes seen, foreign errors mapped, a connection's end noticed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from probe.errors import UnavailableError
from probe.messages import result_topic, status_topic
from probe.mqtt import (
    CREDENTIALS_HINT,
    BrokerRefused,
    BrokerUnavailable,
    BufferedReads,
    LastWill,
    connect,
    connect_hint,
)
from tests.integration.broker import AGGREGATOR_USER, Mosquitto
from tests.integration.mqtt_support import HANG_GUARD

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_a_publish_the_acl_refuses_is_seen_with_its_reason_code(broker: Mosquitto) -> None:
    async with connect(broker.section("agent-a"), "test-agent-a") as connection:
        await connection.publish(result_topic("agent-a", "se-got-wg-001"), b"{}", timeout=HANG_GUARD)
        with pytest.raises(BrokerRefused) as refused:
            await connection.publish(result_topic("agent-b", "se-got-wg-001"), b"{}", timeout=HANG_GUARD)
        assert refused.value.code == 0x87
        assert refused.value.reason == "not_authorized"
        assert connect_hint(refused.value) is None  # the ACL's, on a publish: not the credentials
        # The connection goes on: a refusal is about one message.
        await connection.publish(status_topic("agent-a"), b"{}", retain=True, timeout=HANG_GUARD)


@pytest.mark.asyncio
async def test_retained_messages_reach_a_later_subscriber(broker: Mosquitto) -> None:
    async with connect(broker.section("agent-a"), "test-agent-a") as connection:
        await connection.publish(result_topic("agent-a", "s1"), b"first", retain=True, timeout=HANG_GUARD)
        await connection.publish(result_topic("agent-a", "s1"), b"latest", retain=True, timeout=HANG_GUARD)
    async with connect(broker.section(AGGREGATOR_USER), "test-reader") as reader:
        await reader.subscribe(["wgprobe/v1/results/+/+"])
        message = await reader.receive(HANG_GUARD)
    assert message is not None
    assert (message.topic, message.payload, message.retain) == (result_topic("agent-a", "s1"), b"latest", True)


@pytest.mark.asyncio
async def test_wrong_password_is_refused_with_its_reason(broker: Mosquitto, tmp_path: Path) -> None:
    section = broker.wrong_section("agent-a", tmp_path)
    with pytest.raises(BrokerRefused) as refused:
        async with connect(section, "test-agent-a"):
            pass
    assert refused.value.reason == "not_authorized"  # mosquitto 2.0 answers a wrong password with 0x87, not 0x86
    assert connect_hint(refused.value) == CREDENTIALS_HINT  # the reason code alone reads like the ACL's
    assert "not-the-password" not in str(refused.value)


@pytest.mark.asyncio
async def test_no_broker_is_unavailable_not_a_traceback(broker: Mosquitto) -> None:
    section = broker.section("agent-a")
    broker.stop()
    with pytest.raises(BrokerUnavailable) as unavailable:
        async with connect(section, "test-agent-a"):
            pass
    assert isinstance(unavailable.value, UnavailableError)  # exit code 3: could not judge
    assert f"127.0.0.1:{broker.port}" in str(unavailable.value)


@pytest.mark.asyncio
async def test_the_end_of_the_connection_fails_what_waits_on_it(broker: Mosquitto) -> None:
    async with connect(broker.section(AGGREGATOR_USER), "test-reader") as connection:
        await connection.subscribe(["wgprobe/v1/#"])
        receiving = asyncio.ensure_future(connection.receive())
        await asyncio.sleep(0.1)
        broker.stop()
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(receiving, HANG_GUARD)
        assert not connection.connected
        with pytest.raises(BrokerUnavailable):
            connection.publish_nowait("wgprobe/v1/x", b"")


@pytest.mark.asyncio
async def test_last_will_is_published_when_the_connection_dies(broker: Mosquitto) -> None:
    will = LastWill(status_topic("agent-a"), b'{"online": false}')
    async with connect(broker.section(AGGREGATOR_USER), "test-reader") as reader:
        await reader.subscribe([status_topic("agent-a")])
        async with connect(broker.section("agent-a"), "test-agent-a", will=will) as agent:
            await agent.publish(status_topic("agent-a"), b'{"online": true}', retain=True, timeout=HANG_GUARD)
            first = await reader.receive(HANG_GUARD)
            assert first is not None and first.payload == b'{"online": true}'
            # Not a clean DISCONNECT: the socket just closes, as when the process is killed.
            agent._paho.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            second = await reader.receive(HANG_GUARD)
        assert second is not None and second.payload == b'{"online": false}'


@pytest.mark.asyncio
async def test_a_clean_disconnect_sends_no_will(broker: Mosquitto) -> None:
    will = LastWill(status_topic("agent-a"), b'{"online": false}')
    async with connect(broker.section(AGGREGATOR_USER), "test-reader") as reader:
        await reader.subscribe([status_topic("agent-a")])
        async with connect(broker.section("agent-a"), "test-agent-a", will=will) as agent:
            await agent.publish(status_topic("agent-a"), b'{"online": true}', retain=True, timeout=HANG_GUARD)
        first = await reader.receive(HANG_GUARD)
        assert first is not None and first.payload == b'{"online": true}'
        assert await reader.receive(1.0) is None


@pytest.mark.asyncio
async def test_a_burst_arrives_whole_and_in_order_through_buffered_reads(broker: Mosquitto) -> None:
    """Hundreds of messages and PUBACKs sent at once: each side reads many packets per system call, and none is
    left in a buffer waiting for the socket to become readable again (every publish acknowledged, every message
    received, in order)."""
    count = 500
    async with connect(broker.section(AGGREGATOR_USER), "test-reader") as reader:
        await reader.subscribe(["wgprobe/v1/results/+/+"])
        async with connect(broker.section("agent-a"), "test-agent-a") as agent:
            topic = result_topic("agent-a", "se-got-wg-001")
            acks = [agent.publish_nowait(topic, b"%d" % n + b"." * (n % 300)) for n in range(count)]
            done, _ = await asyncio.wait(acks, timeout=HANG_GUARD)
            assert len(done) == count and all(ack.exception() is None for ack in done)
            got: list[int] = []
            while len(got) < count:
                message = await reader.receive(HANG_GUARD)
                assert message is not None, len(got)
                got.append(int(message.payload.split(b".")[0]))
            assert got == list(range(count))
            agent_socket, reader_socket = agent._paho.socket(), reader._paho.socket()
            assert isinstance(agent_socket, BufferedReads) and isinstance(reader_socket, BufferedReads)
            assert agent_socket.reads < count  # PUBACKs: several per read
            assert reader_socket.reads < count  # messages: several per read


@pytest.mark.asyncio
async def test_messages_with_properties_arrive_whole_and_acknowledged_ones_are_not_sent_again(
    broker: Mosquitto,
) -> None:
    """Through the lean PUBLISH path: the properties a publisher sets (which the broker forwards) are stepped over,
    and every message taken is acknowledged: a persistent session resumed later gets none of them again."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    reader_section = broker.section(AGGREGATOR_USER)
    async with connect(reader_section, "test-session", clean_start=False, session_expiry=600) as reader:
        await reader.subscribe(["wgprobe/v1/results/+/+"])
        agent = broker.users.get("agent-a") or broker.add_user("agent-a")
        publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-props", protocol=paho.MQTTv5)
        publisher.username_pw_set("agent-a", agent.password_file.read_text().strip())
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = 600
        properties.ContentType = "application/json"
        properties.UserProperty = [("k", "v" * 300)]  # a two-byte properties length
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        try:
            infos = [
                publisher.publish(result_topic("agent-a", "s1"), b"%d" % n, qos=1, properties=properties)
                for n in range(20)
            ]
            for info in infos:
                info.wait_for_publish(HANG_GUARD)
        finally:
            publisher.disconnect()
            publisher.loop_stop()
        got: list[bytes] = []
        while len(got) < 20:
            message = await reader.receive(HANG_GUARD)
            assert message is not None, len(got)
            got.append(message.payload)
        assert got == [b"%d" % n for n in range(20)]
        await asyncio.sleep(0.5)  # the PUBACKs on their way
    async with connect(reader_section, "test-session", clean_start=False, session_expiry=600) as again:
        assert await again.receive(1.0) is None  # nothing unacknowledged left in the session
