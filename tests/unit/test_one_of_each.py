"""One of each: one base64 key decoder behind key files, inventories and the protocol core; constants defined once."""

import base64
import re

import pytest

from probe import config as config_module
from probe.inventory import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY, decode_public_key, parse_inventory
from probe.inventory import model as inventory_model
from probe.lab import topology
from probe.wireguard import InvalidKeyError, PrivateKey, PublicKey, decode_preshared_key
from probe.wireguard.constants import KEY_SIZE
from probe.wireguard.keys import decode_base64_key

SECRET = base64.b64encode(bytes(range(101, 133))).decode()  # 44 characters, like `wg genkey` prints
# text, what is wrong: every decoder says the same
BAD = [
    ("", "must be 44 base64 characters (32 bytes), got 0"),
    (SECRET[:-4], "must be 44 base64 characters (32 bytes), got 40"),
    (SECRET + "AAAA", "must be 44 base64 characters (32 bytes), got 48"),
    (SECRET[:20] + "!" + SECRET[21:], "is not valid base64"),
    (SECRET[:20] + "é" + SECRET[21:], "is not valid base64"),
    ("A" * 42 + "==", "must decode to 32 bytes, got 31"),
    (base64.b64encode(bytes(33)).decode(), "must decode to 32 bytes, got 33"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_one_decoder_one_set_of_messages(text: str, message: str) -> None:
    for decode in (
        lambda t: decode_base64_key(t, "private"),
        PrivateKey.from_base64,
        PublicKey.from_base64,
        decode_preshared_key,
    ):
        with pytest.raises(InvalidKeyError, match=re.escape(message)):
            decode(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        decode_public_key(text)


def test_the_decoder_accepts_surrounding_whitespace_and_bytes() -> None:
    raw = base64.b64decode(SECRET)
    assert decode_base64_key(f"  {SECRET}\n") == raw
    assert decode_base64_key(SECRET.encode() + b"\r\n") == raw
    assert decode_public_key(SECRET) == raw


@pytest.mark.parametrize(
    "content",
    [
        (SECRET[:20] + "!" + SECRET[21:]).encode(),
        b"\xff\xfe" + SECRET.encode()[2:],
        SECRET.encode()[:30] + b"\xc3\xa9" + SECRET.encode()[32:],
        SECRET.encode()[:-1],
        b"\x00" * 44,
    ],
)
def test_decoder_messages_never_quote_the_key(content: bytes) -> None:
    with pytest.raises(InvalidKeyError) as caught:
        decode_base64_key(content, "private")
    message = str(caught.value)
    assert not any(content[i : i + 3].decode("latin-1") in message for i in range(len(content) - 2))
    assert "\\x" not in message and "0x" not in message


def test_an_inventory_public_key_error_is_the_decoders() -> None:
    text = (
        (
            '{"wireguard": {"relays": [{"hostname": "a", "ipv4_addr_in": "192.0.2.1", "public_key": "GOOD"},'
            ' {"hostname": "b", "ipv4_addr_in": "192.0.2.2", "public_key": "BAD"}]}}'
        )
        .replace("GOOD", SECRET)
        .replace("BAD", "A" * 42 + "==")
    )
    problem = parse_inventory(text, source="x").problems[0]
    assert (problem.relay, problem.field) == ("b", "public_key")
    assert problem.message.startswith("public key must decode to 32 bytes, got 31")


def test_key_size_and_gateways_are_defined_once() -> None:
    # A copy of 32 would compare equal to KEY_SIZE; the only test that a copy is gone is that its name is gone.
    assert not hasattr(config_module, "_KEY_SIZE")
    assert not hasattr(inventory_model, "WIREGUARD_KEY_SIZE")
    assert KEY_SIZE == 32
    assert topology.TUNNEL_V4_GATEWAY is MULLVAD_IPV4_GATEWAY
    assert topology.TUNNEL_V6_GATEWAY is MULLVAD_IPV6_GATEWAY
