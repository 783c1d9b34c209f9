"""Known-answer tests for the §5.4 primitives, with expected values computed here from the definitions."""

import hashlib
import hmac
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.wireguard import crypto
from probe.wireguard.errors import AuthenticationError, InvalidKeyError


def reference_hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def reference_kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    """HKDF as the whitepaper writes it: τ0 = HMAC(key, input), τi = HMAC(τ0, τ(i-1) ‖ i)."""
    t0 = reference_hmac(key, data)
    out, previous = [], b""
    for i in range(1, n + 1):
        previous = reference_hmac(t0, previous + bytes([i]))
        out.append(previous)
    return out


def test_initial_chaining_key_is_hash_of_construction() -> None:
    assert crypto.INITIAL_CHAINING_KEY.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"


def test_initial_hash_is_hash_of_chaining_key_and_identifier() -> None:
    expected = hashlib.blake2s(crypto.INITIAL_CHAINING_KEY + b"WireGuard v1 zx2c4 Jason@zx2c4.com").digest()
    assert expected == crypto.INITIAL_HASH
    assert crypto.INITIAL_HASH.hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


def test_hash_and_mac_are_blake2s_256_and_keyed_blake2s_128() -> None:
    assert crypto.hash_(b"abc") == hashlib.blake2s(b"abc").digest()
    assert len(crypto.hash_(b"")) == 32
    key = bytes(range(32))
    assert crypto.mac(key, b"abc") == hashlib.blake2s(b"abc", key=key, digest_size=16).digest()


@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=0, max_size=100), data=st.binary(max_size=200))
def test_hmac_matches_stdlib_hmac_blake2s(key: bytes, data: bytes) -> None:
    assert crypto.hmac(key, data) == reference_hmac(key, data)


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=64))
def test_kdf_matches_whitepaper_definition(key: bytes, data: bytes) -> None:
    t1, t2, t3 = reference_kdf(key, data, 3)
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_aead_nonce_is_four_zero_bytes_then_little_endian_counter() -> None:
    assert crypto.aead_nonce(0x0102030405060708) == bytes(4) + bytes([8, 7, 6, 5, 4, 3, 2, 1])
    key = bytes(range(32))
    sealed = crypto.aead_encrypt(key, 258, b"payload", b"ad")
    assert ChaCha20Poly1305(key).decrypt(bytes(4) + (258).to_bytes(8, "little"), sealed, b"ad") == b"payload"
    assert crypto.aead_decrypt(key, 258, sealed, b"ad") == b"payload"


@pytest.mark.parametrize(
    ("counter", "associated", "tamper"),
    [(1, b"ad", False), (0, b"other", False), (0, b"ad", True)],
    ids=["wrong-counter", "wrong-ad", "flipped-byte"],
)
def test_aead_rejects_wrong_counter_ad_or_tampering(counter: int, associated: bytes, tamper: bool) -> None:
    key = bytes(32)
    sealed = bytearray(crypto.aead_encrypt(key, 0, b"payload", b"ad"))
    if tamper:
        sealed[0] ^= 1
    with pytest.raises(AuthenticationError):
        crypto.aead_decrypt(key, counter, bytes(sealed), associated)


def test_xaead_round_trip_and_rejection() -> None:
    key, nonce = bytes(range(32)), bytes(range(24))
    sealed = crypto.xaead_encrypt(key, nonce, b"cookie-cookie-16", b"mac1")
    assert len(sealed) == 32
    assert crypto.xaead_decrypt(key, nonce, sealed, b"mac1") == b"cookie-cookie-16"
    for bad_key, bad_nonce, bad_ad in [(bytes(32), nonce, b"mac1"), (key, bytes(24), b"mac1"), (key, nonce, b"x")]:
        with pytest.raises(AuthenticationError):
            crypto.xaead_decrypt(bad_key, bad_nonce, sealed, bad_ad)
    with pytest.raises(AuthenticationError):
        crypto.xaead_decrypt(key, nonce[:23], sealed, b"mac1")


@settings(max_examples=50)
@given(raw=st.binary(min_size=32, max_size=32), peer_raw=st.binary(min_size=32, max_size=32))
def test_keys_load_as_the_public_api_loads_them(raw: bytes, peer_raw: bytes) -> None:
    """crypto loads keys through cryptography's Rust core, past the backend import of the public methods: the keys
    must be the public API's own, equal in every respect a handshake uses."""
    private, reference = crypto.dh_private(raw), X25519PrivateKey.from_private_bytes(raw)
    assert isinstance(private, X25519PrivateKey)
    assert crypto.dh_public_bytes(private) == reference.public_key().public_bytes_raw()
    assert private.private_bytes_raw() == reference.private_bytes_raw()
    peer = X25519PrivateKey.from_private_bytes(peer_raw).public_key().public_bytes_raw()
    public = crypto.dh_public(peer)
    assert isinstance(public, X25519PublicKey)
    assert public == X25519PublicKey.from_public_bytes(peer)
    assert private.exchange(public) == reference.exchange(X25519PublicKey.from_public_bytes(peer))


def test_the_aead_is_cryptographys_own_class() -> None:
    assert crypto.ChaCha20Poly1305 is ChaCha20Poly1305


def test_a_cryptography_without_the_private_rust_module_gets_the_public_api() -> None:
    """The direct imports are of a private module: a cryptography that moved it must still load (the public methods
    and the public AEAD class, already imported here as they would be), not fail at import."""
    code = (
        "import sys; import cryptography.hazmat.backends.openssl.backend; "
        "from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey; "
        "from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305; "
        "sys.modules['cryptography.hazmat.bindings._rust'] = None; "  # `from ... import` of it: ImportError
        "from probe.wireguard import crypto; "
        "assert crypto._rust_openssl is None; "
        "assert crypto._load_private == X25519PrivateKey.from_private_bytes; "
        "assert crypto.ChaCha20Poly1305 is ChaCha20Poly1305; "
        "k = crypto.dh_private(bytes(range(32))); crypto.dh(k, crypto.dh_public_bytes(crypto.dh_private(bytes(32)))); "
        "sealed = crypto.aead_encrypt(bytes(32), 1, b'data', b''); "
        "assert crypto.aead_decrypt(bytes(32), 1, sealed, b'') == b'data'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_keys_and_the_aead_leave_cryptographys_backend_and_cipher_modules_unimported() -> None:
    """What the direct imports are for (start-up time), in a fresh interpreter: a key pair, a DH, a sealed and opened
    message, and neither the OpenSSL backend nor the `ciphers` package loaded."""
    code = (
        "import sys; from probe.wireguard import crypto; "
        "k = crypto.dh_private(bytes(range(32))); crypto.dh(k, crypto.dh_public_bytes(crypto.dh_private(bytes(32)))); "
        "sealed = crypto.aead_encrypt(bytes(32), 1, b'data', b''); "
        "assert crypto.aead_decrypt(bytes(32), 1, sealed, b'') == b'data'; "
        "print(sorted(m for m in sys.modules if m.startswith(('cryptography.hazmat.backends', "
        "'cryptography.hazmat.primitives.ciphers'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_dh_agrees_with_cryptography_and_rejects_low_order_points() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    b_public = b.public_key().public_bytes_raw()
    assert crypto.dh(a, b_public) == a.exchange(b.public_key())
    with pytest.raises(InvalidKeyError):
        crypto.dh(a, bytes(32))  # the identity point: shared secret would be all zeros
    with pytest.raises(InvalidKeyError):
        crypto.dh(a, b_public[:31])
