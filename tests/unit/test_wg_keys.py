"""Key parsing, printing and identity timestamps."""

import base64
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.wireguard import Identity, InvalidKeyError, PrivateKey, PublicKey, decode_preshared_key
from probe.wireguard.identity import decode_tai64n, encode_tai64n

# RFC 7748 §6.1 test vector: Alice's private scalar and public key.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_private_key_derives_rfc7748_public_key() -> None:
    key = PrivateKey(ALICE_PRIVATE)
    assert key.public_key() == PublicKey(ALICE_PUBLIC)
    assert PrivateKey.from_base64(key.to_base64()) == key
    assert PublicKey.from_base64(base64.b64encode(ALICE_PUBLIC).decode() + "\n").raw == ALICE_PUBLIC


def test_private_key_repr_never_shows_private_bytes() -> None:
    key = PrivateKey(ALICE_PRIVATE)
    for text in (repr(key), str(key), repr(Identity(key))):
        assert key.to_base64() not in text
        assert ALICE_PRIVATE.hex() not in text
        assert base64.b64encode(ALICE_PUBLIC).decode() in text


def test_generate_clamps_like_wg_genkey_and_uses_injected_randomness() -> None:
    key = PrivateKey.generate(lambda n: b"\xff" * n)
    assert key.raw[0] & 7 == 0
    assert key.raw[31] & 0x80 == 0
    assert key.raw[31] & 0x40
    assert PrivateKey.generate() != PrivateKey.generate()


def test_keys_compare_by_value_and_hash_for_dict_lookup() -> None:
    assert PublicKey(ALICE_PUBLIC) == PublicKey(bytes(ALICE_PUBLIC))
    assert PublicKey(ALICE_PUBLIC) != PublicKey(bytes(32))
    assert {PublicKey(ALICE_PUBLIC): 1}[PublicKey(ALICE_PUBLIC)] == 1
    assert PublicKey(ALICE_PUBLIC) != ALICE_PUBLIC  # not equal to raw bytes: types must not mix silently


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "44 base64 characters"),
        ("abc", "44 base64 characters"),
        ("!" * 43 + "=", "not valid base64"),
        (base64.b64encode(bytes(33)).decode(), "decode to 32 bytes"),  # 44 characters, no padding
        ("A" * 42 + "==", "decode to 32 bytes"),  # valid base64 of 31 bytes
        ("é" * 44, "not valid base64"),
    ],
)
def test_bad_base64_keys_are_rejected_with_a_clear_message(text: str, message: str) -> None:
    for parse in (PublicKey.from_base64, PrivateKey.from_base64, decode_preshared_key):
        with pytest.raises(InvalidKeyError, match=message):
            parse(text)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_wrong_length_raw_keys_are_rejected(length: int) -> None:
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        PublicKey(bytes(length))
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        PrivateKey(bytes(length))


def test_tai64n_layout_is_big_endian_seconds_from_2_62_plus_10_then_nanoseconds() -> None:
    stamp = encode_tai64n(1_600_000_000, 123)
    assert stamp == struct.pack(">QI", 2**62 + 10 + 1_600_000_000, 123)
    assert decode_tai64n(stamp) == (1_600_000_000, 123)


def test_identity_timestamps_follow_the_clock_with_whitened_nanoseconds() -> None:
    identity = Identity(PrivateKey(ALICE_PRIVATE))
    seconds, nanoseconds = decode_tai64n(identity.timestamp(1_700_000_000.5))
    assert seconds == 1_700_000_000
    assert nanoseconds == 500_000_000 & ~0xFFFFFF  # wireguard-go drops the low 24 bits


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=40))
def test_identity_timestamps_strictly_increase_whatever_the_clock_does(clock: list[float]) -> None:
    identity = Identity(PrivateKey(ALICE_PRIVATE))
    stamps = [identity.timestamp(now) for now in clock]
    assert all(earlier < later for earlier, later in itertools.pairwise(stamps))


def test_identity_timestamps_survive_clock_going_backwards_and_repeating() -> None:
    identity = Identity(PrivateKey(ALICE_PRIVATE))
    first = identity.timestamp(1_700_000_100.0)
    same_tick = identity.timestamp(1_700_000_100.001)  # whitening maps it to the same label
    backwards = identity.timestamp(1_699_999_000.0)
    assert first < same_tick < backwards
    assert decode_tai64n(backwards)[0] == 1_700_000_100  # stays just after the last label, not in the future
    assert identity.timestamp(1_700_000_200.0) > backwards
