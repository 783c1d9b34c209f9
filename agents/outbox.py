"""The agent's side of the bus over MQTT: results through the on-disk spool to the broker, with nothing lost.

Theory of operation:

- `put_result` writes the result to the spool and returns: it never waits on the network. `put_status` keeps the
  agent's latest status (in memory and in the spool).
- `run` connects (MQTT v5, clean session, a last will that is the agent's status with online=false, retained),
  publishes the latest status retained, then drains the spool oldest first: QoS 1, retained, on
  wgprobe/v1/results/<agent>/<server>, up to `window` publishes in flight. A result leaves the spool only when the
  broker's PUBACK says success. If the connection drops, everything still in the spool (in flight included) is sent
  again after the reconnect, oldest first, so a result can arrive twice (the aggregator de-duplicates by result_id)
  but never not at all, and never after a newer one that came behind it in the spool's order.
- Woken by a result, the drain lingers `linger` seconds (0.2) so the results right behind it go out with it: one
  read of the spool, one write to the socket, and one DELETE for the batch once its PUBACKs are in (settled results
  wait in memory for that DELETE only while the drain is busy; a crash before it re-sends them, like results in
  flight). That is the agent's CPU per result (issue 8), for up to `linger` of delay on the way to the aggregator.
- Reconnects back off exponentially with jitter, capped. The status is published again on every connect: the will
  may have replaced it with "offline" while we were away.
- Cancellation (SIGTERM in the agent) flushes what can be delivered within `flush_seconds`, publishes the status
  with online=false and disconnects cleanly (so no will is needed); what was not delivered stays in the spool for
  the next start.
- With `on_command` set, each connection also subscribes (QoS 1) to the agent's command topic,
  wgprobe/v1/commands/<agent>, and hands every message on it to `on_command(payload, topic)` (Agent.take_command,
  which judges it). The session is clean, so a command sent while the agent was away is never delivered late; the
  command's sender has stopped waiting by then anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agents.spool import Spool, Spooled
from probe.bus import OutboxStats
from probe.messages import AgentStatus, ResultMessage, command_topic, result_topic, status_topic
from probe.mqtt import (
    Backoff,
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    Connection,
    EventLog,
    LastWill,
    connect,
    connect_hint,
    event_log,
    wait_done,
)
from probe.service_config import MqttSection

FLUSH_SECONDS = 5.0
WINDOW = 32  # publishes in flight; paho and mosquitto both allow 20 by default, paho queues the rest in order
# Seconds the drain waits, once woken by a result, for the results behind it: they then go out together, read from
# the spool in one query and forgotten in one statement when acknowledged, for one wake-up of the drain and one
# write of paho's socket. At fleet rate (~35 results/s) that is a handful of results a batch instead of one, and
# a few hundred microseconds of CPU less per result (issue 8's CPU budget); the price is up to this much delay
# on the way to the aggregator, against a round of 15 s.
LINGER = 0.2
ACK_TIMEOUT = 30.0  # a connection that acknowledges nothing for this long is treated as lost
UNAVAILABLE = "unavailable"  # failures[] word for a broker that cannot be reached or dropped the connection
CommandHandler = Callable[[bytes, str], None]  # (payload, topic); never raises


@dataclass
class _Drain:
    """One connection's progress through the spool: what is in flight, and the last id sent."""

    connection: Connection
    cursor: int = 0
    status_sent: int = -1  # the status version last published on this connection
    inflight: deque[tuple[Spooled, asyncio.Future[None]]] = field(default_factory=deque)
    settled: list[int] = field(default_factory=list)  # acknowledged (or refused for good), still in the spool


class MqttOutbox:
    """probe.bus.Outbox over MQTT. One instance per agent process; `run` once."""

    def __init__(
        self,
        mqtt: MqttSection,
        agent: str,
        spool: Spool,
        *,
        now: Callable[[], float] = time.time,
        log: EventLog | logging.Logger | None = None,
        flush_seconds: float = FLUSH_SECONDS,
        window: int = WINDOW,
        ack_timeout: float = ACK_TIMEOUT,
        backoff: Backoff | None = None,
        on_command: CommandHandler | None = None,
        linger: float = LINGER,
    ) -> None:
        self.mqtt = mqtt
        self.on_command = on_command  # may be set after construction, before `run`
        self.agent = agent
        self.spool = spool
        self.now = now
        self.flush_seconds = flush_seconds
        self.window = window
        self.ack_timeout = ack_timeout
        self.linger = linger
        self.client_id = mqtt.client_id_for(agent)
        self._log = event_log(log, "wgprobe.outbox")
        self._backoff = backoff or Backoff()
        self._waiter: asyncio.Future[None] | None = None  # the drain's, while it sleeps with nothing to send
        self._status: AgentStatus | None = None
        self._status_version = 0
        self._delivered = 0
        self._failures: dict[str, int] = {}
        self._logged: set[str] = set()
        self._connected = False
        self._finished = False
        self._dropping = False
        self._commands_refused = False

    # -- the Outbox interface --------------------------------------------------------------------------------------

    def put_result(self, message: ResultMessage) -> None:
        """Spool one result for delivery (SpoolError if the disk refuses it). The topic is the message's own agent
        and server: the broker's ACL, not this method, decides whether this agent may publish there (a refusal is
        counted in stats().failures)."""
        before = self.spool.dropped
        self.spool.put(
            result_topic(message.agent, message.server), message.model_dump_json().encode(), message.result_id
        )
        if self.spool.dropped > before and not self._dropping:
            self._dropping = True  # logged once per outage: the count is in stats().dropped
            self._log(logging.WARNING, "spool full: dropping the oldest results", max_bytes=self.spool.max_bytes)
        self._wake()

    def clear_except(self, keep: Collection[str]) -> list[str]:
        """Spool the empty retained message that clears this agent's result on every topic the spool remembers
        (from this run or an earlier one) whose relay is not in `keep` (SpoolError as for a result): in the spool's
        order, so each goes out after the relay's last result, never before it. The relays cleared, sorted."""
        prefix = result_topic(self.agent, "")
        wanted = {result_topic(self.agent, server) for server in keep}
        gone = []
        for topic in sorted(self.spool.retained - wanted):
            if topic.startswith(prefix):
                self.spool.put(topic, b"", f"clear {topic}")
                gone.append(topic.removeprefix(prefix))
            # else a topic of this agent's former name, which the broker's ACL no longer lets it publish to: the
            # README says how to clear those by hand.
            self.spool.forget_retained(topic)
        if gone:
            self._wake()
        return gone

    def put_status(self, status: AgentStatus) -> None:
        self.spool.put_status(status.model_dump_json().encode())
        self._status = status
        self._status_version += 1
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def stats(self) -> OutboxStats:
        """`delivered` counts since this process started; `dropped` (the spool's bounds) since the spool was made."""
        oldest = self.spool.oldest_created()
        return OutboxStats(
            delivered=self._delivered,
            pending=self.spool.count,
            pending_bytes=self.spool.bytes,
            dropped=self.spool.dropped,
            failures=dict(self._failures),
            connected=self._connected,
            oldest_pending_age_seconds=None if oldest is None else max(0.0, self.now() - oldest),
        )

    async def run(self) -> None:
        try:
            await self._deliver_forever()
        except asyncio.CancelledError:
            if not self._finished:
                # Cancelled while not connected: one short attempt to deliver and say goodbye, then keep the rest.
                await self._bounded(self._one_last_session(), self.flush_seconds)
            raise

    # -- connecting ------------------------------------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        streak = 0
        while True:
            try:
                async with self._connect() as connection:
                    self._connected = True
                    self._log(logging.INFO, "connected to the broker", broker=connection.broker, attempts=streak + 1)
                    streak = 0
                    self._backoff.reset()
                    self._dropping = False
                    await self._serve(connection)
            except BrokerError as e:
                self._fail(_reason(e))
                if streak == 0:
                    hint = connect_hint(e)
                    extra = {} if hint is None else {"hint": hint}
                    level = logging.WARNING if hint is None else logging.ERROR  # not the network: it will not pass
                    self._log(level, "broker unavailable; results wait in the spool", error=str(e), **extra)
                streak += 1
            finally:
                self._connected = False
            await asyncio.sleep(self._backoff.next())

    def _connect(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        return connect(self.mqtt, self.client_id, will=LastWill(status_topic(self.agent), self._offline_payload()))

    async def _serve(self, connection: Connection) -> None:
        drain = _Drain(connection)
        listening = None
        try:
            # Subscribed before the status goes out: an agent the aggregator sees online takes commands.
            if self.on_command is not None and await self._subscribe_commands(connection):
                listening = asyncio.ensure_future(self._listen(connection, self.on_command))
            await self._drain(drain, forever=True)
        except asyncio.CancelledError:
            self._finished = True
            await self._bounded(self._goodbye(drain), self.flush_seconds)
            raise
        finally:
            if listening is not None:
                listening.cancel()
                await asyncio.wait({listening})
                if not listening.cancelled() and (error := listening.exception()) is not None:
                    self._log(logging.ERROR, "command listener failed", error=f"{type(error).__name__}: {error}")

    async def _subscribe_commands(self, connection: Connection) -> bool:
        """Subscribe to this agent's command topic; False when the broker refuses (the drain goes on regardless,
        and a lost connection is the drain's to notice)."""
        topic = command_topic(self.agent)
        try:
            await connection.subscribe([topic], qos=1)
        except BrokerRefused as e:
            if not self._commands_refused:  # once: results still flow, only commands cannot come
                self._commands_refused = True
                self._log(logging.ERROR, "command subscription refused by the broker", reason=e.reason, topic=topic)
            return False
        except BrokerUnavailable:
            return False
        return True

    async def _listen(self, connection: Connection, handler: CommandHandler) -> None:
        """Commands on this agent's topic to `handler`, for as long as the connection lasts (the drain notices its
        end and reconnects)."""
        while True:
            try:
                message = await connection.receive()
            except BrokerUnavailable:
                return
            if message is None:
                continue
            try:
                handler(message.payload, message.topic)
            except Exception as e:
                # A bug in handling one command must not stop the results of the whole fleet: said, and gone on.
                self._log(logging.ERROR, "command handling failed", error=f"{type(e).__name__}: {e}")

    async def _one_last_session(self) -> None:
        self._finished = True
        try:
            async with self._connect() as connection:
                await self._goodbye(_Drain(connection))
        except BrokerError as e:
            self._log(logging.INFO, "broker unavailable at shutdown; results kept in the spool", error=str(e))

    async def _goodbye(self, drain: _Drain) -> None:
        """Deliver what can be in most of the time left, then say offline."""
        reserve = min(1.0, self.flush_seconds / 4)
        drain.status_sent = self._status_version  # about to say offline: the online status need not go first
        flush = asyncio.ensure_future(self._drain(drain, forever=False))
        try:
            if not await wait_done(flush, self.flush_seconds - reserve):
                self._log(logging.INFO, "flush incomplete at the deadline; the rest stays in the spool")
            elif flush.exception() is not None:
                self._log(logging.INFO, "flush incomplete; the rest stays in the spool", error=str(flush.exception()))
        finally:
            flush.cancel()
        with contextlib.suppress(BrokerError):
            await self._publish_status(drain.connection, self._offline_payload(), timeout=reserve)
        self._log(logging.INFO, "outbox closed", pending=self.spool.count, delivered=self._delivered)

    async def _bounded(self, work: Coroutine[Any, Any, None], seconds: float) -> None:
        """Run `work` in a task of its own for at most `seconds`: awaited from a task that is being cancelled, a
        plain await would be cut short by the next cancellation, and `asyncio.timeout` misjudges whose it is."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=seconds + 1.0)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        error = None if task.cancelled() else task.exception()
        if error is not None:  # the shutdown goes on: the cancellation it serves is re-raised by the caller
            self._log(logging.ERROR, "outbox shutdown failed", error=f"{type(error).__name__}: {error}")

    # -- draining --------------------------------------------------------------------------------------------------

    async def _drain(self, drain: _Drain, *, forever: bool) -> None:
        """Publish the status when it changed, and the spool oldest first; return when all is delivered unless
        `forever`. Raises BrokerUnavailable when the connection is lost."""
        try:
            while True:
                if self._status is not None and drain.status_sent != self._status_version:
                    version = self._status_version
                    await self._publish_status(drain.connection, self._status.model_dump_json().encode())
                    drain.status_sent = version
                if len(drain.inflight) < self.window:
                    for row in self.spool.peek(self.window - len(drain.inflight), after=drain.cursor):
                        published = drain.connection.publish_nowait(row.topic, row.payload, retain=True)
                        drain.inflight.append((row, published))
                        drain.cursor = row.id
                if drain.inflight:
                    await self._settle(drain)
                    if len(drain.settled) >= self.window:
                        self._forget(drain)
                elif not forever:
                    return
                elif drain.status_sent == self._status_version or self._status is None:
                    self._forget(drain)
                    await self._sleep(drain.connection)
        finally:
            self._forget(drain)

    def _forget(self, drain: _Drain) -> None:
        """Take the settled results out of the spool, in one statement. Settled results wait for this in memory
        only while the drain is busy: their PUBACKs come in over several reads, and one DELETE for them all
        costs what one for each would. A crash before it sends them again, as for results in flight: at least
        once, and the aggregator drops the copy by its result_id."""
        settled, drain.settled = drain.settled, []
        self.spool.ack(settled)

    async def _sleep(self, connection: Connection) -> None:
        """Nothing left to send: sleep until a put or the end of the connection, then linger for the results
        right behind the first. Nothing can be put between the drain's last look at the spool and this wait:
        there is no await in between."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((self._waiter, connection.closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiter = None
        if not connection.connected:
            raise BrokerUnavailable(f"{connection.broker}: connection lost")
        if self.linger > 0:
            await asyncio.sleep(self.linger)

    async def _settle(self, drain: _Drain) -> None:
        """Wait for the oldest publish in flight, then take every answer that has come in, in order."""
        if not await wait_done(drain.inflight[0][1], self.ack_timeout):
            raise BrokerUnavailable(f"{drain.connection.broker}: no PUBACK within {self.ack_timeout:g} s")
        while drain.inflight and drain.inflight[0][1].done():
            row, future = drain.inflight[0]
            error = future.exception()
            if isinstance(error, BrokerRefused):
                # A refusal by reason code (the ACL's not_authorized, a quota) is final: the same message will
                # never be accepted, and keeping it would block every result behind it. Counted and dropped.
                self._refused(error, row.topic)
            elif error is not None:
                raise error
            elif row.payload:  # a clear (clear_except) is no result delivered
                self._delivered += 1
            drain.settled.append(row.id)  # taken out of the spool by `_forget`
            drain.inflight.popleft()

    async def _publish_status(self, connection: Connection, payload: bytes, *, timeout: float | None = None) -> None:
        try:
            await connection.publish(
                status_topic(self.agent), payload, retain=True, timeout=timeout or self.ack_timeout
            )
        except BrokerRefused as e:
            self._refused(e, status_topic(self.agent))

    def _offline_payload(self) -> bytes:
        moment = datetime.fromtimestamp(self.now(), UTC)
        if self._status is None:
            return AgentStatus(agent=self.agent, online=False, updated_at=moment).model_dump_json().encode()
        return self._status.model_copy(update={"online": False, "updated_at": moment}).model_dump_json().encode()

    def _refused(self, error: BrokerRefused, topic: str) -> None:
        self._fail(error.reason)
        if error.reason not in self._logged:
            self._logged.add(error.reason)  # once per reason: the count goes on in stats().failures
            self._log(logging.ERROR, "publish refused by the broker; message dropped", reason=error.reason, topic=topic)

    def _fail(self, reason: str) -> None:
        self._failures[reason] = self._failures.get(reason, 0) + 1


def _reason(error: BrokerError) -> str:
    return error.reason if isinstance(error, BrokerRefused) else UNAVAILABLE
