"""The lean PUBLISH path (probe/mqtt_publish.py and its hooks in probe/mqtt.py): `decode_publish` against
hand-made and generated packets (paho's own decoder as the reference) and hostile ones (truncated, over-long
lengths, QoS 3, packet identifier 0); whole packets taken from the read buffer; the hooks that hand paho's PUBLISH
packets to it, with paho's PUBACK after delivery."""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from probe.mqtt import BufferedReads, Inbound, _lean_publish
from probe.mqtt_publish import (
    PUBLISH,
    QOS_0_OR_1,
    MalformedPublish,
    Publish,
    decode_publish,
    encode_variable_length,
)


def publish_packet(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 1,
    mid: int = 1,
    retain: bool = False,
    dup: bool = False,
    properties: bytes = b"",
) -> tuple[int, bytes]:
    """(first byte of the fixed header, everything after the Remaining Length), as a broker sends them."""
    header = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    return header, body + encode_variable_length(len(properties)) + properties + payload


def some_properties() -> bytes:
    """Properties a broker may forward, packed by paho (without the length paho puts before them), long enough to
    need a two-byte length."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = 60
    properties.ContentType = "application/json"
    properties.UserProperty = [("agent", "se-got"), ("k", "v" * 200)]
    properties.SubscriptionIdentifier = [7]
    packed = bytes(properties.pack())  # type: ignore[no-untyped-call]
    assert packed[:2] == encode_variable_length(len(packed) - 2)
    return packed[2:]


def test_a_result_as_mosquitto_sends_it() -> None:
    header, body = publish_packet(b"wgprobe/v1/results/a/se-got-wg-001", b'{"ok": true}', qos=1, mid=513, retain=True)
    assert decode_publish(header, body) == Publish(
        b"wgprobe/v1/results/a/se-got-wg-001", b'{"ok": true}', qos=1, retain=True, dup=False, mid=513
    )


def test_properties_are_stepped_over_whatever_they_hold() -> None:
    properties = some_properties()
    assert len(properties) > 128  # a two-byte length
    header, body = publish_packet(b"t", b"payload", qos=1, mid=9, dup=True, properties=properties)
    assert decode_publish(header, body) == Publish(b"t", b"payload", qos=1, retain=False, dup=True, mid=9)


def test_qos_0_has_no_packet_identifier() -> None:
    header, body = publish_packet(b"t/x", b"\x00\x01", qos=0)
    assert decode_publish(header, body) == Publish(b"t/x", b"\x00\x01", qos=0, retain=False, dup=False, mid=0)


def test_an_empty_payload_and_an_empty_topic_decode() -> None:
    # An empty topic is legal MQTT v5 framing (with a topic alias); the store refuses it by its topic.
    header, body = publish_packet(b"", b"", qos=1, mid=1)
    assert decode_publish(header, body) == Publish(b"", b"", qos=1, retain=False, dup=False, mid=1)


@pytest.mark.parametrize(
    ("header", "body", "why"),
    [
        (0x36, b"\x00\x01t\x00\x01\x00", "QoS 3"),
        (0x32, b"\x00\x01t\x00\x00\x00", "packet identifier 0"),
        (0x40, b"\x00\x01", "not a PUBLISH"),
        (0x32, b"", "no topic length"),
        (0x32, b"\x00", "no topic length"),
        (0x32, b"\x00\x05abc", "topic runs past"),
        (0x32, b"\x00\x01t\x00", "no packet identifier"),
        (0x32, b"\x00\x01t\x00\x01", "properties' length runs past"),
        (0x30, b"\x00\x01t", "properties' length runs past"),
        (0x32, b"\x00\x01t\x00\x01\x80\x80", "properties' length runs past"),
        (0x32, b"\x00\x01t\x00\x01\xff\xff\xff\xff\x01", "longer than four bytes"),
        (0x32, b"\x00\x01t\x00\x01\x05abc", "properties run past"),
        (0x32, b"\x00\x01t\x00\x01\xff\xff\xff\x7f", "properties run past"),  # the largest length, 256 MB
    ],
)
def test_malformed_packets_are_refused_with_a_reason(header: int, body: bytes, why: str) -> None:
    with pytest.raises(MalformedPublish, match=why):
        decode_publish(header, body)


@given(
    topic=st.binary(max_size=300),
    payload=st.binary(max_size=600),
    qos=st.integers(0, 2),
    mid=st.integers(1, 0xFFFF),
    retain=st.booleans(),
    dup=st.booleans(),
    with_properties=st.booleans(),
)
def test_decodes_what_paho_decodes(
    topic: bytes, payload: bytes, qos: int, mid: int, retain: bool, dup: bool, with_properties: bool
) -> None:
    properties = some_properties() if with_properties else b""
    header, body = publish_packet(topic, payload, qos=qos, mid=mid, retain=retain, dup=dup, properties=properties)
    ours = decode_publish(header, body)
    theirs = paho_packet.decode_publish(header, body, MQTTProtocolVersion.MQTTv5)
    assert (ours.topic, bytes(ours.payload), ours.qos, ours.retain, ours.dup, ours.mid) == (
        theirs.topic,
        theirs.payload,
        theirs.qos,
        theirs.retain,
        theirs.dup,
        theirs.mid if qos else 0,
    )


@given(header=st.integers(0x30, 0x3F), body=st.binary(max_size=64))
def test_any_bytes_are_a_publish_or_malformed_never_a_crash(header: int, body: bytes) -> None:
    try:
        publish = decode_publish(header, body)
    except MalformedPublish:
        return
    # Whatever decoded lies inside the packet and accounts for its end.
    assert len(publish.topic) + len(publish.payload) <= len(body)
    assert bytes(publish.payload) == body[len(body) - len(publish.payload) :]


@given(cut=st.integers(0, 40))
def test_a_packet_cut_short_before_its_payload_is_malformed(cut: int) -> None:
    header, body = publish_packet(b"wgprobe/v1/results/a/b", b"", qos=1, mid=3, properties=b"\x01\x01")
    truncated = body[: min(cut, len(body) - 1)]
    with pytest.raises(MalformedPublish):
        decode_publish(header, truncated)


# -- the hook into paho ------------------------------------------------------------------------------------------


def hooked() -> tuple[paho.Client, list[Inbound]]:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    delivered: list[Inbound] = []
    _lean_publish(client, delivered.append)
    return client, delivered


def receive(client: paho.Client, header: int, body: bytes) -> MQTTErrorCode:
    """What paho's `_packet_read` does with a whole packet: fill `_in_packet` and dispatch it."""
    client._in_packet["command"] = header
    client._in_packet["packet"] = bytearray(body)
    client._in_packet["remaining_length"] = len(body)
    return client._packet_handle()


def queued(client: paho.Client) -> list[bytes]:
    return [bytes(packet["packet"]) for packet in client._out_packet]


def test_paho_hands_its_publish_packets_to_the_lean_path() -> None:
    """The private names this relies on (`_handle_publish`, `_in_packet`, `_send_puback`): a paho release that
    renames them fails here."""
    client, delivered = hooked()
    header, body = publish_packet(
        b"wgprobe/v1/results/a/s", b"{}", qos=1, mid=0x1234, retain=True, properties=some_properties()
    )
    # paho's answer to a PUBACK queued without a socket to write it to (here) is MQTT_ERR_NO_CONN: passed on as is.
    assert receive(client, header, body) is MQTTErrorCode.MQTT_ERR_NO_CONN
    assert delivered == [Inbound("wgprobe/v1/results/a/s", b"{}", True)]
    assert queued(client) == [b"\x40\x02\x12\x34"]  # PUBACK for 0x1234, through paho's own queue


def test_the_puback_is_sent_only_after_delivery() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    seen: list[list[bytes]] = []
    _lean_publish(client, lambda inbound: seen.append(queued(client)))
    receive(client, *publish_packet(b"t", b"x", qos=1, mid=5))
    assert seen == [[]]  # nothing queued while delivering
    assert queued(client) == [b"\x40\x02\x00\x05"]


def test_qos_0_is_delivered_without_an_acknowledgement() -> None:
    client, delivered = hooked()
    receive(client, *publish_packet(b"t", b"x", qos=0))
    assert delivered == [Inbound("t", b"x", False)]
    assert queued(client) == []


def test_a_malformed_publish_closes_the_connection_and_delivers_nothing() -> None:
    client, delivered = hooked()
    assert receive(client, 0x32, b"\x00\x09t\x00\x01\x00") is MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert delivered == [] and queued(client) == []


def test_a_topic_that_is_not_utf8_is_acknowledged_and_dropped() -> None:
    client, delivered = hooked()
    receive(client, *publish_packet(b"\xff\xfe", b"x", qos=1, mid=2))
    assert delivered == []
    assert queued(client) == [b"\x40\x02\x00\x02"]  # or the broker would send it again for ever


def test_qos_2_stays_with_paho() -> None:
    client, delivered = hooked()
    receive(client, *publish_packet(b"t", b"x", qos=2, mid=6))
    assert delivered == []  # paho holds it until PUBREL, then calls on_message
    assert queued(client) == [b"\x50\x02\x00\x06"]  # PUBREC


# -- whole packets from the read buffer --------------------------------------------------------------------------


def wire(header: int, body: bytes) -> bytes:
    return bytes([header]) + encode_variable_length(len(body)) + body


def buffered(data: bytes) -> tuple[socket.socket, socket.socket, BufferedReads]:
    """A socket with `data` waiting, and its BufferedReads with all of it read into the buffer (recv(0): nothing
    handed out)."""
    near, far = socket.socketpair()
    near.setblocking(False)
    far.sendall(data)
    sock = BufferedReads(near)
    assert sock.recv(0) == b""
    return near, far, sock


def test_whole_packets_are_taken_from_the_buffer_others_left_to_paho() -> None:
    first = publish_packet(b"a", b"x" * 200, qos=1, mid=1)  # a two-byte Remaining Length
    second = publish_packet(b"b", b"y", qos=0)
    qos2 = publish_packet(b"c", b"z", qos=2, mid=3)
    data = wire(*first) + wire(*second) + wire(*qos2) + b"\xd0\x00"  # then a PINGRESP
    near, far, sock = buffered(data)
    with near, far:
        assert sock.whole_packet(PUBLISH, QOS_0_OR_1) == first
        assert sock.whole_packet(PUBLISH, QOS_0_OR_1) == second
        assert sock.whole_packet(PUBLISH, QOS_0_OR_1) is None  # QoS 2: paho's
        assert sock.whole_packet(PUBLISH) == qos2
        assert sock.whole_packet(PUBLISH) is None  # a PINGRESP: paho's
        assert sock.recv(2) == b"\xd0\x00"


@pytest.mark.parametrize(
    "data",
    [
        wire(*publish_packet(b"a", b"x" * 200, qos=1, mid=1))[:-1],  # the body cut by the end of the read
        wire(*publish_packet(b"a", b"x" * 200, qos=1, mid=1))[:2],  # the Remaining Length cut
        b"\x32",  # the first byte alone
        b"\x32\xff\xff\xff\xff\x01" + b"x" * 10,  # a five-byte Remaining Length: paho refuses it
    ],
)
def test_a_packet_not_held_whole_stays_in_the_buffer(data: bytes) -> None:
    near, far, sock = buffered(data)
    with near, far:
        assert sock.whole_packet(PUBLISH) is None
        assert sock.pending() == len(data)


def test_paho_s_reader_takes_every_whole_publish_of_a_read_at_once() -> None:
    """Through paho's own loop_read: publishes whole in a read go in one call (the first of them too: paho's reader
    took it byte by byte, a third of all messages at a few per read), a packet cut by the end of the read is
    finished by paho's reader from the next read, and other packets (a PINGRESP) stay paho's."""
    client, delivered = hooked()
    near, far = socket.socketpair()
    near.setblocking(False)
    sock = BufferedReads(near)
    client._sock = sock
    packets = [wire(*publish_packet(b"t/%d" % n, b"p%d" % n, qos=1, mid=n + 1)) for n in range(50)]
    data = b"".join(packets) + b"\xd0\x00"
    cut = len(data) - len(packets[-1]) // 2 - 2  # inside the last publish
    with near, far:
        far.sendall(data[:cut])
        client._packet_read()  # the read made first, then every whole publish it brought, in one call
        assert len(delivered) == 49
        assert sock.reads == 1
        far.sendall(data[cut:])
        for _ in range(10):  # what aiomqtt's reader does: read, and again while the buffer holds anything
            client._packet_read()
            if not sock.pending() and len(delivered) == 50:
                break
        assert [m.topic for m in delivered] == [f"t/{n}" for n in range(50)]
        pubacks = b"".join(b"\x40\x02" + struct.pack("!H", n + 1) for n in range(50))
        far.settimeout(5.0)
        sent = b""
        while len(sent) < len(pubacks):  # written by paho to the socket at once (no loop thread, no write callback)
            sent += far.recv(len(pubacks))
        assert sent == pubacks  # one PUBACK per message, in order
        assert client._in_packet["command"] == 0  # the PINGRESP read and handled by paho, nothing half-read
        client._sock = None


def read_in_one_call(packets: list[bytes]) -> tuple[paho.Client, list[Inbound], list[list[bytes]], MQTTErrorCode]:
    """`packets` whole in the read buffer, taken by one call of paho's reader with an event loop's write callback
    registered (as aiomqtt does), so what is queued stays queued: the client, what was delivered, what was queued
    at each delivery, and the reader's return code."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    delivered: list[Inbound] = []
    seen: list[list[bytes]] = []

    def deliver(inbound: Inbound) -> None:
        delivered.append(inbound)
        seen.append(queued(client))

    _lean_publish(client, deliver)
    client.on_socket_register_write = lambda *_: None
    near, far = socket.socketpair()
    near.setblocking(False)
    with near, far:
        sock = BufferedReads(near)
        client._sock = sock
        far.sendall(b"".join(packets))
        assert sock.recv(0) == b""  # all of it in the buffer, nothing handed out
        code = client._packet_read()
        client._sock = None
    return client, delivered, seen, code


def test_the_pubacks_of_one_read_are_queued_as_one_write_after_every_delivery() -> None:
    # paho queued a packet (and woke its loop with a system call) per PUBACK, and wrote each with a send of its own.
    packets = [wire(*publish_packet(b"t/%d" % n, b"p", qos=1, mid=n + 1)) for n in range(30)]
    packets.insert(10, wire(*publish_packet(b"q0", b"p", qos=0)))  # no acknowledgement at QoS 0
    client, delivered, seen, code = read_in_one_call(packets)
    assert code is MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(delivered) == 31
    assert seen == [[]] * 31  # nothing acknowledged before every message of the read is in the consumer's queue
    assert queued(client) == [b"".join(b"\x40\x02" + struct.pack("!H", n + 1) for n in range(30))]


def test_a_malformed_publish_in_a_read_still_acknowledges_those_delivered_before_it() -> None:
    good = [wire(*publish_packet(b"t/%d" % n, b"p", qos=1, mid=n + 1)) for n in range(3)]
    malformed = wire(0x32, b"\x00\x09t\x00\x01\x00")
    client, delivered, _, code = read_in_one_call([*good[:2], malformed, good[2]])
    assert code is MQTTErrorCode.MQTT_ERR_PROTOCOL  # paho closes the connection
    assert [m.topic for m in delivered] == ["t/0", "t/1"]
    assert queued(client) == [b"\x40\x02\x00\x01\x40\x02\x00\x02"]  # the broker need not send those two again


def test_the_end_of_the_stream_met_by_the_lean_path_s_read_closes_the_connection() -> None:
    client, delivered = hooked()
    near, far = socket.socketpair()
    near.setblocking(False)
    sock = BufferedReads(near)
    client._sock = sock
    with near:
        far.sendall(b"".join(wire(*publish_packet(b"t/%d" % n, b"p", qos=0)) for n in range(3)))
        far.close()
        assert client._packet_read() is MQTTErrorCode.MQTT_ERR_SUCCESS
        assert len(delivered) == 3
        assert sock.pending() == 0  # the reader goes back to waiting: the socket is readable (its end)
        assert client._packet_read() is MQTTErrorCode.MQTT_ERR_CONN_LOST  # as paho's own reader says for b""
        assert client._packet_read() is MQTTErrorCode.MQTT_ERR_CONN_LOST  # and again: the end is kept, not lost
    client._sock = None


class _Failing:
    """A socket whose reads fail as `error` says."""

    def __init__(self, error: OSError) -> None:
        self.error = error
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionResetError(104, "reset by peer"), MQTTErrorCode.MQTT_ERR_CONN_LOST),
        (BlockingIOError(11, "nothing yet"), MQTTErrorCode.MQTT_ERR_AGAIN),
    ],
)
def test_what_the_lean_path_s_read_meets_reaches_paho_as_its_own_read_would(error: OSError, code: int) -> None:
    client, delivered = hooked()
    failing = _Failing(error)
    client._sock = BufferedReads(failing)
    assert client._packet_read() == code
    # A socket error is kept and handed to paho's reader, not read for again (a second read of a reset socket would
    # say only "end of stream"); nothing there yet is asked again by paho's reader, as before.
    assert failing.reads == (1 if isinstance(error, ConnectionResetError) else 2)
    assert delivered == []
    client._sock = None
