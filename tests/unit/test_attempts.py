"""The handshake's retransmission logic with a fake clock: which initiation goes out when, which answer is kept,
and what is counted, against the sans-I/O responder in memory."""

from __future__ import annotations

import os

import pytest

from probe.tunnel import INITIATION_SPACING, InitiationPacer
from probe.wireguard import (
    CookieChecker,
    CookieRequired,
    HandshakeAccepted,
    Identity,
    PrivateKey,
    Responder,
    TransportSession,
)
from probe.wireguard.attempts import SETTLE_RTTS, SETTLE_SLACK, HandshakeAttempts, Schedule

WALL = 1_800_000_000.0
SCHEDULE = Schedule(first_gap=0.2, max_gap=1.0, growth=1.5, max_initiations=5)


class Peers:
    def __init__(self, schedule: Schedule = SCHEDULE) -> None:
        self.client = Identity(PrivateKey.generate())
        self.relay = Identity(PrivateKey.generate())
        self.checker = CookieChecker(self.relay.public_key)
        self.responder = Responder(self.relay, {self.client.public_key: None}, cookie_checker=self.checker)
        self.attempts = HandshakeAttempts(self.client, self.relay.public_key, schedule)

    def send(self, now: float) -> bytes:
        due = self.attempts.next_initiation_at()
        assert due is not None and now >= due, (now, due)
        return self.attempts.initiation(now, WALL + now)

    def answer(self, initiation: bytes, now: float) -> HandshakeAccepted:
        accepted = self.responder.consume_initiation(initiation, WALL + now)
        assert isinstance(accepted, HandshakeAccepted)
        return accepted


def works_with(session: TransportSession | None, accepted: HandshakeAccepted) -> bool:
    assert session is not None
    return accepted.session.decrypt(session.encrypt(b"ping")).startswith(b"ping")


def test_gaps_grow_from_the_first_to_the_cap() -> None:
    assert [SCHEDULE.gap(k) for k in range(6)] == pytest.approx([0.2, 0.3, 0.45, 0.675, 1.0, 1.0])


def test_the_first_initiation_answered_finishes_at_once() -> None:
    p = Peers()
    assert p.attempts.next_initiation_at() == float("-inf")  # the first one is due now
    accepted = p.answer(p.send(0.0), 0.001)
    assert not p.attempts.finished(0.0005)
    p.attempts.receive(accepted.response, 0.002, WALL)
    assert p.attempts.finished(0.002) and works_with(p.attempts.session(), accepted)
    assert p.attempts.handshake_seconds() == pytest.approx(0.002)
    assert p.attempts.settled_counts(0.002, 0.004) == (1, 1)
    assert p.attempts.next_initiation_at() is None  # nothing more is ever sent


def test_a_lost_initiation_is_sent_again_after_the_first_gap_and_counts_as_loss() -> None:
    p = Peers()
    p.send(0.0)  # lost
    assert p.attempts.next_initiation_at() == pytest.approx(0.2)
    assert not p.attempts.finished(0.19) and p.attempts.wake_at(0.19) == pytest.approx(0.2)
    accepted = p.answer(p.send(0.2), 0.201)
    p.attempts.receive(accepted.response, 0.202, WALL)
    assert p.attempts.finished(0.202) and works_with(p.attempts.session(), accepted)
    assert p.attempts.settled_counts(0.202, 0.004) == (2, 1)


def test_a_late_answer_to_an_earlier_initiation_waits_for_the_later_one_and_keeps_the_relays_choice() -> None:
    """The relay keeps only the latest initiation it consumed: an answer to an earlier one is only used when the
    later initiation's answer is overdue."""
    p = Peers()
    first = p.send(0.0)
    second = p.send(0.2)  # the first answer is still in flight: the relay is 300 ms away
    a1, a2 = p.answer(first, 0.15), p.answer(second, 0.35)
    p.attempts.receive(a1.response, 0.3, WALL)
    settle = 0.2 + SETTLE_RTTS * 0.3 + SETTLE_SLACK
    assert not p.attempts.finished(0.31) and p.attempts.wake_at(0.31) == pytest.approx(settle)
    assert p.attempts.next_initiation_at() is None  # settling sends nothing more
    p.attempts.receive(a2.response, 0.5, WALL)
    assert p.attempts.finished(0.5) and works_with(p.attempts.session(), a2)
    assert p.attempts.settled_counts(0.5, 0.6) == (2, 2)


def test_a_late_answer_is_kept_when_the_later_initiations_answer_never_comes() -> None:
    p = Peers()
    first = p.send(0.0)
    p.send(0.2)  # lost on the way: the relay still holds the first handshake
    a1 = p.answer(first, 0.15)
    p.attempts.receive(a1.response, 0.3, WALL)
    settle = 0.2 + SETTLE_RTTS * 0.3 + SETTLE_SLACK
    assert not p.attempts.finished(settle - 0.001)
    assert p.attempts.finished(settle) and works_with(p.attempts.session(), a1)


def test_no_answer_sends_the_budget_then_waits_the_last_gap() -> None:
    p = Peers()
    now, sent = 0.0, []
    while (due := p.attempts.next_initiation_at()) is not None:
        now = max(now, due)
        p.send(now)
        sent.append(now)
    assert sent == pytest.approx([0.0, 0.2, 0.5, 0.95, 1.625])
    assert not p.attempts.finished(now + 0.999)
    assert p.attempts.finished(now + 1.0) and p.attempts.session() is None
    assert p.attempts.settled_counts(float("inf"), 0.0) == (5, 0)


def test_a_cookie_reply_makes_the_next_initiation_due_at_once_with_mac2_and_an_extra_turn() -> None:
    p = Peers(Schedule(first_gap=0.2, max_gap=1.0, max_initiations=1))
    source = b"\x7f\0\0\1\x30\x39"
    cookie = p.responder.consume_initiation(p.send(0.0), WALL, source=source, under_load=True)
    assert isinstance(cookie, CookieRequired)
    p.attempts.receive(cookie.cookie_reply, 0.001, WALL + 0.001)
    assert p.attempts.cookies == 1 and p.attempts.next_initiation_at() == float("-inf")
    again = p.send(0.001)  # beyond max_initiations=1: the cookie earned it
    accepted = p.responder.consume_initiation(again, WALL + 0.002, source=source, under_load=True)
    assert isinstance(accepted, HandshakeAccepted)  # mac2 carried the cookie
    p.attempts.receive(accepted.response, 0.003, WALL + 0.003)
    assert p.attempts.finished(0.003) and works_with(p.attempts.session(), accepted)


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x02",
        os.urandom(92),
        b"\x02\0\0\0" + os.urandom(88),
        b"\x03\0\0\0" + os.urandom(60),
        b"\x04\0\0\0" + os.urandom(60),
    ],
)
def test_anything_but_a_valid_answer_is_counted_and_changes_nothing(junk: bytes) -> None:
    p = Peers()
    accepted = p.answer(p.send(0.0), 0.001)
    p.attempts.receive(junk, 0.001, WALL)
    forged = bytearray(accepted.response)
    forged[20] ^= 1  # the ephemeral key: mac1 breaks
    p.attempts.receive(bytes(forged), 0.001, WALL)
    assert p.attempts.rejected == 2 and p.attempts.session() is None
    p.attempts.receive(accepted.response, 0.002, WALL)
    p.attempts.receive(accepted.response, 0.002, WALL)  # a duplicate of a taken answer
    assert p.attempts.rejected == 3 and works_with(p.attempts.session(), accepted)


def test_in_flight_initiations_are_not_counted_as_lost() -> None:
    p = Peers(Schedule(first_gap=0.025, max_gap=1.0, max_initiations=5))
    p.send(0.0)  # lost
    accepted = p.answer(p.send(0.025), 0.0251)
    p.attempts.receive(accepted.response, 0.0252, WALL)
    # The second was answered in 0.2 ms; the first, sent 25 ms earlier, had its time: it is a loss.
    assert p.attempts.settled_counts(0.0252, 0.0004) == (2, 1)
    assert p.attempts.settled_counts(0.0252, 0.03) == (1, 1)  # with a long round trip it would still be in flight


def test_pacer_spaces_one_keys_initiations_to_one_relay_and_only_those() -> None:
    now = [100.0]
    pacer = InitiationPacer(clock=lambda: now[0])
    a, b = Identity(PrivateKey.generate()), Identity(PrivateKey.generate())
    relay1, relay2 = PrivateKey.generate().public_key(), PrivateKey.generate().public_key()
    assert pacer.delay(a, relay1) == 0.0
    assert pacer.delay(a, relay1) == pytest.approx(INITIATION_SPACING)
    assert pacer.delay(a, relay2) == 0.0 and pacer.delay(b, relay1) == 0.0  # other relay, other key: no wait
    now[0] += INITIATION_SPACING - 0.001
    assert pacer.delay(a, relay1) == pytest.approx(0.001)
    now[0] += 0.001
    assert pacer.delay(a, relay1) == 0.0
    assert INITIATION_SPACING > 0.020  # past wireguard-go's flood limit
