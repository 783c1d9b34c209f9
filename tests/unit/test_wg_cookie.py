"""mac1/mac2 and the cookie path of a responder under load (§5.4.4, §5.4.7), run between two peers in memory."""

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.wireguard import (
    AuthenticationError,
    CookieChecker,
    CookieRequired,
    CookieState,
    HandshakeAccepted,
    HandshakeStateError,
    Identity,
    IndexMismatchError,
    InitiatorHandshake,
    InitiatorState,
    PrivateKey,
    ProtocolError,
    Responder,
    compute_mac1,
    verify_mac1,
)

NOW = 1_700_000_000.0
SOURCE = bytes([192, 0, 2, 10]) + struct.pack(">H", 51820)
OTHER_SOURCE = bytes([192, 0, 2, 11]) + struct.pack(">H", 51820)


class LoadedRelay:
    """A relay whose responder is under load, and a client with a cookie state shared across handshakes."""

    def __init__(self) -> None:
        self.client = Identity(PrivateKey.generate())
        self.relay = Identity(PrivateKey.generate())
        self.checker = CookieChecker(self.relay.public_key)
        self.responder = Responder(self.relay, {self.client.public_key: None}, cookie_checker=self.checker)
        self.cookies = CookieState(self.relay.public_key)

    def handshake(self) -> InitiatorHandshake:
        return InitiatorHandshake(self.client, self.relay.public_key, cookie_state=self.cookies)

    def send(self, initiation: bytes, now: float, source: bytes = SOURCE) -> HandshakeAccepted | CookieRequired:
        return self.responder.consume_initiation(initiation, now, source=source, under_load=True)


def test_mac1_matches_independent_keyed_blake2s() -> None:
    relay_public = PrivateKey.generate().public_key().raw
    message = bytes(range(148))
    key = hashlib.blake2s(b"mac1----" + relay_public).digest()
    assert compute_mac1(message, relay_public) == hashlib.blake2s(message[:116], key=key, digest_size=16).digest()
    signed = message[:116] + compute_mac1(message, relay_public) + bytes(16)
    assert verify_mac1(signed, relay_public)
    assert not verify_mac1(signed, PrivateKey.generate().public_key().raw)


def test_under_load_first_initiation_gets_a_cookie_then_mac2_gets_a_response() -> None:
    lab = LoadedRelay()
    handshake = lab.handshake()
    first = handshake.create_initiation(NOW)
    assert first[132:] == bytes(16)  # no cookie yet: mac2 is zero
    reply = lab.send(first, NOW)
    assert isinstance(reply, CookieRequired)
    assert len(reply.cookie_reply) == 64

    handshake.consume_cookie_reply(reply.cookie_reply, NOW + 0.01)
    assert handshake.state is InitiatorState.COOKIE_RECEIVED
    second = handshake.create_initiation(NOW + 0.02)
    assert second[132:] != bytes(16)
    accepted = lab.send(second, NOW + 0.02)
    assert isinstance(accepted, HandshakeAccepted)
    session = handshake.consume_response(accepted.response, NOW + 0.03)
    assert accepted.session.decrypt(session.encrypt(b"through")).rstrip(b"\0") == b"through"


def test_cookie_is_bound_to_the_source_address() -> None:
    lab = LoadedRelay()
    handshake = lab.handshake()
    reply = lab.send(handshake.create_initiation(NOW), NOW)
    assert isinstance(reply, CookieRequired)
    handshake.receive(reply.cookie_reply, NOW)
    assert isinstance(lab.send(handshake.create_initiation(NOW + 1), NOW + 1, OTHER_SOURCE), CookieRequired)


def test_expired_cookie_is_not_used() -> None:
    lab = LoadedRelay()
    handshake = lab.handshake()
    reply = lab.send(handshake.create_initiation(NOW), NOW)
    assert isinstance(reply, CookieRequired)
    handshake.consume_cookie_reply(reply.cookie_reply, NOW)
    assert lab.cookies.fresh_cookie(NOW + 119.9) is not None
    stale = handshake.create_initiation(NOW + 120.5)
    assert stale[132:] == bytes(16)
    assert isinstance(lab.send(stale, NOW + 120.5), CookieRequired)


def test_cookie_from_a_rotated_secret_earns_a_new_cookie_reply() -> None:
    lab = LoadedRelay()
    handshake = lab.handshake()
    lab.checker.cookie(b"someone else", NOW - 100)  # secret born at NOW - 100, rotates at NOW + 20
    reply = lab.send(handshake.create_initiation(NOW), NOW)
    assert isinstance(reply, CookieRequired)
    handshake.consume_cookie_reply(reply.cookie_reply, NOW)
    later = handshake.create_initiation(NOW + 30)  # the client's cookie is 30 s old: still "fresh" to it
    assert later[132:] != bytes(16)
    assert isinstance(lab.send(later, NOW + 30), CookieRequired)


def test_not_under_load_ignores_mac2_entirely() -> None:
    lab = LoadedRelay()
    initiation = bytearray(lab.handshake().create_initiation(NOW))
    initiation[140] ^= 0xFF
    assert isinstance(lab.responder.consume_initiation(bytes(initiation), NOW), HandshakeAccepted)


def test_cookie_reply_for_an_older_initiation_or_another_index_is_rejected() -> None:
    lab = LoadedRelay()
    handshake = lab.handshake()
    old = lab.send(handshake.create_initiation(NOW), NOW)
    assert isinstance(old, CookieRequired)
    retransmitted = handshake.create_initiation(NOW + 5)
    misaddressed = bytearray(old.cookie_reply)
    misaddressed[4:8] = retransmitted[4:8]  # right index now, but sealed to the first initiation's mac1
    with pytest.raises(AuthenticationError):
        handshake.consume_cookie_reply(bytes(misaddressed), NOW + 5)
    with pytest.raises(IndexMismatchError):
        handshake.consume_cookie_reply(old.cookie_reply, NOW + 5)
    assert handshake.state is InitiatorState.INITIATION_SENT
    assert lab.cookies.fresh_cookie(NOW + 5) is None


def test_cookie_reply_before_any_initiation_is_a_state_error() -> None:
    lab = LoadedRelay()
    with pytest.raises(HandshakeStateError):
        lab.handshake().consume_cookie_reply(b"\x03\0\0\0" + bytes(60), NOW)


def test_under_load_without_checker_or_source_is_a_state_error() -> None:
    lab = LoadedRelay()
    plain = Responder(lab.relay, {lab.client.public_key: None})
    initiation = lab.handshake().create_initiation(NOW)
    with pytest.raises(HandshakeStateError):
        plain.consume_initiation(initiation, NOW, source=SOURCE, under_load=True)
    with pytest.raises(HandshakeStateError):
        lab.responder.consume_initiation(initiation, NOW, under_load=True)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=100),
        st.binary(min_size=60, max_size=60).map(lambda b: b"\x03\0\0\0" + b),
        st.binary(min_size=56, max_size=56),  # gets the right receiver index below
    )
)
def test_consume_cookie_reply_raises_only_protocol_errors(data: bytes) -> None:
    lab = LoadedRelay()
    handshake = lab.handshake()
    handshake.create_initiation(NOW)
    assert handshake.sender_index is not None
    if len(data) == 56:
        data = struct.pack("<II", 3, handshake.sender_index) + data
    with pytest.raises(ProtocolError):
        handshake.consume_cookie_reply(data, NOW)
    assert handshake.state is InitiatorState.INITIATION_SENT
