"""How results travel from an agent to an aggregator: the interfaces both sides of the bus are written against.

Two implementations: MQTT through a real broker (agents/outbox.py on the agent, probe/aggregator/subscriber.py on
the aggregator), and the in-process bus of `probe serve`, which hands the very same payload bytes and topics
straight to the aggregator's store. Either way the agent only ever *puts* messages into its outbox, which owns
delivery: a result is persisted before `put_result` returns and counts as delivered only when the receiving side
acknowledged it (for MQTT: the broker's PUBACK with a success reason code).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
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

    def clear_except(self, keep: Collection[str]) -> list[str]:
        """Clear this agent's retained result of every relay it has published one for that is not in `keep` (the
        inventory): an empty retained message on the relay's result topic (MQTT's deletion), after every result put
        before it. The relays cleared, sorted. Without it the broker hands a retired relay's last result to every
        aggregator start, for ever, to be refused as unknown_server."""
        ...

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
        self._published: set[str] = set()  # relays a result was delivered for

    def put_result(self, message: ResultMessage) -> None:
        self._send(result_topic(self.agent, message.server), message.model_dump_json().encode())
        self._published.add(message.server)
        self._delivered += 1

    def put_status(self, status: AgentStatus) -> None:
        self._send(status_topic(self.agent), status.model_dump_json().encode())

    def clear_except(self, keep: Collection[str]) -> list[str]:
        # Nothing outlives the process here, so only what this process published (the bus has no broker to keep
        # anything, but the aggregator hears the clear as it would over MQTT).
        gone = sorted(self._published.difference(keep))
        for server in gone:
            self._send(result_topic(self.agent, server), b"")
            self._published.discard(server)
        return gone

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
