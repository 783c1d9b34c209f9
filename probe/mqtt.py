"""The one module that speaks MQTT: aiomqtt (over paho-mqtt) behind a small connection type, and every exception
either raises mapped into the project's hierarchy here.

MQTT v5 always. With v3.1.1 mosquitto answers a publish its ACL refuses with a plain PUBACK, exactly as if it had
been accepted; v5 carries a reason code in the PUBACK (0x87 not authorized, 0x97 quota exceeded, ...), so a
refused result is seen, logged and counted instead of silently lost. aiomqtt's own `publish` waits for the PUBACK
but throws its reason code away, so `Connection.publish` hooks paho's `on_publish` (which gets it) and resolves
one future per message id with it.

Incoming PUBLISH packets take a lean path (`_lean_publish`): paho reads them and keeps the session, CONNECT,
SUBSCRIBE and keepalive, but a PUBLISH is decoded here (`decode_publish`, properties stepped over) and
acknowledged once it is in the consumer's queue; whole packets in the read buffer are taken in one call, and their
PUBACKs written in one. paho's own handling of a PUBLISH was a sixth of the aggregator's CPU at thousands of results
a second.

Imported only by the agent's outbox and the aggregator's subscriber: aiomqtt and paho stay out of `import probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from probe.errors import UnavailableError, WgProbeError
from probe.mqtt_publish import MAX_VARIABLE_BYTES, PUBLISH, QOS_0_OR_1, MalformedPublish, decode_publish
from probe.service_config import MqttSection

KEEPALIVE_SECONDS = 20
PUBACK_BYTE = 0x40  # the fixed header's first byte: PUBACK (v5 section 3.4), no flags
_PUBACK = struct.Struct("!BBH")  # that byte, Remaining Length 2, the packet id: success, no properties (3.4.2.1)
TIMEOUT_SECONDS = 10.0  # CONNACK, SUBACK and a clean DISCONNECT; a PUBACK's wait is the caller's
FAILURE = 0x80  # MQTT v5 (section 2.4): a reason code of 0x80 or more is a failure

# MQTT v5 reason codes a broker refuses with, as the words logs and metric labels use (a closed set: any other
# failure code is "refused"). Section 3.4.2.1 (PUBACK), 3.2.2.2 (CONNACK), 3.9.3 (SUBACK).
REASONS: dict[int, str] = {
    0x80: "unspecified_error",
    0x81: "malformed_packet",
    0x82: "protocol_error",
    0x83: "implementation_specific_error",
    0x84: "unsupported_protocol_version",
    0x85: "client_identifier_not_valid",
    0x86: "bad_username_or_password",
    0x87: "not_authorized",
    0x88: "server_unavailable",
    0x89: "server_busy",
    0x8A: "banned",
    0x8F: "topic_filter_invalid",
    0x90: "topic_name_invalid",
    0x91: "packet_identifier_in_use",
    0x95: "packet_too_large",
    0x97: "quota_exceeded",
    0x99: "payload_format_invalid",
    0x9A: "retain_not_supported",
    0x9B: "qos_not_supported",
    0x9F: "connection_rate_exceeded",
}
REFUSED_OTHER = "refused"
# CONNACK codes that say "not now" rather than "not you": the caller backs off and tries again as for a network error.
_CONNACK_TRANSIENT = {0x88, 0x89, 0x9F}


class BrokerError(WgProbeError):
    """Base of what this module raises."""


class BrokerUnavailable(BrokerError, UnavailableError):
    """The broker cannot be reached, the connection was lost, or it did not answer in time."""


class BrokerRefused(BrokerError):
    """The broker answered with a failure reason code (bad credentials, ACL, quota...)."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        self.what = what
        self.reason = reason_word(code)
        super().__init__(f"{what} refused by the broker: {self.reason} (0x{code:02X})")


def reason_word(code: int) -> str:
    return REASONS.get(code, REFUSED_OTHER)


_CREDENTIALS_REFUSED = {0x86, 0x87}  # mosquitto answers a wrong password with 0x87 in MQTT v5, others with 0x86
CREDENTIALS_HINT = (
    "check [mqtt] username and password_file against the broker's password file (deploy/new-agent.sh adds a user; "
    "the broker reads the file again on reload)"
)


def connect_hint(error: BrokerError) -> str | None:
    """What to check when the broker refused the connection itself (not a publish): said beside the reason code,
    which alone ("not_authorized") reads like an ACL problem."""
    if isinstance(error, BrokerRefused) and error.code in _CREDENTIALS_REFUSED and error.what.startswith("connection"):
        return CREDENTIALS_HINT
    return None


@dataclass(frozen=True, slots=True)
class LastWill:
    """Published by the broker when the connection ends without a DISCONNECT (a crash, a cut cable)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message the broker delivered; `retain` is set for retained messages sent because of a subscription."""

    topic: str
    payload: bytes
    retain: bool


# -- logging ---------------------------------------------------------------------------------------------------------

EventLog = Callable[..., None]
"""`log(level, event, **fields)`: one line per event; level as in `logging`, fields are plain values, no secrets."""


def event_log(log: EventLog | logging.Logger | None, name: str) -> EventLog:
    """A callable `log(level, event, **fields)` from whatever the caller passed (a Logger, a callable, None)."""
    logger = logging.getLogger(name) if log is None else log
    if not isinstance(logger, logging.Logger):
        return logger

    def emit(level: int, event: str, **fields: object) -> None:
        words = " ".join(f"{key}={value}" for key, value in fields.items())
        logger.log(level, "%s%s%s", event, " " if words else "", words, extra={"event": event, "fields": fields})

    return emit


# -- backoff ---------------------------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped: first ~`initial` seconds, doubling up to `cap`.

    The jitter (the delay is drawn from its upper half) keeps a fleet of agents that lost the broker together
    from all knocking again in the same second when it comes back.
    """

    initial: float = 0.5
    cap: float = 30.0
    rng: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay / 2 + self.rng() * delay / 2

    def reset(self) -> None:
        self.attempt = 0


# -- waiting ---------------------------------------------------------------------------------------------------------


async def wait_done(future: asyncio.Future[Any], timeout: float | None) -> bool:
    """Whether `future` is done within `timeout` seconds; it is never cancelled here.

    Not `asyncio.wait_for`: on Python 3.11 it swallows the caller's cancellation when the awaited future completes
    in the same step (the cancelled task then goes on as if nothing happened; fixed in 3.12). On a path that waits
    for thousands of PUBACKs that coincidence is a matter of time, and a SIGTERM would be lost.
    """
    done, _ = await asyncio.wait({future}, timeout=timeout)
    return bool(done)


def _cancelled_meanwhile() -> None:
    """After awaiting aiomqtt (which uses asyncio.wait_for inside): raise the cancellation it may have swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# -- buffered reads --------------------------------------------------------------------------------------------------

READ_SIZE = 64 * 1024  # bytes asked of the kernel per read: a few dozen results, or thousands of PUBACKs


_EOF = OSError("end of stream")  # BufferedReads._end at the end of the stream: recv returns b"" there, as a socket does


class BufferedReads:
    """paho's socket, with reads served from a buffer filled up to READ_SIZE bytes at a time.

    paho reads each packet as recv(1) for its type, recv(1) per byte of its length and recv(n) for the rest: three
    or four system calls per message, which at thousands of messages a second (the aggregator's results, the
    agent's PUBACKs) cost more than parsing them. Here one recv takes whatever the kernel holds (up to READ_SIZE)
    and paho's small reads are answered from it.

    Safe with paho's and aiomqtt's read loops because of `pending()`, the method an ssl.SSLSocket has for bytes it
    has already read but not handed out: paho's own select loop does not wait while `pending()` is above zero, and
    aiomqtt's reader callback calls `loop_read` again while it is (both for TLS, which buffers the same way). So
    nothing is left in the buffer waiting for the socket to become readable again.

    One read from the socket per wait for it: once the buffer is used up, a read that would go to the socket again
    before `pending()` has said "nothing left" (the reader going back to waiting) raises BlockingIOError, as an
    empty socket does; paho keeps the part of a packet it has, and the event loop calls the reader again at once
    if the socket has more. Otherwise the reader callback would refill and go on for as long as the broker sends,
    and during a burst nothing else would run: not the consumer, not a /metrics scrape.

    Reads otherwise behave as the socket's own: never more than asked, BlockingIOError (or ssl.SSLWantReadError)
    when the socket has nothing, b"" at the end of the stream once the buffer is empty. Everything else is the
    socket's.
    """

    __slots__ = ("_buffer", "_end", "_may_read", "_offset", "_sock", "reads")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0
        self._may_read = True
        self._end: OSError | None = None  # what `fill` met instead of bytes (_EOF: the end of the stream), for recv
        self.reads = 0  # recv calls on the socket itself (tests and benchmarks)

    def recv(self, size: int) -> bytes:
        buffer, start = self._buffer, self._offset
        if start >= len(buffer):
            if self._end is not None:
                if self._end is _EOF:
                    return b""
                raise self._end
            if not self._may_read and not self._below():
                raise BlockingIOError("read once since the last wait")
            data: bytes = self._sock.recv(max(size, READ_SIZE))
            self.reads += 1
            self._may_read = False
            if len(data) <= size:
                return data
            self._buffer, self._offset = buffer, start = data, 0
        end = start + size
        self._offset = end
        return buffer[start:end]

    def fill(self) -> None:
        """The read `recv` would make next, made now, without handing anything out: so that the lean PUBLISH path
        finds the packets of a new read whole in the buffer, rather than paho's reader taking the first of them
        byte by byte (a third of all messages, at a few per read). Nothing when the buffer still holds bytes or a
        read is not allowed yet; the end of the stream or a socket error is kept for `recv` to hand to paho, which
        closes the connection on it as before; nothing there yet (BlockingIOError, ssl.SSLWantReadError) is left
        for recv to meet again."""
        if self._offset < len(self._buffer) or self._end is not None or not self._may_read:
            return
        try:
            data: bytes = self._sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError as e:
            self._end = e
            return
        self.reads += 1
        self._may_read = False
        if data:
            self._buffer, self._offset = data, 0
        else:
            self._end = _EOF

    def whole_packet(self, kind: int, mask: int = 0xF0) -> tuple[int, bytes] | None:
        """The next MQTT packet, taken from the buffer, when its first byte under `mask` is `kind` (by default: its
        type, the high four bits) and it is held whole: (its first byte, everything after its Remaining Length).
        None otherwise, the buffer untouched: a packet of another kind, one cut by the end of a read, or a
        Remaining Length longer than MQTT allows (four bytes, section 1.5.5) is read by paho as before, and
        refused by it."""
        buffer, start = self._buffer, self._offset
        size = len(buffer)
        if size - start < 2 or buffer[start] & mask != kind:
            return None
        # The Remaining Length read inline, as decode_publish reads the properties' length: one shared function
        # called twice per message cost ~10% of this path in bench_mqtt (lean/paho 0.35 against 0.31, paired).
        length, shift, position = 0, 0, start + 1
        while True:
            if position >= size or position - start > MAX_VARIABLE_BYTES:
                return None
            byte = buffer[position]
            position += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        end = position + length
        if end > size:
            return None
        self._offset = end
        return buffer[start], buffer[position:end]

    def pending(self) -> int:
        """Bytes read from the socket and not yet handed out: here, and in the TLS layer below. When nothing is, the
        caller goes back to waiting for the socket, and the next read may go to it."""
        pending = max(0, len(self._buffer) - self._offset) + self._below()
        if not pending:
            self._may_read = True
        return pending

    def _below(self) -> int:
        below = getattr(self._sock, "pending", None)
        return int(below()) if below is not None else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_reads(client: paho.Client) -> None:
    """Make every socket `client` opens a BufferedReads. paho opens its socket in `_create_socket` and uses only
    what it returns (setblocking, fileno, recv, send, pending, close); wrapped there, paho, aiomqtt's callbacks and
    select see the one object. If a paho release renames it, reads stay unbuffered (tests/unit/test_mqtt.py says)."""
    create = getattr(client, "_create_socket", None)
    if create is None:
        return

    def buffered() -> BufferedReads:
        return BufferedReads(create())

    client._create_socket = buffered  # type: ignore[method-assign]


# -- incoming PUBLISH packets ---------------------------------------------------------------------------------------


def _lean_publish(client: paho.Client, deliver: Callable[[Inbound], None]) -> None:
    """Take PUBLISH packets off paho's hands. paho keeps everything else (CONNECT, SUBSCRIBE, keepalive, the PUBACKs
    of our own publishes, the session), but a PUBLISH is decoded by `decode_publish` and handed to `deliver`, then
    acknowledged (QoS 1) through paho's outgoing queue, in order with everything else: the PUBACKs of the packets
    one call takes from the buffer as one queued write, once all of them are delivered.

    Two hooks. `_packet_read`: when paho is between packets and the socket's buffer (BufferedReads) holds whole
    PUBLISH packets of QoS 0 or 1, they are all taken from it in one call, each decoded and delivered, rather than
    one call of paho's reader per packet with three reads (type, length, body), its bookkeeping and its locks;
    anything else (another packet type, a packet cut by the end of a read) is left to paho's reader.
    `_handle_publish`: a PUBLISH paho did read (cut across reads) takes the same decoder. Saved per message,
    against paho: a Properties object filled from the packet, an MQTTMessage with its condition variable, a debug
    line formatted, the topic matched against per-topic callbacks (none are registered), and paho's per-packet
    read path. That was about a sixth of the aggregator's CPU (README, Ingest).

    The acknowledgement keeps paho's semantics: sent once `deliver` returned (the message is in the consumer's
    queue), as paho sends it once on_message returned; a PUBACK for a packet taken from the buffer waits only for the
    others of the same call (microseconds), and is queued even when a later one of them is malformed. A malformed
    PUBLISH is MQTT_ERR_PROTOCOL, which
    closes the connection as paho does for the malformed packets it finds itself (MQTT v5 section 4.13); the
    caller reconnects. QoS 2 (never asked for here: subscriptions are QoS 1 at most) goes to paho's own handler
    and its PUBREC/PUBREL exchange. A topic that is not UTF-8 (which the broker should have refused) cannot be
    routed: acknowledged and dropped, as before. If a paho release renames what this hooks, paho handles every
    PUBLISH itself (tests/unit/test_mqtt_publish.py says).
    """
    own_handle = getattr(client, "_handle_publish", None)
    own_read = getattr(client, "_packet_read", None)
    if own_handle is None or own_read is None or not hasattr(client, "_in_packet"):
        return
    log = logging.getLogger("wgprobe.mqtt")
    clock: Callable[[], float] = getattr(paho, "time_func", time.monotonic)

    def publish(header: int, body: bytes | bytearray) -> int | MQTTErrorCode:
        """Decode and deliver one PUBLISH: the packet id to acknowledge (0 for none, QoS 0), or an error code."""
        try:
            packet = decode_publish(header, body)
        except MalformedPublish as e:
            log.warning("malformed PUBLISH from the broker, closing the connection: %s", e)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        if packet.qos == 2:
            return cast(MQTTErrorCode, own_handle())
        try:
            topic = packet.topic.decode()
        except UnicodeDecodeError:
            pass  # nothing to route it by
        else:
            deliver(Inbound(topic, bytes(packet.payload), packet.retain))
        return packet.mid if packet.qos == 1 else 0

    def handle_publish() -> MQTTErrorCode:
        packet = client._in_packet
        got = publish(packet["command"], packet["packet"])
        if isinstance(got, MQTTErrorCode):
            return got
        return client._send_puback(got) if got else MQTTErrorCode.MQTT_ERR_SUCCESS

    def packet_read() -> MQTTErrorCode:
        sock = client._sock
        if client._in_packet["command"] == 0 and isinstance(sock, BufferedReads):
            sock.fill()
            taken = sock.whole_packet(PUBLISH, QOS_0_OR_1)
            if taken is not None:
                acks = bytearray()
                try:
                    while taken is not None:
                        got = publish(*taken)
                        if isinstance(got, MQTTErrorCode):
                            return got
                        if got:
                            acks += _PUBACK.pack(PUBACK_BYTE, 2, got)
                        taken = sock.whole_packet(PUBLISH, QOS_0_OR_1)
                finally:
                    if acks:
                        # One write for every PUBACK of this read, in order, each still queued after its message
                        # was delivered: paho queues one packet per PUBACK, and writes each with a send of its
                        # own after waking its loop through its socket pair with another (two system calls a
                        # message, and a read of 4 bytes for the broker).
                        client._packet_queue(PUBACK_BYTE, bytes(acks), 0, 0)
                client._last_bytes_received = clock()  # what paho's reader notes for its keepalive
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return cast(MQTTErrorCode, own_read())

    client._handle_publish = handle_publish  # type: ignore[method-assign]
    client._packet_read = packet_read  # type: ignore[method-assign]


# -- the connection --------------------------------------------------------------------------------------------------


def _tls_context(mqtt: MqttSection) -> ssl.SSLContext | None:
    if not mqtt.url.tls:
        return None
    # Verified always (hostname and chain); a private CA goes in ca_file, there is no switch to turn it off.
    try:
        context = ssl.create_default_context(cafile=str(mqtt.ca_file) if mqtt.ca_file else None)
    except (OSError, ssl.SSLError) as e:
        raise BrokerUnavailable(f"mqtt.ca_file {mqtt.ca_file}: {e}") from None
    context.sslsocket_class = _ClosedOnFailedHandshake
    return context


class _ClosedOnFailedHandshake(ssl.SSLSocket):
    """paho (2.2) neither closes nor keeps the socket whose TLS handshake failed (a broker certificate that does
    not verify): it stayed open until the garbage collector found it, one more on every reconnect attempt."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _connect_properties(session_expiry: int) -> Properties | None:
    if session_expiry <= 0:
        return None
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry
    return properties


def _mapped(exc: BaseException, broker: str) -> BrokerError:
    """A foreign exception from aiomqtt, paho or the socket as one of ours."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, MqttConnectError):
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else None
        if code is not None and code >= FAILURE and code not in _CONNACK_TRANSIENT:
            return BrokerRefused(code, f"connection to {broker}")
        return BrokerUnavailable(f"{broker}: connection refused ({exc})")
    if isinstance(exc, aiomqtt.MqttError | OSError):
        return BrokerUnavailable(f"{broker}: {exc or type(exc).__name__}")
    raise exc  # a bug (a ValueError for a bad topic): not the network's fault, let it surface


class Connection:
    """One live MQTT v5 session: publish with the PUBACK's reason code, subscribe, receive.

    Built by `connect`; unusable once the connection is lost (every call then raises BrokerUnavailable) — the
    caller reconnects with a new one.
    """

    def __init__(self, client: aiomqtt.Client, broker: str) -> None:
        self.broker = broker
        self._client = client
        # aiomqtt does not hand out the message id of a publish nor the PUBACK's reason code: both live on the paho
        # client underneath, whose on_publish callback we chain in front of aiomqtt's.
        # Incoming messages are taken from paho's on_message straight into our queue too: aiomqtt's message
        # iterator costs a task and a wait per message, and is left with nothing but noticing the connection's end.
        # Both hooks are in place before the connection is made, so nothing slips past them.
        self._paho: paho.Client = client._client
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._lost: BrokerUnavailable | None = None
        self._pump: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        aiomqtt_on_publish = cast(Callable[..., None] | None, self._paho.on_publish)

        def on_publish(client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
            self._acked(mid, reason)
            if aiomqtt_on_publish is not None:
                aiomqtt_on_publish(client, userdata, mid, reason, properties)

        def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                return  # not a topic MQTT allows (the broker should have refused it): nothing to route it by
            self._inbox.put_nowait(Inbound(topic, bytes(message.payload), bool(message.retain)))

        self._paho.on_publish = on_publish
        self._paho.on_message = on_message
        _buffer_reads(self._paho)
        _lean_publish(self._paho, self._inbox.put_nowait)

    def _start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._watch())

    @property
    def connected(self) -> bool:
        return self._lost is None

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> asyncio.Future[None]:
        """Send now; the future resolves on the PUBACK (QoS 1): None on success, BrokerRefused with the reason
        code, or BrokerUnavailable if the connection ends first."""
        if self._lost is not None:
            raise self._lost
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"{self.broker}: cannot publish: {paho.error_string(info.rc)}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if qos == 0:
            future.set_result(None)
        else:
            self._acks[info.mid] = future
        return future

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float) -> None:
        """Publish and wait for the broker's answer; BrokerRefused or BrokerUnavailable when it is not a success."""
        future = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        if not await wait_done(future, timeout):
            raise BrokerUnavailable(f"{self.broker}: no PUBACK within {timeout:g} s")
        future.result()

    async def subscribe(self, filters: Iterable[str], *, qos: int = 1) -> None:
        """Subscribe to each filter; retained messages are sent (again) on every subscribe (retain handling 0), so
        a restarted subscriber recovers the latest state. BrokerRefused when the SUBACK refuses any filter."""
        options = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        topics = [(name, options) for name in filters]
        try:
            codes = await self._client.subscribe(topics, timeout=TIMEOUT_SECONDS)
        except Exception as e:
            raise _mapped(e, self.broker) from None
        _cancelled_meanwhile()
        for (name, _), code in zip(topics, codes, strict=True):
            value = code.value if isinstance(code, ReasonCode) else code
            if isinstance(value, int) and value >= FAILURE:
                raise BrokerRefused(value, f"subscription to {name}")

    async def receive(self, timeout: float | None = None) -> Inbound | None:
        """The next message, or None after `timeout` seconds without one; BrokerUnavailable once the connection
        is lost (after the messages received before that)."""
        if not self._inbox.empty():
            return self._inbox.get_nowait()
        if self._lost is not None:
            raise self._lost
        getter = asyncio.ensure_future(self._inbox.get())
        waiters: set[asyncio.Future[Any]] = {getter, self.closed}
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            getter.cancel()
        if getter in done:
            return getter.result()
        if self._lost is not None and self._inbox.empty():
            raise self._lost
        return None

    async def wait_closed(self) -> None:
        """Return when the connection is gone (never raises)."""
        await asyncio.shield(self.closed)

    def _acked(self, mid: int, reason: ReasonCode) -> None:
        future = self._acks.pop(mid, None)
        if future is None or future.done():
            return
        if reason.value >= FAILURE:
            future.set_exception(BrokerRefused(reason.value, "publish"))
        else:
            future.set_result(None)

    async def _watch(self) -> None:
        # aiomqtt's message iterator ends (MqttError) when the connection does, whether paho saw a clean
        # disconnect, a lost socket or a keepalive timeout: the one place that notices all three.
        error: BrokerUnavailable
        try:
            async for message in self._client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                self._inbox.put_nowait(Inbound(message.topic.value, payload, bool(message.retain)))
            error = BrokerUnavailable(f"{self.broker}: connection closed")
        except aiomqtt.MqttError as e:
            cause = e.__cause__
            error = BrokerUnavailable(f"{self.broker}: connection lost ({cause or e})")
        self._fail(error)

    def _fail(self, error: BrokerUnavailable) -> None:
        if self._lost is None:
            self._lost = error
        pending, self._acks = self._acks, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # a future nobody awaits any more is not "an exception never retrieved"
        if not self.closed.done():
            self.closed.set_result(None)

    async def _close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._fail(BrokerUnavailable(f"{self.broker}: connection closed"))


def make_client(
    mqtt: MqttSection,
    client_id: str,
    *,
    will: LastWill | None = None,
    clean_start: bool = True,
    session_expiry: int = 0,
    keepalive: int = KEEPALIVE_SECONDS,
) -> aiomqtt.Client:
    """An unconnected aiomqtt client for `mqtt` (whose password `load_mqtt_secrets` has read): MQTT v5, TLS
    verified for mqtts://."""
    return aiomqtt.Client(
        mqtt.url.host,
        mqtt.url.port,
        username=mqtt.username,
        password=mqtt.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=aiomqtt.Will(will.topic, will.payload, will.qos, will.retain) if will else None,
        clean_start=clean_start,
        properties=_connect_properties(session_expiry),
        keepalive=keepalive,
        timeout=TIMEOUT_SECONDS,
        tls_context=_tls_context(mqtt),
        logger=logging.getLogger("wgprobe.mqtt.paho"),
    )


_orphans: set[asyncio.Task[Any]] = set()


async def _enter(client: aiomqtt.Client, broker: str) -> None:
    """client.__aenter__, safe to cancel: aiomqtt connects in a worker thread and leaves a half-open socket behind
    if cancelled midway, so a cancelled connect finishes in the background and is closed there."""
    task = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        _orphans.add(task)
        task.add_done_callback(lambda done: _close_orphan(done, client))
        raise
    except Exception as e:
        raise _mapped(e, broker) from None


def _close_orphan(task: asyncio.Task[Any], client: aiomqtt.Client) -> None:
    _orphans.discard(task)
    if task.cancelled() or task.exception() is not None:
        return
    closing = asyncio.ensure_future(client.__aexit__(None, None, None))
    _orphans.add(closing)
    closing.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _orphans.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failed close of an abandoned connection is nobody's news


@contextlib.asynccontextmanager
async def connect(
    mqtt: MqttSection,
    client_id: str,
    *,
    will: LastWill | None = None,
    clean_start: bool = True,
    session_expiry: int = 0,
    keepalive: int = KEEPALIVE_SECONDS,
) -> AsyncIterator[Connection]:
    """A connection to the broker of `mqtt`, closed cleanly (DISCONNECT, so no last will) on exit.

    `clean_start=False` with a `session_expiry` in seconds keeps the session (subscriptions, QoS 1 messages
    queued while away) across reconnects. Raises BrokerUnavailable or BrokerRefused (bad credentials, a will the
    ACL refuses).
    """
    broker = str(mqtt.url)
    client = make_client(
        mqtt, client_id, will=will, clean_start=clean_start, session_expiry=session_expiry, keepalive=keepalive
    )
    connection = Connection(client, broker)
    await _enter(client, broker)
    connection._start()
    try:
        yield connection
    finally:
        await connection._close()
        # The connection is going away anyway: an error saying so again has nothing to add.
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)
