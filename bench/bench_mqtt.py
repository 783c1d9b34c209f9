"""The aggregator's MQTT layer alone, in one process, no broker: CPU per incoming result from the socket to the
consumer's queue (read, decode, PUBACK), through probe/mqtt.py's lean PUBLISH path and through paho's own handling
of a PUBLISH, in turn, in the same run.

Each run writes the same QoS 1 PUBLISH packets (bench_aggregator's 12-path results, ~10 KB, as mosquitto forwards
them) into one end of a socket pair from a thread; the paho client, its socket read through BufferedReads as
`probe.mqtt.Connection` sets it up, reads them the way aiomqtt's reader callback does (`loop_read`, again while
its buffer holds anything) and writes its PUBACKs, which a second thread reads and drops. Measured: the reading
thread's CPU (time.thread_time), per message.

    .venv/bin/python -m bench.bench_mqtt [--messages 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.bench_aggregator import one_result
from bench.common import median, report
from probe.messages import result_topic
from probe.mqtt import BufferedReads, Inbound, _lean_publish
from probe.mqtt_publish import encode_variable_length

HANG_GUARD = 60.0


def publish_stream(count: int) -> bytes:
    """`count` QoS 1 PUBLISH packets of results, packet ids 1.., with no properties (as mosquitto forwards a
    publish that had none)."""
    rng = random.Random(1)
    taken = time.time()
    packets = []
    for n in range(count):
        server = f"se-got-wg-{n % 1000 + 1:03d}"
        topic = result_topic("agent-1", server).encode()
        payload = one_result(server, "agent-1", n, taken, rng)
        body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", n % 0xFFFF + 1) + b"\x00" + payload
        packets.append(b"\x32" + encode_variable_length(len(body)) + body)
    return b"".join(packets)


def one_run(stream: bytes, count: int, lean: bool) -> float:
    """CPU seconds of the reading thread per message."""
    near, far = socket.socketpair()
    near.setblocking(False)
    inbox: list[Inbound] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        inbox.append(Inbound(message.topic, bytes(message.payload), bool(message.retain)))  # as Connection does

    client.on_message = on_message
    if lean:
        _lean_publish(client, inbox.append)
    sock = BufferedReads(near)
    client._sock = sock
    writer = threading.Thread(target=far.sendall, args=(stream,))
    drained = threading.Thread(target=_drain, args=(far,))
    writer.start()
    drained.start()
    try:
        started = time.thread_time()
        deadline = time.monotonic() + HANG_GUARD
        while len(inbox) < count:
            select.select([near], [], [], 1.0)
            _reader_turn(client.loop_read, sock)
            if time.monotonic() > deadline:
                raise SystemExit(f"stalled after {len(inbox)} messages")
        cpu = time.thread_time() - started
    finally:
        writer.join(HANG_GUARD)
        client._sock = None
        near.close()
        drained.join(HANG_GUARD)
        far.close()
    return cpu / count


def _reader_turn(loop_read: Callable[[], Any], sock: BufferedReads) -> None:
    # aiomqtt's reader callback: loop_read, and again while what was read is not all handed out
    loop_read()
    while sock.pending():
        loop_read()


def _drain(sock: socket.socket) -> None:
    while sock.recv(1 << 16):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    stream = publish_stream(args.messages)
    paho_us: list[float] = []
    lean_us: list[float] = []
    for _ in range(args.rounds):
        paho_us.append(one_run(stream, args.messages, lean=False) * 1e6)
        lean_us.append(one_run(stream, args.messages, lean=True) * 1e6)
    report(
        "mqtt",
        {
            "date": datetime.now(UTC).date().isoformat(),
            "messages": args.messages,
            "rounds": args.rounds,
            "bytes_per_message": len(stream) / args.messages,
            "lean_us_per_message_median": median(lean_us),
            "paho_us_per_message_median": median(paho_us),
            "lean_over_paho_paired_median": median([a / b for a, b in zip(lean_us, paho_us, strict=True)]),
            "lean_us_per_message": [round(v, 2) for v in lean_us],
            "paho_us_per_message": [round(v, 2) for v in paho_us],
        },
    )


if __name__ == "__main__":
    main()
