"""How results travel from an agent to an aggregator: the interfaces both sides of the bus are written against.

Two implementations: MQTT through a real broker (agents/outbox.py on the agent, probe/aggregator/subscriber.py on
the aggregator), and the in-process bus of `probe serve`, which hands the very same payload bytes and topics
straight to the aggregator's store. Either way the agent only ever *puts* messages into its outbox, which owns
delivery: a result is persisted before `put_result` returns and counts as delivered only when the receiving side
acknowledged it (for MQTT: the broker's PUBACK with a success reason code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from probe.messages import AgentStatus, ResultMessage


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

    async def run(self) -> None:
        """Deliver until cancelled; on cancellation, flush what can be delivered within its deadline and keep
        the rest persisted for the next start."""

    def stats(self) -> OutboxStats: ...
