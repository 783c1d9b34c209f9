"""The aggregator's MQTT shell: every result and agent status from the broker into the result store.

A persistent session (MQTT v5 clean_start=false, a session expiry, a client id stable across restarts) with QoS 1
subscriptions to every agent's results and status, so what agents publish while the aggregator is briefly away is
queued by the broker rather than lost. On every (re)subscribe the broker also sends the retained messages, the
latest result per agent and relay and every agent's status: a restarted aggregator has the whole fleet again within
seconds. `settled` is set once that first retained burst has gone quiet, so the shell starts judging (`refresh`)
on the whole fleet's state rather than on the first agent's alone.

The store validates and counts; a bad message costs one log line per sender and reason (`first_from_sender`) and
never stops the consumer.

The same connection carries the aggregator's one kind of publish: a verification's command to an agent
(`send_command`: wgprobe/v1/commands/<agent>, QoS 1, not retained, so a command is never replayed to an agent that
connects later). While the connection is down, a command is refused at once rather than queued: the verification
asking for it waits on answers, not on the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from probe.aggregator.intake import Ingested, Outcome
from probe.messages import RESULTS_FILTER, STATUS_FILTER, TOPIC_ROOT, command_topic
from probe.mqtt import (
    Backoff,
    BrokerError,
    BrokerUnavailable,
    Connection,
    EventLog,
    Inbound,
    connect,
    connect_hint,
    event_log,
)
from probe.service_config import MqttSection

SESSION_EXPIRY_SECONDS = 86400  # the broker keeps our session (and queues for it) a day after we vanish
SETTLE_SECONDS = 2.0  # quiet after the last retained message before the initial state counts as received
COMMAND_ACK_SECONDS = 5.0  # the broker's PUBACK for a command, at most
SHORT_LIVED = 10.0  # seconds: a connection the broker drops sooner than this counts toward FLAPPING
FLAPPING = 3  # short-lived connections in a row before the log asks about a shared client id
FLAPPING_EVENT = "connection dropped soon after connecting, again and again"
_RESULTS_PREFIX = f"{TOPIC_ROOT}/results/"
# Drops that are MQTT at work, not a problem: a re-send (QoS 1, the retained results on every reconnect) and a
# retained message cleared (an empty payload).
_ROUTINE = frozenset({Outcome.duplicate, Outcome.cleared})


class MessageSink(Protocol):
    """What the subscriber feeds: probe.aggregator.store.ResultStore (or a recorder around one, in tests)."""

    def ingest_result(self, payload: bytes | bytearray, topic: str) -> Ingested: ...

    def ingest_status(self, payload: bytes | bytearray, topic: str, *, live: bool = True) -> Ingested: ...

    def broker_connection(self, up: bool) -> int: ...


class Subscriber:
    def __init__(
        self,
        mqtt: MqttSection,
        name: str,
        store: MessageSink,
        *,
        log: EventLog | logging.Logger | None = None,
        settle_seconds: float = SETTLE_SECONDS,
        session_expiry: int = SESSION_EXPIRY_SECONDS,
        backoff: Backoff | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.store = store
        self.client_id = mqtt.client_id_for(name)
        self.settle_seconds = settle_seconds
        self.session_expiry = session_expiry
        self.settled = asyncio.Event()  # the first retained burst after start-up has been ingested
        self.connected = False
        self.received = 0  # messages handed to the store since start
        self._log = event_log(log, "wgprobe.subscriber")
        self._backoff = backoff or Backoff()
        self._connection: Connection | None = None

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with backoff and jitter."""
        streak = 0
        short = 0  # connections in a row that the broker dropped soon after they were made
        self.store.broker_connection(False)  # not yet: wgprobe_aggregator_broker_connected 0 until subscribed
        while True:
            since = None
            try:
                async with connect(
                    self.mqtt, self.client_id, clean_start=False, session_expiry=self.session_expiry
                ) as connection:
                    await connection.subscribe((RESULTS_FILTER, STATUS_FILTER), qos=1)
                    self.connected, self._connection = True, connection
                    self.store.broker_connection(True)
                    since = time.monotonic()
                    self._log(logging.INFO, "subscribed", broker=connection.broker, attempts=streak + 1)
                    streak = 0
                    self._backoff.reset()
                    await self._consume(connection)
            except BrokerError as e:
                if streak == 0:
                    level = logging.WARNING if isinstance(e, BrokerUnavailable) else logging.ERROR
                    hint = connect_hint(e)
                    extra = {} if hint is None else {"hint": hint}
                    self._log(level, "broker unavailable; reconnecting", error=str(e), **extra)
                streak += 1
                short = short + 1 if since is not None and time.monotonic() - since < SHORT_LIVED else 0
                if short == FLAPPING:
                    # A broker drops the older of two clients with one client id, and the reason code it gives
                    # (mosquitto: "Unspecified error") does not say so: two aggregators with the same name take
                    # turns for ever. Said once per run of drops.
                    self._log(
                        logging.WARNING,
                        FLAPPING_EVENT,
                        client_id=self.client_id,
                        drops=short,
                        hint="is another client using this client id (two aggregators with the same [aggregator] "
                        "name or [mqtt] client_id)?",
                    )
            finally:
                if self.connected:
                    self._lost()
                self.connected, self._connection = False, None
            await asyncio.sleep(self._backoff.next())

    def _lost(self) -> None:
        held = self.store.broker_connection(False)
        if held:
            # mosquitto publishes every connected client's last will as it shuts down: see
            # probe.aggregator.store.WILL_GRACE.
            self._log(
                logging.INFO,
                "last wills held",
                agents=held,
                why="they came just before the broker dropped us, as a broker's own shutdown sends them",
            )

    async def send_command(self, agent: str, payload: bytes) -> None:
        """Publish a command to `agent` and wait for the broker's PUBACK: BrokerUnavailable while not connected or
        without an answer in time, BrokerRefused when the broker refuses it (the ACL: 0x87 not_authorized)."""
        connection = self._connection
        if connection is None or not connection.connected:
            raise BrokerUnavailable("not connected to the broker")
        await connection.publish(command_topic(agent), payload, qos=1, retain=False, timeout=COMMAND_ACK_SECONDS)

    async def _consume(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + self.settle_seconds
        burst = 0
        while True:
            timeout = None if self.settled.is_set() else max(0.0, quiet_until - loop.time())
            message = await connection.receive(timeout)
            if message is None:
                self.settled.set()
                self._log(logging.INFO, "retained state received", retained=burst)
                continue
            if message.retain and not self.settled.is_set():
                burst += 1
                quiet_until = loop.time() + self.settle_seconds
            self._ingest(message)

    def _ingest(self, message: Inbound) -> None:
        self.received += 1
        if message.topic.startswith(_RESULTS_PREFIX):
            ingested = self.store.ingest_result(message.payload, message.topic)
        else:
            # A retained status is handed out at subscription, whenever it was published: only a live one says how
            # its agent's clock stands against ours.
            ingested = self.store.ingest_status(message.payload, message.topic, live=not message.retain)
        if not ingested.accepted and ingested.first_from_sender:
            # A duplicate or a cleared retained message is MQTT at work (_ROUTINE): worth a line, not a warning.
            self._log(
                logging.INFO if ingested.outcome in _ROUTINE else logging.WARNING,
                "message dropped",
                reason=str(ingested.outcome),
                sender=ingested.sender or "-",
                detail=ingested.detail,
            )
