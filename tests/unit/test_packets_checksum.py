"""The internet checksum against RFC 1071's worked example and a word-by-word reference implementation."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from probe.packets.checksum import finish, fold, internet_checksum, verifies, word_sum


def reference_checksum(data: bytes) -> int:
    """RFC 1071 section 4.1, transcribed: sum 16-bit words, fold the carries, complement."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_worked_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (after the end-around carry).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert fold(word_sum(data)) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_all_zero_data_has_checksum_ffff_and_never_verifies() -> None:
    # The one case where the modulo-0xFFFF shortcut must not fold a zero sum to 0xFFFF.
    assert internet_checksum(bytes(20)) == 0xFFFF
    assert not verifies(word_sum(bytes(20)))


def test_sum_of_ones_complement_negative_zero_gives_checksum_zero() -> None:
    # Words summing to 0xFFFF fold to 0xFFFF (negative zero), whose complement is 0x0000.
    assert internet_checksum(bytes.fromhex("fffe0001")) == 0x0000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_matches_reference_implementation(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=200).map(lambda b: b[: len(b) // 2 * 2]))
def test_message_with_its_checksum_inserted_verifies(data: bytes) -> None:
    # Append the checksum as the last word: receivers sum everything and expect all ones.
    csum = internet_checksum(data)
    assert verifies(word_sum(data + csum.to_bytes(2, "big")))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.binary(min_size=0, max_size=64))
def test_parts_add_like_the_concatenation(head: bytes, tail: bytes) -> None:
    # Builders sum header fields and payload separately; that equals summing the buffer when the part boundary
    # is at an even offset (pad the head to even length, as a header always is).
    head = head + b"\x00" * (len(head) % 2)
    assert finish(word_sum(head) + word_sum(tail)) == internet_checksum(head + tail)
