"""The Noise_IKpsk2 handshake: cross-checked against an independent reference, then two peers in memory.

The reference functions below are written straight from the whitepaper (§5.4.2, §5.4.3, §5.4.5) with only
hashlib, hmac and `cryptography`, sharing no code with `probe.wireguard`, so a mistake shared by our initiator and
our responder (which would still let them talk to each other) fails these tests instead of a real relay.
"""

import hashlib
import hmac
import itertools
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.wireguard import (
    AuthenticationError,
    HandshakeAccepted,
    HandshakeStateError,
    Identity,
    IndexMismatchError,
    InitiatorHandshake,
    InitiatorState,
    InvalidKeyError,
    PrivateKey,
    ProtocolError,
    ReplayError,
    Responder,
    Response,
    TransportSession,
    UnknownPeerError,
)

NOW = 1_700_000_000.25
PSK = bytes(range(100, 132))


def seeded(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom, so a test can predict ephemeral keys and indexes."""
    counter = itertools.count()

    def randbytes(n: int) -> bytes:
        return hashlib.blake2b(seed + next(counter).to_bytes(8, "little"), digest_size=n).digest()

    return randbytes


# --- independent reference (whitepaper §5.4) -------------------------------------------------------------------


def r_hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def r_kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = hmac.new(key, data, hashlib.blake2s).digest()
    out, previous = [], b""
    for i in range(1, n + 1):
        previous = hmac.new(t0, previous + bytes([i]), hashlib.blake2s).digest()
        out.append(previous)
    return out


def r_aead(key: bytes, counter: int, plaintext: bytes, ad: bytes | None) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\0\0\0\0" + struct.pack("<Q", counter), plaintext, ad)


def r_pub(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def r_dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


def r_mac1(receiver_public: bytes, message: bytes) -> bytes:
    return hashlib.blake2s(message, key=r_hash(b"mac1----", receiver_public), digest_size=16).digest()


def reference_initiation(
    s_i: bytes, s_r_pub: bytes, e_i: bytes, sender: int, timestamp: bytes
) -> tuple[bytes, bytes, bytes]:
    c = r_hash(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
    h = r_hash(r_hash(c, b"WireGuard v1 zx2c4 Jason@zx2c4.com"), s_r_pub)
    e_pub = r_pub(e_i)
    c = r_kdf(c, e_pub, 1)[0]
    h = r_hash(h, e_pub)
    c, k = r_kdf(c, r_dh(e_i, s_r_pub), 2)
    static = r_aead(k, 0, r_pub(s_i), h)
    h = r_hash(h, static)
    c, k = r_kdf(c, r_dh(s_i, s_r_pub), 2)
    stamp = r_aead(k, 0, timestamp, h)
    h = r_hash(h, stamp)
    body = b"\x01\0\0\0" + struct.pack("<I", sender) + e_pub + static + stamp
    return body + r_mac1(s_r_pub, body) + bytes(16), c, h


def reference_response(
    c: bytes, h: bytes, s_i_pub: bytes, e_i_pub: bytes, e_r: bytes, psk: bytes | None, sender: int, receiver: int
) -> tuple[bytes, bytes, bytes]:
    """Response bytes and the responder's (receive, send) transport keys."""
    e_pub = r_pub(e_r)
    c = r_kdf(c, e_pub, 1)[0]
    h = r_hash(h, e_pub)
    c = r_kdf(c, r_dh(e_r, e_i_pub), 1)[0]
    c = r_kdf(c, r_dh(e_r, s_i_pub), 1)[0]
    c, tau, k = r_kdf(c, psk or bytes(32), 3)
    h = r_hash(h, tau)
    empty = r_aead(k, 0, b"", h)
    body = b"\x02\0\0\0" + struct.pack("<II", sender, receiver) + e_pub + empty
    receive_key, send_key = r_kdf(c, b"", 2)
    return body + r_mac1(s_i_pub, body) + bytes(16), receive_key, send_key


def expected_timestamp(now: float) -> bytes:
    seconds = int(now)
    nanoseconds = int((now - seconds) * 1e9) & ~0xFFFFFF
    return struct.pack(">QI", 2**62 + 10 + seconds, nanoseconds)


CLIENT = PrivateKey(hashlib.blake2s(b"client").digest())
RELAY = PrivateKey(hashlib.blake2s(b"relay").digest())


@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
def test_initiator_matches_reference_byte_for_byte_and_talks_to_reference_responder(psk: bytes | None) -> None:
    randbytes = seeded(b"initiator")
    predict = seeded(b"initiator")
    e_i, sender = predict(32), int.from_bytes(predict(4), "little")
    handshake = InitiatorHandshake(Identity(CLIENT), RELAY.public_key(), psk, randbytes=randbytes)

    initiation = handshake.create_initiation(NOW)
    expected, c, h = reference_initiation(CLIENT.raw, RELAY.public_key().raw, e_i, sender, expected_timestamp(NOW))
    assert initiation == expected

    e_r = hashlib.blake2s(b"responder ephemeral").digest()
    response, receive_key, send_key = reference_response(
        c, h, CLIENT.public_key().raw, r_pub(e_i), e_r, psk, 0xCAFE, sender
    )
    session = handshake.consume_response(response, NOW + 0.01)
    assert (session.local_index, session.remote_index, session.is_initiator) == (sender, 0xCAFE, True)
    # Transport keys agree with the reference in both directions.
    outgoing = session.encrypt(b"ping")
    nonce0 = bytes(12)
    assert ChaCha20Poly1305(receive_key).decrypt(nonce0, outgoing[16:], None) == b"ping" + bytes(12)
    incoming = struct.pack("<IIQ", 4, sender, 0) + r_aead(send_key, 0, b"pong" + bytes(12), None)
    assert session.decrypt(incoming) == b"pong" + bytes(12)


@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
def test_responder_matches_reference_byte_for_byte(psk: bytes | None) -> None:
    e_i = hashlib.blake2s(b"initiator ephemeral").digest()
    stamp = expected_timestamp(NOW)
    initiation, c, h = reference_initiation(CLIENT.raw, RELAY.public_key().raw, e_i, 0xBEEF, stamp)
    predict = seeded(b"responder")
    e_r, sender = predict(32), int.from_bytes(predict(4), "little")
    responder = Responder(Identity(RELAY), {CLIENT.public_key(): psk}, randbytes=seeded(b"responder"))

    result = responder.consume_initiation(initiation, NOW)
    assert isinstance(result, HandshakeAccepted)
    expected, receive_key, send_key = reference_response(
        c, h, CLIENT.public_key().raw, r_pub(e_i), e_r, psk, sender, 0xBEEF
    )
    assert result.response == expected
    assert result.initiator == CLIENT.public_key()
    # The reference responder's receive key is what the initiator sends with, and vice versa.
    incoming = struct.pack("<IIQ", 4, sender, 0) + r_aead(receive_key, 0, b"", None)
    assert result.session.decrypt(incoming) == b""
    assert ChaCha20Poly1305(send_key).decrypt(bytes(12), result.session.encrypt(b"")[16:], None) == b""


# --- two peers in memory ------------------------------------------------------------------------------------


class Pair:
    """A client identity, a relay responder that knows it, and a clock the test moves by hand."""

    def __init__(self, psk: bytes | None = None, responder_psk: bytes | None = None) -> None:
        self.now = NOW
        self.client = Identity(PrivateKey.generate())
        self.relay = Identity(PrivateKey.generate())
        self.psk = psk
        self.responder = Responder(self.relay, {self.client.public_key: responder_psk if psk is None else psk})

    def handshake(self) -> InitiatorHandshake:
        return InitiatorHandshake(self.client, self.relay.public_key, self.psk)

    def connect(self) -> tuple[TransportSession, TransportSession]:
        handshake = self.handshake()
        result = self.responder.consume_initiation(handshake.create_initiation(self.now), self.now)
        assert isinstance(result, HandshakeAccepted)
        return handshake.consume_response(result.response, self.now), result.session


@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
def test_two_peers_handshake_and_exchange_transport_both_ways(psk: bytes | None) -> None:
    pair = Pair(psk)
    client, relay = pair.connect()
    assert (client.local_index, client.remote_index) == (relay.remote_index, relay.local_index)
    for n in range(5):
        assert relay.decrypt(client.encrypt(b"echo request %d" % n)).rstrip(b"\0") == b"echo request %d" % n
        assert client.decrypt(relay.encrypt(b"echo reply %d" % n)).rstrip(b"\0") == b"echo reply %d" % n
    pair.now += 10
    client2, relay2 = pair.connect()  # a second handshake with the same key later on also works
    assert relay2.decrypt(client2.encrypt(b"again")).rstrip(b"\0") == b"again"


def test_psk_mismatch_fails_at_the_initiator() -> None:
    pair = Pair(None, responder_psk=PSK)
    handshake = pair.handshake()
    result = pair.responder.consume_initiation(handshake.create_initiation(pair.now), pair.now)
    assert isinstance(result, HandshakeAccepted)
    with pytest.raises(AuthenticationError):
        handshake.consume_response(result.response, pair.now)
    assert handshake.state is InitiatorState.INITIATION_SENT


def test_wrong_server_key_is_rejected_by_the_responder() -> None:
    pair = Pair()
    wrong = InitiatorHandshake(pair.client, PrivateKey.generate().public_key())
    with pytest.raises(AuthenticationError):
        pair.responder.consume_initiation(wrong.create_initiation(pair.now), pair.now)


def test_unknown_client_key_is_rejected() -> None:
    pair = Pair()
    stranger = InitiatorHandshake(Identity(PrivateKey.generate()), pair.relay.public_key)
    with pytest.raises(UnknownPeerError):
        pair.responder.consume_initiation(stranger.create_initiation(pair.now), pair.now)


def test_replayed_initiation_and_older_timestamp_are_rejected() -> None:
    pair = Pair()
    initiation = pair.handshake().create_initiation(pair.now)
    pair.responder.consume_initiation(initiation, pair.now)
    with pytest.raises(ReplayError):
        pair.responder.consume_initiation(initiation, pair.now + 1)
    # Another process with the same key and a slower clock: its timestamp is older, so it is refused...
    restarted = Identity(pair.client.private_key)
    stale = InitiatorHandshake(restarted, pair.relay.public_key).create_initiation(pair.now - 60)
    with pytest.raises(ReplayError):
        pair.responder.consume_initiation(stale, pair.now + 1)
    # ...while the shared in-process Identity keeps going even when the clock steps back.
    pair.now -= 3600
    pair.connect()


def test_only_the_latest_initiation_is_answered_and_only_once() -> None:
    pair = Pair()
    handshake = pair.handshake()
    with pytest.raises(HandshakeStateError):
        handshake.consume_response(bytes([2, 0, 0, 0]) + bytes(88), pair.now)
    first = handshake.create_initiation(pair.now)
    second = handshake.create_initiation(pair.now + 5)  # retransmit after REKEY_TIMEOUT: new index and ephemeral
    assert first[4:40] != second[4:40]
    late = pair.responder.consume_initiation(first, pair.now)
    assert isinstance(late, HandshakeAccepted)
    with pytest.raises(IndexMismatchError):
        handshake.consume_response(late.response, pair.now + 5)
    current = pair.responder.consume_initiation(second, pair.now + 5)
    assert isinstance(current, HandshakeAccepted)
    assert isinstance(handshake.receive(current.response, pair.now + 5), TransportSession)
    assert handshake.state is InitiatorState.ESTABLISHED
    with pytest.raises(HandshakeStateError):
        handshake.consume_response(current.response, pair.now + 5)
    with pytest.raises(HandshakeStateError):
        handshake.create_initiation(pair.now + 6)


def test_response_mac1_must_be_keyed_with_the_initiators_key() -> None:
    pair = Pair()
    handshake = pair.handshake()
    result = pair.responder.consume_initiation(handshake.create_initiation(pair.now), pair.now)
    assert isinstance(result, HandshakeAccepted)
    body = result.response[:60]
    relay_keyed = body + r_mac1(pair.relay.public_key.raw, body) + bytes(16)
    with pytest.raises(AuthenticationError):
        handshake.consume_response(relay_keyed, pair.now)


def test_every_bit_flip_of_a_response_before_mac2_is_rejected() -> None:
    pair = Pair()
    handshake = pair.handshake()
    result = pair.responder.consume_initiation(handshake.create_initiation(pair.now), pair.now)
    assert isinstance(result, HandshakeAccepted)
    for position in range(76):
        for bit in range(8):
            corrupted = bytearray(result.response)
            corrupted[position] ^= 1 << bit
            with pytest.raises(ProtocolError):
                handshake.consume_response(bytes(corrupted), pair.now)
    # mac2 (bytes 76..91) is not checked by an initiator that is not under load, as in wireguard-go; the
    # genuine response still completes the handshake after all the rejected ones.
    assert handshake.consume_response(result.response, pair.now).is_initiator


def test_every_bit_flip_of_an_initiation_is_rejected_by_the_responder() -> None:
    pair = Pair()
    handshake = pair.handshake()
    initiation = handshake.create_initiation(pair.now)
    for position in range(132):  # mac2 is only checked under load (see test_wg_cookie)
        corrupted = bytearray(initiation)
        corrupted[position] ^= 0x01
        with pytest.raises(ProtocolError):
            pair.responder.consume_initiation(bytes(corrupted), pair.now)
    assert isinstance(pair.responder.consume_initiation(initiation, pair.now), HandshakeAccepted)


def with_mac1(data: bytes, receiver_public: bytes) -> bytes:
    """Give random bytes a valid mac1 so fuzzing reaches the DH and AEAD steps behind the mac1 check."""
    body = data[: len(data) - 32]
    return body + r_mac1(receiver_public, body) + data[len(data) - 16 :]


FUZZ = settings(max_examples=150, deadline=None)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=160),
        st.binary(min_size=144, max_size=144).map(lambda b: b"\x01\0\0\0" + b),
    ),
    valid_mac1=st.booleans(),
    under_load=st.booleans(),
)
def test_consume_initiation_raises_only_protocol_errors(data: bytes, valid_mac1: bool, under_load: bool) -> None:
    relay = Identity(RELAY)
    responder = Responder(relay, {CLIENT.public_key(): None})
    if valid_mac1 and len(data) == 148:
        data = with_mac1(data, RELAY.public_key().raw)
    with pytest.raises(ProtocolError):
        responder.consume_initiation(data, NOW, source=b"\x7f\0\0\1\x30\x39", under_load=under_load)


def test_low_order_ephemeral_in_initiation_is_a_protocol_error() -> None:
    responder = Responder(Identity(RELAY), {CLIENT.public_key(): None})
    data = with_mac1(b"\x01\0\0\0" + bytes(144), RELAY.public_key().raw)
    with pytest.raises(ProtocolError):
        responder.consume_initiation(data, NOW)


@FUZZ
@given(
    body=st.one_of(st.binary(max_size=120), st.binary(min_size=84, max_size=84)),
    valid_mac1=st.booleans(),
)
def test_consume_response_raises_only_protocol_errors(body: bytes, valid_mac1: bool) -> None:
    handshake = InitiatorHandshake(Identity(CLIENT), RELAY.public_key(), randbytes=seeded(b"fuzz"))
    handshake.create_initiation(NOW)
    assert handshake.sender_index is not None
    data = body
    if len(body) == 84:  # right type, right receiver index, random rest: a 92-byte response
        data = struct.pack("<III", 2, int.from_bytes(body[:4], "little"), handshake.sender_index) + body[4:]
        assert len(data) == Response.SIZE
        if valid_mac1:
            data = with_mac1(data, CLIENT.public_key().raw)
    with pytest.raises(ProtocolError) as raised:
        handshake.consume_response(data, NOW)
    if len(body) == 84 and valid_mac1:
        # Past mac1, the random ephemeral reaches the DH steps and the AEAD (or is refused as a low-order point).
        assert "mac1" not in str(raised.value)
        assert isinstance(raised.value, AuthenticationError | InvalidKeyError)
    with pytest.raises(ProtocolError):
        handshake.receive(data, NOW)
    assert handshake.state is InitiatorState.INITIATION_SENT


def test_a_response_with_a_valid_mac1_and_random_rest_fails_at_the_aead() -> None:
    handshake = InitiatorHandshake(Identity(CLIENT), RELAY.public_key(), randbytes=seeded(b"aead"))
    handshake.create_initiation(NOW)
    assert handshake.sender_index is not None
    ephemeral = PrivateKey.generate().public_key().raw  # a valid curve point: the DH steps succeed
    data = struct.pack("<III", 2, 7, handshake.sender_index) + ephemeral + bytes(16) + bytes(32)
    with pytest.raises(AuthenticationError, match="AEAD"):
        handshake.consume_response(with_mac1(data, CLIENT.public_key().raw), NOW)
