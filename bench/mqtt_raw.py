"""Bare MQTT v5 clients for the service benchmark: a publisher that writes PUBLISH packets built in advance (QoS 1,
retained) to a plain socket many at a time and reads the broker's PUBACKs back, and a subscriber that only counts.

In the service benchmark the publishers stand for agents on other machines, yet share the development machine's two
cores with the broker and the aggregator they measure. paho spends ~0.15-0.2 ms of CPU a message publishing (its
packet building, its in-flight bookkeeping, a thread handing packets over): at 5,000 results a second, most of a
core. Packets built before the clock starts and written in batches cost a few microseconds a message, so what the
run measures is the broker and the subscriber. Every PUBACK is read and checked (a refusal stops the publisher), and
no more messages are in flight than the broker's Receive Maximum allows (MQTT v5 section 3.2.2.3.3).

The subscriber (`RawSubscriber`) is the second baseline: what the broker delivers to one connection at most on this
machine when the client spends next to nothing on a message (the other, a paho subscriber that only counts, is what
a Python MQTT client delivers at most).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence

from probe.mqtt_publish import encode_variable_length

CONNECT, CONNACK, PUBLISH_QOS1_RETAIN, PUBACK = 0x10, 0x20, 0x33, 0x40
SUBSCRIBE, SUBACK, PUBLISH_TYPE = 0x82, 0x90, 0x30
RECEIVE_MAXIMUM = 0x21
BATCH = 32  # packets written per send
_PROPERTY_SIZES = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x19: 1, 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1}
_PROPERTY_SIZES.update({0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1})
_STRING_PROPERTIES = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x18, 0x1A, 0x1C, 0x1F}


class RawError(RuntimeError):
    """The broker refused or broke the exchange."""


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_variable_length(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 600) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # user name, password, clean start
    header = _string("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + b"\x00"  # no properties
    return _packet(CONNECT, header + _string(client_id) + _string(username) + _string(password))


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """A QoS 1, retained PUBLISH (section 3.3) without properties."""
    return _packet(PUBLISH_QOS1_RETAIN, _string(topic) + struct.pack("!H", mid) + b"\x00" + payload)


def packet_id(number: int) -> int:
    """The packet identifier of the `number`th message: 1..65535 in turn (never 0, section 2.2.1). Unique among
    those in flight as long as fewer than 65,535 are."""
    return number % 65535 + 1


def _variable(data: bytes, at: int) -> tuple[int, int] | None:
    """(value, position after it) of a Variable Byte Integer at `at`, None if `data` ends inside it."""
    value, shift = 0, 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def receive_maximum(connack: bytes) -> int:
    """The Receive Maximum a CONNACK's properties carry (65,535 when absent); RawError when it refuses."""
    flags_and_code = connack[:2]
    if len(flags_and_code) < 2 or flags_and_code[1] >= 0x80:
        raise RawError(f"connection refused: CONNACK {connack.hex()}")
    parsed = _variable(connack, 2)
    if parsed is None:
        raise RawError("CONNACK cut short")
    length, at = parsed
    end = at + length
    while at < end:
        identifier = connack[at]
        at += 1
        if identifier == RECEIVE_MAXIMUM:
            return int(struct.unpack_from("!H", connack, at)[0])
        if identifier in _PROPERTY_SIZES:
            at += _PROPERTY_SIZES[identifier]
        elif identifier in _STRING_PROPERTIES:
            at += 2 + struct.unpack_from("!H", connack, at)[0]
        elif identifier == 0x26:  # user property: two strings
            at += 2 + struct.unpack_from("!H", connack, at)[0]
            at += 2 + struct.unpack_from("!H", connack, at)[0]
        else:
            raise RawError(f"CONNACK property 0x{identifier:02x}")
    return 65535


class _RawClient:
    """A connection past its CONNACK (clean start, user and password), and whole packets read off it."""

    def __init__(self, host: str, port: int, client_id: str, username: str, password: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id, username, password))
        self._pending = b""
        first, body = self._read_packet()
        if first != CONNACK:
            raise RawError(f"expected CONNACK, got packet type {first >> 4}")
        self.window = min(receive_maximum(body), 65534)

    def _read_packet(self) -> tuple[int, bytes]:
        while True:
            parsed = _variable(self._pending, 1) if len(self._pending) > 1 else None
            if parsed is not None and len(self._pending) >= parsed[1] + parsed[0]:
                length, at = parsed
                first, body = self._pending[0], self._pending[at : at + length]
                self._pending = self._pending[at + length :]
                return first, body
            data = self.sock.recv(65536)
            if not data:
                raise RawError("the broker closed the connection")
            self._pending += data

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT, normal (no will)
        finally:
            self.sock.close()


class RawPublisher(_RawClient):
    def _acks(self, data: bytes) -> int:
        """PUBACKs whole in what has been read so far (the rest kept for the next read); RawError on a refusal or
        any other packet."""
        data = self._pending + data
        at, count, size = 0, 0, len(data)
        while at + 2 <= size:
            first, length = data[at], data[at + 1]
            if length & 0x80:
                raise RawError("a PUBACK longer than 127 bytes")
            if at + 2 + length > size:
                break
            if first != PUBACK:
                raise RawError(f"expected PUBACK, got packet type {first >> 4}")
            if length > 2 and data[at + 4] >= 0x80:
                raise RawError(f"publish refused: reason 0x{data[at + 4]:02x}")
            count += 1
            at += 2 + length
        self._pending = data[at:]
        return count

    def publish_all(self, packets: Sequence[bytes]) -> None:
        """Write every packet, never more in flight than the window, and return once every PUBACK is in."""
        sock, total, window = self.sock, len(packets), self.window
        sent = acked = 0
        while acked < total:
            limit = min(total, acked + window, sent + BATCH)
            if sent < limit:
                sock.sendall(b"".join(packets[sent:limit]))
                sent = limit
                try:
                    data = sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
            else:
                data = sock.recv(65536)
            if not data:
                raise RawError("the broker closed the connection")
            acked += self._acks(data)


class RawSubscriber(_RawClient):
    """A subscriber that only counts: SUBSCRIBE at QoS 1, then every PUBLISH read off the socket (its header and
    topic stepped over, nothing decoded) and acknowledged, one write of PUBACKs per read."""

    def __init__(self, host: str, port: int, client_id: str, username: str, password: str, topic_filter: str) -> None:
        super().__init__(host, port, client_id, username, password)
        # Packet id 1, no properties, the filter with options 0x01: QoS 1, retained messages sent on subscribe.
        self.sock.sendall(_packet(SUBSCRIBE, b"\x00\x01\x00" + _string(topic_filter) + b"\x01"))
        first, body = self._read_packet()
        if first != SUBACK or not body or body[-1] >= 0x80:
            raise RawError(f"subscription refused: {bytes([first]).hex()} {body.hex()}")

    def receive(self, total: int, clock: Callable[[], float]) -> tuple[int, float, float]:
        """Read until `total` live messages are in: (how many, when the first read holding one ended, when the last
        did), by `clock`. Retained ones (sent because of the subscription, RETAIN set) are acknowledged, not counted;
        the broker clears RETAIN on live messages (MQTT v5 section 3.3.1.3, Retain As Published off)."""
        sock = self.sock
        counted, first_at, last_at = 0, 0.0, 0.0
        data = self._pending
        while counted < total:
            chunk = sock.recv(65536)
            if not chunk:
                raise RawError("the broker closed the connection")
            data = data + chunk if data else chunk
            at, size, acks, before = 0, len(data), [], counted
            while at + 2 <= size:
                parsed = _variable(data, at + 1)
                if parsed is None or parsed[1] + parsed[0] > size:
                    break
                length, start = parsed
                header = data[at]
                if header & 0xF0 == PUBLISH_TYPE:
                    if header & 0x06:  # QoS 1 (2 is never asked for): the packet id follows the topic
                        mid_at = start + 2 + ((data[start] << 8) | data[start + 1])
                        acks.append(b"\x40\x02" + data[mid_at : mid_at + 2])
                    if not header & 0x01:
                        counted += 1
                at = start + length
            data = data[at:]
            if acks:
                sock.sendall(b"".join(acks))
            if counted > before:
                last_at = clock()
                first_at = first_at or last_at
        self._pending = data
        return counted, first_at, last_at
