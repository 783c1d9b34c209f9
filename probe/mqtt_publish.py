"""MQTT v5 PUBLISH packets as they come off the wire, sans-I/O: bytes in, a `Publish` or `MalformedPublish` out.

probe/mqtt.py feeds it the packets paho (or its read buffer) holds; nothing here imports paho, asyncio or socket.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLISH = 0x30  # the packet type in the high four bits of the fixed header's first byte (section 2.1.2)
QOS_0_OR_1 = 0xF4  # a first byte under this mask is PUBLISH for QoS 0 and 1 (QoS 2 and 3 set the bit 0x04)
MAX_VARIABLE_BYTES = 4  # section 1.5.5: a Variable Byte Integer is at most four bytes


class MalformedPublish(ValueError):
    """A PUBLISH packet that breaks MQTT v5 section 3.3: the connection is closed, as section 4.13 asks."""


@dataclass(frozen=True, slots=True)
class Publish:
    """A decoded PUBLISH: `mid` is 0 at QoS 0 (there is no packet identifier then)."""

    topic: bytes
    payload: bytes | bytearray
    qos: int
    retain: bool
    dup: bool
    mid: int


def decode_publish(header: int, body: bytes | bytearray) -> Publish:
    """The PUBLISH packet whose fixed header's first byte is `header` and whose variable header and payload (all
    after the Remaining Length) are `body`, as MQTT v5 section 3.3 lays it out: topic (a two-byte length and its
    bytes), a two-byte packet identifier at QoS 1 and 2, the properties (a Variable Byte Integer length and
    that many bytes), the payload (the rest). MalformedPublish for anything that does not fit.

    The properties are stepped over, not read: none of them changes what this client does with a message (it
    sets no Topic Alias Maximum in CONNECT, so a broker may not send a topic alias; section 3.3.2.3.4), and
    reading them is most of what paho spends on a PUBLISH (a Properties object per message). The topic's bytes
    are returned as they came; whether they are UTF-8 is the caller's question.
    """
    if header & 0xF0 != PUBLISH:
        raise MalformedPublish(f"not a PUBLISH packet: type {header >> 4}")
    qos = (header >> 1) & 0x03
    if qos == 3:
        raise MalformedPublish("QoS 3")  # section 3.3.1.2: a PUBLISH with both QoS bits set is malformed
    size = len(body)
    if size < 2:
        raise MalformedPublish("no topic length")
    end = 2 + ((body[0] << 8) | body[1])
    if end > size:
        raise MalformedPublish("the topic runs past the packet")
    topic = bytes(body[2:end])
    mid = 0
    if qos:
        if end + 2 > size:
            raise MalformedPublish("no packet identifier")
        mid = (body[end] << 8) | body[end + 1]
        if mid == 0:
            raise MalformedPublish("packet identifier 0")  # section 2.2.1: non-zero at QoS 1 and 2
        end += 2
    length, shift, position = 0, 0, end
    while True:
        if position >= size:
            raise MalformedPublish("the properties' length runs past the packet")
        byte = body[position]
        position += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if position - end == MAX_VARIABLE_BYTES:
            raise MalformedPublish("the properties' length is longer than four bytes")
    start = position + length
    if start > size:
        raise MalformedPublish("the properties run past the packet")
    return Publish(topic, body[start:], qos, bool(header & 0x01), bool(header & 0x08), mid)


def encode_variable_length(value: int) -> bytes:
    """A Variable Byte Integer (section 1.5.5), the inverse of what decode_publish reads: for the packets the tests
    and bench/bench_mqtt.py build (the broker builds the real ones)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
