"""Initiations retransmitted until one is answered: the client's handshake over a lossy path, sans-I/O.

Theory of operation
-------------------
A probe wants a session fast and must not call a lossy relay dead. One initiation per second, three times, fails a
path that loses 20% of packets each way about 5% of the time (0.36 ** 3), so initiations go out sooner and more
often: the first retransmission after `first_gap`, each later gap `growth` times longer, up to `max_gap`, at most
`max_initiations` in all. The caller spaces initiations of one key to one relay past the relay's 20 ms flood
limit (`InitiationPacer` in probe/tunnel.py): that is shared across paths, so it is not decided here.

Every initiation is its own `InitiatorHandshake` (own ephemeral key and sender index), and all stay pending, so a
response to any of them completes the handshake: a response that is late rather than lost still counts. One
subtlety decides which session to use. A relay keeps one handshake per client key, and each initiation it consumes
replaces the previous one and deletes its keys (wireguard-go `BeginSymmetricSession`). A response to initiation i
is therefore only safe when no later initiation j reached the relay. When later initiations are outstanding, the
answer to i tells the round-trip time, and the handshake *settles*: it sends nothing more and waits until each
later initiation's response is due (its send time plus 1.5 round trips), then takes the latest answered one. When
`first_gap` is at least a few round trips (the runner derives it from the relay's last handshake), a later
initiation is only ever outstanding because an earlier one was lost, and settling costs nothing.

A cookie reply (relay under load) is taken by the initiation it answers; the next initiation then carries mac2 and
goes out at once, and does not count against the budget (at most `max_initiations` extra), as before.

Datagrams that are not a valid response or cookie reply to a pending initiation (forged, corrupted, for another
index, garbage) are counted in `rejected` and change nothing. Time comes in as two numbers: `now` (any monotonic
clock, for the schedule) and `wall` (Unix seconds, for the TAI64N timestamp and cookie lifetimes).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from probe.wireguard.constants import MESSAGE_COOKIE_REPLY, MESSAGE_RESPONSE
from probe.wireguard.cookie import CookieState
from probe.wireguard.errors import ProtocolError
from probe.wireguard.handshake import InitiatorHandshake
from probe.wireguard.identity import Identity
from probe.wireguard.keys import PublicKey
from probe.wireguard.messages import message_type
from probe.wireguard.session import TransportSession

# A later initiation's response is due one round trip after it was sent; half a round trip more (and a few ms of
# timer slack) before giving up on it.
SETTLE_RTTS = 1.5
SETTLE_SLACK = 0.005


class Schedule(NamedTuple):
    """When to retransmit: the gap after initiation k is min(max_gap, first_gap * growth**k)."""

    first_gap: float = 0.2
    max_gap: float = 1.0
    growth: float = 1.5
    max_initiations: int = 7

    def gap(self, index: int) -> float:
        return min(self.max_gap, self.first_gap * self.growth**index)


class _Pending:
    """One initiation sent. A plain class: a dataclass is ~1 ms of start-up on CPython 3.11."""

    __slots__ = ("answered_at", "handshake", "sent_at", "session")

    def __init__(self, handshake: InitiatorHandshake, sent_at: float) -> None:
        self.handshake = handshake
        self.sent_at = sent_at
        self.answered_at: float | None = None
        self.session: TransportSession | None = None


@dataclass(slots=True)
class HandshakeAttempts:
    """One probe path's handshake: which initiation to send when, and which answer to keep."""

    identity: Identity
    relay_key: PublicKey
    schedule: Schedule = field(default_factory=Schedule)
    cookie_state: CookieState | None = None
    preshared_key: bytes | None = None
    randbytes: Callable[[int], bytes] = os.urandom
    pending: list[_Pending] = field(default_factory=list)
    cookies: int = 0  # cookie replies taken
    rejected: int = 0  # datagrams that were not a valid answer to any pending initiation
    _cookie_due: bool = False
    _settle_until: float | None = None

    def __post_init__(self) -> None:
        if self.cookie_state is None:
            self.cookie_state = CookieState(self.relay_key)

    @property
    def initiations(self) -> int:
        return len(self.pending)

    @property
    def responses(self) -> int:
        return sum(1 for p in self.pending if p.session is not None)

    def _budget(self) -> int:
        return self.schedule.max_initiations + min(self.cookies, self.schedule.max_initiations)

    def next_initiation_at(self) -> float | None:
        """When the next initiation is due (None: none will be sent, whatever happens next)."""
        if self.responses or len(self.pending) >= self._budget():
            return None
        if not self.pending or self._cookie_due:
            return float("-inf")  # now
        return self.pending[-1].sent_at + self.schedule.gap(len(self.pending) - 1)

    def initiation(self, now: float, wall: float) -> bytes:
        """A new initiation (new ephemeral key and index); the older ones stay pending."""
        handshake = InitiatorHandshake(
            self.identity,
            self.relay_key,
            self.preshared_key,
            randbytes=self.randbytes,
            cookie_state=self.cookie_state,
        )
        message = handshake.create_initiation(wall)
        self.pending.append(_Pending(handshake, now))
        self._cookie_due = False
        return message

    def receive(self, data: bytes, now: float, wall: float) -> None:
        """Take one datagram from the relay; anything that is not a valid answer is counted and dropped."""
        kind = message_type(data) if len(data) >= 4 else None
        index = int.from_bytes(data[8:12] if kind == MESSAGE_RESPONSE else data[4:8], "little") if kind else None
        target = next((p for p in self.pending if p.handshake.sender_index == index), None)
        if target is None or target.session is not None or kind not in (MESSAGE_RESPONSE, MESSAGE_COOKIE_REPLY):
            self.rejected += 1
            return
        try:
            session = target.handshake.receive(data, wall)
        except ProtocolError:
            self.rejected += 1
            return
        if session is None:  # a cookie reply: retry at once with mac2
            self.cookies += 1
            self._cookie_due = True
            return
        target.session, target.answered_at = session, now
        self._settle(target)

    def _settle(self, answered: _Pending) -> None:
        """After an answer, wait for the answers of later initiations that are still due (see the module doc)."""
        rtt = max(0.0, (answered.answered_at or answered.sent_at) - answered.sent_at)
        later = [p for p in self.pending if p.sent_at > answered.sent_at and p.session is None]
        until = max((p.sent_at + SETTLE_RTTS * rtt + SETTLE_SLACK for p in later), default=None)
        if until is not None:
            self._settle_until = until if self._settle_until is None else max(self._settle_until, until)

    def wake_at(self, now: float) -> float:
        """When the caller should look again at the latest (a datagram may wake it sooner)."""
        if self.responses:
            return self._settle_until if self._settle_until is not None else now
        due = self.next_initiation_at()
        if due is not None:
            return due
        # Budget spent: the last initiation gets one more gap to be answered.
        return self.pending[-1].sent_at + self.schedule.gap(len(self.pending) - 1) if self.pending else now

    def finished(self, now: float) -> bool:
        if self.responses:
            # Done when the newest initiation is answered (nothing later can replace it on the relay), or when
            # the answers of the later ones are overdue.
            newest_answered = self.pending[-1].session is not None
            return newest_answered or self._settle_until is None or now >= self._settle_until
        return self.next_initiation_at() is None and now >= self.wake_at(now)

    def session(self) -> TransportSession | None:
        """The session of the latest answered initiation: the one the relay keeps."""
        answered = [p for p in self.pending if p.session is not None]
        return answered[-1].session if answered else None

    def handshake_seconds(self) -> float:
        """Round-trip time of the kept initiation (its send to its answer)."""
        answered = [p for p in self.pending if p.answered_at is not None]
        if not answered:
            return 0.0
        last = answered[-1]
        return (last.answered_at or last.sent_at) - last.sent_at

    def settled_counts(self, now: float, in_flight: float) -> tuple[int, int]:
        """(initiations, responses) counting only initiations sent more than `in_flight` seconds before `now`
        or answered: one sent just before the end had no time to be answered and is not a loss."""
        settled = [p for p in self.pending if p.session is not None or p.sent_at <= now - in_flight]
        return len(settled), sum(1 for p in settled if p.session is not None)
