"""Message layouts: round trips, exact sizes, rejection of wrong lengths and types, and decoder fuzzing."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.wireguard import (
    CookieReply,
    Initiation,
    Message,
    MessageError,
    ProtocolError,
    Response,
    Transport,
    parse_message,
)

INITIATION = Initiation(0x11223344, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16)
RESPONSE = Response(0x01020304, 0xA0B0C0D0, b"e" * 32, b"n" * 16, b"1" * 16, b"2" * 16)
COOKIE_REPLY = CookieReply(0xDEADBEEF, b"n" * 24, b"c" * 32)
TRANSPORT = Transport(0x55667788, 2**64 - 1, b"x" * 48)
ALL: list[Message] = [INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT]


def test_sizes_match_the_real_protocol() -> None:
    assert (Initiation.SIZE, Response.SIZE, CookieReply.SIZE) == (148, 92, 64)
    assert (Transport.HEADER_SIZE, Transport.MIN_SIZE) == (16, 32)
    assert [len(m.pack()) for m in ALL] == [148, 92, 64, 64]


def test_layout_is_type_reserved_then_little_endian_indexes() -> None:
    packed = RESPONSE.pack()
    assert packed[:4] == b"\x02\x00\x00\x00"
    assert packed[4:8] == bytes.fromhex("04030201")
    assert packed[8:12] == bytes.fromhex("d0c0b0a0")
    assert packed[60:76] == b"1" * 16  # mac1 at 60, mac2 at 76 (§5.4.4 offsets)
    transport = TRANSPORT.pack()
    assert transport[:16] == struct.pack("<IIQ", 4, 0x55667788, 2**64 - 1)
    initiation = INITIATION.pack()
    assert initiation[116:132] == b"1" * 16
    assert initiation[132:] == b"2" * 16


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(m).__name__)
def test_round_trip_through_unpack_and_parse_message(message: Initiation) -> None:
    packed = message.pack()
    assert type(message).unpack(packed) == message
    assert parse_message(packed) == message


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(m).__name__)
def test_wrong_length_is_rejected(message: Initiation) -> None:
    packed = message.pack()
    short = packed[: Transport.MIN_SIZE - 1] if isinstance(message, Transport) else packed[:-1]
    for bad in [short, b""] + ([] if isinstance(message, Transport) else [packed + b"\0"]):
        with pytest.raises(MessageError):
            type(message).unpack(bad)
        with pytest.raises(MessageError):
            parse_message(bad)


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_wrong_type_or_nonzero_reserved_byte_is_rejected(message: Initiation, position: int) -> None:
    packed = bytearray(message.pack())
    packed[position] ^= 0x08 if position == 0 else 0x01
    with pytest.raises(MessageError):
        type(message).unpack(bytes(packed))


def test_parse_message_rejects_unknown_types_and_runts() -> None:
    for data in [b"", b"\x01", b"\x05\0\0\0" + bytes(60), b"\0\0\0\0" + bytes(144)]:
        with pytest.raises(MessageError):
            parse_message(data)


def test_constructing_a_message_with_wrong_field_sizes_is_rejected() -> None:
    with pytest.raises(MessageError):
        Initiation(1, b"e" * 31, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16)
    with pytest.raises(MessageError):
        Response(2**32, 0, b"e" * 32, b"n" * 16, b"1" * 16, b"2" * 16)
    with pytest.raises(MessageError):
        CookieReply(1, b"n" * 24, b"c" * 33)
    with pytest.raises(MessageError):
        Transport(1, -1, b"x" * 16)
    with pytest.raises(MessageError):
        Transport(1, 0, b"x" * 15)


def _typed(kind: int, size: int) -> st.SearchStrategy[bytes]:
    """Random bodies of exactly the right size behind the right type field, to get past the length check."""
    return st.binary(min_size=size - 4, max_size=size - 4).map(lambda body: struct.pack("<I", kind) + body)


ANY_DATAGRAM = st.one_of(
    st.binary(max_size=200),
    _typed(1, 148),
    _typed(2, 92),
    _typed(3, 64),
    st.integers(32, 120).flatmap(lambda n: _typed(4, n)),
)


@settings(max_examples=300, deadline=None)
@given(ANY_DATAGRAM)
def test_decoders_raise_only_protocol_errors_on_random_bytes(data: bytes) -> None:
    for decode in (parse_message, Initiation.unpack, Response.unpack, CookieReply.unpack, Transport.unpack):
        try:
            message = decode(data)
        except ProtocolError:
            continue
        assert message.pack() == data  # whatever parses must be exactly what was on the wire


def test_messages_are_read_only_values() -> None:
    copy = Initiation.unpack(INITIATION.pack())
    assert copy == INITIATION and hash(copy) == hash(INITIATION) and copy is not INITIATION
    assert Initiation(0x11223345, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16) != INITIATION
    assert TRANSPORT != COOKIE_REPLY and TRANSPORT != (0x55667788, 2**64 - 1, b"x" * 48)
    with pytest.raises(AttributeError):
        INITIATION.mac1 = b"3" * 16
    with pytest.raises(AttributeError):
        del TRANSPORT.counter
    assert (
        repr(COOKIE_REPLY)
        == f"CookieReply(receiver_index=3735928559, nonce={b'n' * 24!r}, encrypted_cookie={b'c' * 32!r})"
    )
