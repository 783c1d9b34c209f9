"""How results travel from an agent to an aggregator: the interfaces both sides of the bus are written against.

Two implementations: MQTT through a real broker (agents/outbox.py on the agent, probe/aggregator/subscriber.py on
the aggregator), and the in-process bus of `probe serve`, which hands the very same payload bytes and topics
straight to the aggregator's store. Either way the agent only ever *puts* messages into its outbox, which owns
delivery: a result is persisted before `put_result` returns and counts as delivered only when the receiving side
acknowledged it (for MQTT: the broker's PUBACK with a success reason code).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from probe.messages import AgentStatus, ResultMessage, result_topic, status_topic


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What an outbox has done, for the agent's own /metrics and status."""

    delivered: int = 0  # results acknowledged by the receiving side
    pending: int = 0  # results held (spooled) and not yet acknowledged
    pending_bytes: int = 0
    dropped: int = 0  # results given up: the spool's size or age bound, oldest first
    failures: dict[str, int] = field(default_factory=dict)  # publish failures by reason (a closed set of words)
    connected: bool = False
    oldest_pending_age_seconds: float | None = None


class Outbox(Protocol):
    """The agent's side of the bus."""

    def put_result(self, message: ResultMessage) -> None:
        """Take a result for delivery; it is persisted before this returns and is never blocked on the network."""

    def put_status(self, status: AgentStatus) -> None:
        """The agent's latest status (retained on the receiving side; only the newest matters)."""

    def put_clear(self, server: str) -> None:
        """Clear this agent's retained result for `server`, a relay dropped from its inventory: an empty retained
        message on its result topic (MQTT's deletion), after every result put before it. Without it the broker
        would hand the relay's last result to every aggregator start, for ever, to be refused as unknown_server."""

    async def run(self) -> None:
        """Deliver until cancelled; on cancellation, flush what can be delivered within its deadline and keep
        the rest persisted for the next start."""

    def stats(self) -> OutboxStats: ...


class LocalOutbox:
    """The in-process bus of `probe serve`: the same payload bytes and topics as over MQTT, handed to `deliver`
    (the aggregator's store) at once. Delivered means `deliver` returned; there is nothing to spool."""

    def __init__(self, agent: str, deliver: Callable[[str, bytes], object]) -> None:
        self.agent = agent
        self.deliver = deliver
        self._delivered = 0
        self._failures: dict[str, int] = {}

    def put_result(self, message: ResultMessage) -> None:
        self._send(result_topic(self.agent, message.server), message.model_dump_json().encode())
        self._delivered += 1

    def put_status(self, status: AgentStatus) -> None:
        self._send(status_topic(self.agent), status.model_dump_json().encode())

    def put_clear(self, server: str) -> None:
        self._send(result_topic(self.agent, server), b"")

    def _send(self, topic: str, payload: bytes) -> None:
        try:
            self.deliver(topic, payload)
        except Exception:  # the receiving side's bug must not stop the agent; counted like a refused publish
            self._failures["receiver_error"] = self._failures.get("receiver_error", 0) + 1
            raise

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to drive: delivery happens in put_*; runs until cancelled

    def stats(self) -> OutboxStats:
        return OutboxStats(delivered=self._delivered, failures=dict(self._failures), connected=True)
