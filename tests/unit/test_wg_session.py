"""Transport sessions and the replay window (§5.4.6)."""

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.wireguard import (
    AuthenticationError,
    HandshakeStateError,
    IndexMismatchError,
    MessageError,
    ProtocolError,
    ReplayError,
    ReplayWindow,
    TransportSession,
)
from probe.wireguard.constants import REJECT_AFTER_MESSAGES

KEY_I_TO_R = bytes(range(32))
KEY_R_TO_I = bytes(range(32, 64))


def session_pair() -> tuple[TransportSession, TransportSession]:
    initiator = TransportSession(
        local_index=0x1111, remote_index=0x2222, send_key=KEY_I_TO_R, receive_key=KEY_R_TO_I,
        is_initiator=True, created_at=1000.0,
    )  # fmt: skip
    responder = TransportSession(
        local_index=0x2222, remote_index=0x1111, send_key=KEY_R_TO_I, receive_key=KEY_I_TO_R,
        is_initiator=False, created_at=1000.0,
    )  # fmt: skip
    return initiator, responder


def forge(receiver_index: int, counter: int, plaintext: bytes, key: bytes = KEY_I_TO_R) -> bytes:
    """A transport message built directly from §5.4.6, independent of TransportSession.encrypt."""
    nonce = bytes(4) + struct.pack("<Q", counter)
    return struct.pack("<IIQ", 4, receiver_index, counter) + ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)


# (counters marked in order, counter checked, expected acceptance)
REPLAY_TABLE = [
    ([], 0, True),
    ([0], 0, False),  # duplicate
    ([0], 1, True),  # in order
    ([0, 1, 2], 1, False),
    ([5], 3, True),  # out of order, inside the window
    ([5, 3], 3, False),
    ([5, 3], 4, True),
    ([3000], 3000 - 2047, True),  # oldest counter still inside a 2048 window
    ([3000], 3000 - 2048, False),  # too old
    ([10, 5000], 10, False),  # a big jump pushes old counters out
    ([10, 5000], 4999, True),
    ([0, 2**64 - 2], 2**64 - 3, True),  # jump across the whole 64-bit range stays cheap and correct
    ([0, 2**64 - 2], 2**64 - 2, False),
]


@pytest.mark.parametrize(("marked", "counter", "accepted"), REPLAY_TABLE)
def test_replay_window_table(marked: list[int], counter: int, accepted: bool) -> None:
    window = ReplayWindow()
    for seen in marked:
        assert window.check(seen)
        window.mark(seen)
    assert window.check(counter) is accepted


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=80))
def test_replay_window_accepts_each_counter_once_and_matches_a_set_model(counters: list[int]) -> None:
    window, seen = ReplayWindow(), set[int]()
    for counter in counters:
        expected = counter not in seen and (not seen or counter > max(seen) - 2048)
        assert window.check(counter) is expected
        if expected:
            window.mark(counter)
            seen.add(counter)


def test_round_trip_both_directions_with_padding_and_keepalive() -> None:
    initiator, responder = session_pair()
    message = initiator.encrypt(b"x" * 17)
    assert len(message) == 16 + 32 + 16  # 17 bytes padded to 32, plus header and tag
    assert responder.decrypt(message) == b"x" * 17 + bytes(15)
    assert initiator.decrypt(responder.encrypt(b"")) == b""  # keepalive
    assert message == forge(0x2222, 0, b"x" * 17 + bytes(15))  # matches an independent construction
    assert initiator.send_counter == 1


def test_responder_cannot_send_before_the_initiator_has() -> None:
    initiator, responder = session_pair()
    with pytest.raises(HandshakeStateError):
        responder.encrypt(b"too early")
    with pytest.raises(AuthenticationError):
        responder.decrypt(forge(0x2222, 0, b"", key=bytes(32)))  # a forgery does not unlock sending
    assert not responder.can_send
    responder.decrypt(initiator.encrypt(b""))
    assert responder.can_send
    assert initiator.decrypt(responder.encrypt(b"now fine")) == b"now fine" + bytes(8)


def test_replayed_and_misaddressed_messages_are_rejected() -> None:
    initiator, responder = session_pair()
    first = initiator.encrypt(b"one")
    responder.decrypt(first)
    with pytest.raises(ReplayError):
        responder.decrypt(first)
    with pytest.raises(IndexMismatchError):
        initiator.decrypt(forge(0x9999, 0, b"", key=KEY_R_TO_I))
    with pytest.raises(MessageError):
        responder.decrypt(first[:31])


def test_forged_future_counter_does_not_advance_the_window() -> None:
    initiator, responder = session_pair()
    genuine = [initiator.encrypt(bytes([n])) for n in range(3)]
    forged = forge(0x2222, 10**6, b"evil", key=bytes(32))
    with pytest.raises(AuthenticationError):
        responder.decrypt(forged)
    assert responder.replay_window.highest == -1
    assert [responder.decrypt(m)[0] for m in genuine] == [0, 1, 2]


def test_counter_at_reject_after_messages_is_refused_even_when_authentic() -> None:
    _, responder = session_pair()
    with pytest.raises(ReplayError):
        responder.decrypt(forge(0x2222, REJECT_AFTER_MESSAGES, b""))
    assert responder.decrypt(forge(0x2222, REJECT_AFTER_MESSAGES - 1, b"")) == b""


def test_sender_stops_at_reject_after_messages() -> None:
    initiator, _ = session_pair()
    initiator._send_counter = REJECT_AFTER_MESSAGES  # reaching it honestly would take 2**64 messages
    with pytest.raises(HandshakeStateError):
        initiator.encrypt(b"")


def test_session_expiry_follows_reject_after_time() -> None:
    initiator, _ = session_pair()
    assert not initiator.expired(1000.0 + 179.9)
    assert initiator.expired(1000.0 + 180.0)


def test_every_single_bit_flip_of_a_transport_message_is_rejected() -> None:
    initiator, responder = session_pair()
    message = initiator.encrypt(b"ping payload")
    for position in range(len(message)):
        for bit in range(8):
            corrupted = bytearray(message)
            corrupted[position] ^= 1 << bit
            with pytest.raises(ProtocolError):
                responder.decrypt(bytes(corrupted))
    assert responder.decrypt(message) == b"ping payload" + bytes(4)  # failures left the session intact


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.binary(min_size=28, max_size=100).map(lambda b: struct.pack("<I", 4) + b),
        st.binary(min_size=24, max_size=100).map(lambda b: struct.pack("<II", 4, 0x2222) + b),
    )
)
def test_decrypt_raises_only_protocol_errors_on_random_bytes(data: bytes) -> None:
    _, responder = session_pair()
    with pytest.raises(ProtocolError):
        responder.decrypt(data)
