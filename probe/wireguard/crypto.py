"""The cryptographic primitives of §5.4, under the whitepaper's names.

HASH, MAC, HMAC and KDF are BLAKE2s from `hashlib`; AEAD is ChaCha20-Poly1305 and DH is X25519 from
`cryptography`; XAEAD (cookies only) is XChaCha20-Poly1305 from libsodium via PyNaCl.

A client probe has a CPU budget of about 0.5 ms for a handshake plus one echo, most of it in three X25519
operations, so the helpers here avoid needless objects: HMAC is computed by hand from two BLAKE2s calls (twice
as fast as `hmac.new`), and the constants every handshake starts from are computed once at import.

Every failure of a primitive on network input is converted here into a `ProtocolError` subclass.
"""

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from probe.wireguard.constants import (
    CONSTRUCTION,
    COOKIE_NONCE_SIZE,
    IDENTIFIER,
    KEY_SIZE,
)
from probe.wireguard.errors import AuthenticationError, InvalidKeyError

_blake2s = hashlib.blake2s


# Loading an X25519 key through `X25519PrivateKey.from_private_bytes` / `X25519PublicKey.from_public_bytes` imports
# cryptography's whole OpenSSL backend module (its cffi binding, RSA, EC, padding: 8 ms of `probe server`'s cold
# start, on the first key) only to ask `backend.x25519_supported()`, which is "not in FIPS mode"; the methods then
# return what these two functions of its Rust core return. They are called directly where this cryptography has them
# (constraints.txt pins it; tests/unit/test_wg_crypto.py holds both ways equal) and FIPS mode is off; otherwise the
# public methods are, and say what they say (in FIPS mode: UnsupportedAlgorithm).
def _rust_core() -> Any:
    """cryptography's Rust core (a private module), or None in a cryptography that has it elsewhere."""
    try:
        from cryptography.hazmat.bindings._rust import openssl
    except ImportError:
        return None
    return openssl


_rust_openssl = _rust_core()
_load_private: Callable[[bytes], X25519PrivateKey] = X25519PrivateKey.from_private_bytes
_load_public: Callable[[bytes], X25519PublicKey] = X25519PublicKey.from_public_bytes
try:
    if _rust_openssl is not None and not _rust_openssl.is_fips_enabled():
        _load_private, _load_public = _rust_openssl.x25519.from_private_bytes, _rust_openssl.x25519.from_public_bytes
except AttributeError:  # another cryptography: the public methods it is
    pass

# `cryptography.hazmat.primitives.ciphers.aead.ChaCha20Poly1305` is this very class of the Rust core, re-exported;
# importing it from there imports the whole `ciphers` package first (its algorithms and modes, the "decrepit" ciphers
# among them: 2.5 ms of the cold start). The same class, taken where that module takes it, with the same fallback.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305 as ChaCha20Poly1305  # noqa: PLC0414 (re-exported)
else:
    try:
        ChaCha20Poly1305 = _rust_openssl.aead.ChaCha20Poly1305
    except AttributeError:  # None, or another cryptography
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

_HMAC_BLOCK_SIZE: Final = 64  # BLAKE2s block size, the HMAC padding length (RFC 2104)
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
_ZERO_NONCE_PREFIX: Final = bytes(4)


def hash_(data: bytes) -> bytes:
    """HASH(input): BLAKE2s with a 32-byte digest."""
    return _blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, input): keyed BLAKE2s with a 16-byte digest (used for mac1, mac2 and cookies)."""
    return _blake2s(data, key=key, digest_size=16).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC(key, input): RFC 2104 HMAC over BLAKE2s-256.

    Written out rather than via the `hmac` module because it is on the handshake's hot path; the unit tests
    check it against `hmac.new(key, data, hashlib.blake2s)`.
    """
    if len(key) > _HMAC_BLOCK_SIZE:
        key = _blake2s(key).digest()
    key = key.ljust(_HMAC_BLOCK_SIZE, b"\0")
    inner = _blake2s(key.translate(_IPAD) + data).digest()
    return _blake2s(key.translate(_OPAD) + inner).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1(key, input) = τ1, the HKDF-style extraction of §5.4."""
    t0 = hmac(key, data)
    return hmac(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2(key, input) = (τ1, τ2)."""
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    return t1, hmac(t0, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3(key, input) = (τ1, τ2, τ3)."""
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    return t1, t2, hmac(t0, t2 + b"\x03")


def aead_nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20-Poly1305 nonce: 32 zero bits then the little-endian 64-bit counter (§5.4)."""
    return _ZERO_NONCE_PREFIX + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, associated: bytes) -> bytes:
    """AEAD(key, counter, plain, auth) for one-shot handshake fields; sessions keep their cipher objects."""
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, associated)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, associated: bytes) -> bytes:
    """Inverse of `aead_encrypt`; a bad tag raises `AuthenticationError`."""
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, associated)
    except InvalidTag:
        raise AuthenticationError("AEAD authentication failed") from None


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """XAEAD(key, nonce, plain, auth): XChaCha20-Poly1305 with a 24-byte random nonce (§5.4.7)."""
    # libsodium loads only when a cookie is seen (a relay under load), not in every probe's start-up.
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated, nonce, key))


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Inverse of `xaead_encrypt`; a bad tag or malformed input raises `AuthenticationError`."""
    if len(nonce) != COOKIE_NONCE_SIZE or len(key) != KEY_SIZE:
        raise AuthenticationError("XAEAD nonce or key has the wrong length")
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
    from nacl.exceptions import CryptoError

    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, associated, nonce, key))
    except (CryptoError, ValueError, TypeError):
        raise AuthenticationError("XAEAD authentication failed") from None


def dh_private(raw: bytes) -> X25519PrivateKey:
    """Load a 32-byte X25519 scalar (X25519 clamps it, so any 32 bytes are a valid private key)."""
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(f"private key must be {KEY_SIZE} bytes, got {len(raw)}")
    return _load_private(raw)


def dh_public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32-byte public key of an X25519 private key."""
    return private.public_key().public_bytes_raw()


def dh(private: X25519PrivateKey, public: bytes | X25519PublicKey) -> bytes:
    """DH(private, public): X25519. A low-order public key (all-zero result) raises `InvalidKeyError`.

    wireguard-go and the kernel reject an all-zero shared secret the same way, so a peer sending one is
    treated as an invalid key rather than silently producing predictable keys. `public` may be a key already
    loaded with `dh_public` (a relay's static key, used in every initiation to it).
    """
    key = public if isinstance(public, X25519PublicKey) else dh_public(public)
    try:
        return private.exchange(key)
    except ValueError:
        raise InvalidKeyError("X25519 with a low-order public key (all-zero shared secret)") from None


def dh_public(public: bytes) -> X25519PublicKey:
    """Load a 32-byte X25519 public key once, for several DH operations with it."""
    if len(public) != KEY_SIZE:
        raise InvalidKeyError(f"public key must be {KEY_SIZE} bytes, got {len(public)}")
    return _load_public(public)


@lru_cache(maxsize=4096)
def static_public(public: bytes) -> X25519PublicKey:
    """A relay's static public key, loaded once per process: every initiation to the relay uses it."""
    return dh_public(public)


# §5.4.2: every handshake starts from Ci = HASH(CONSTRUCTION) and Hi = HASH(Ci ‖ IDENTIFIER).
INITIAL_CHAINING_KEY: Final = hash_(CONSTRUCTION)
INITIAL_HASH: Final = hash_(INITIAL_CHAINING_KEY + IDENTIFIER)
