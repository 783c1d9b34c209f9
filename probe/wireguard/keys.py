"""Curve25519 key types as WireGuard writes them: 32 raw bytes, exchanged as standard base64 (44 characters).

A `PrivateKey` never shows its bytes in `repr` or `str`, so keys can sit in config objects that get logged.
Equality is constant-time (`hmac.compare_digest`) because private keys are compared too.
"""

import base64
import binascii
import hmac as _stdlib_hmac
import os
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from probe.wireguard.constants import KEY_SIZE
from probe.wireguard.crypto import dh_private, dh_public_bytes
from probe.wireguard.errors import InvalidKeyError

_BASE64_KEY_LENGTH: Final = 44  # 32 bytes in standard base64 with one "=" of padding, as `wg genkey` prints


def decode_base64_key(text: str | bytes, kind: str = "") -> bytes:
    """The 32 raw bytes of a key in base64 (`wg genkey`, `wg pubkey`, `wg genpsk`); InvalidKeyError saying why not.

    The one decoder for keys from anywhere: key files, inventories, the protocol core. Surrounding whitespace (a key
    file's trailing newline) is allowed. Its messages say what is wrong and never quote the text, not even one
    character: the text may be a private key, and a malformed secret is still a secret. `kind` ("private",
    "public", "preshared") only names the key in the message.
    """
    name = f"{kind} key" if kind else "key"
    if isinstance(text, bytes | bytearray | memoryview):
        data = bytes(text)
        # Decoding bytes that are not ASCII would raise a UnicodeDecodeError that quotes the offending byte.
        if not data.isascii():
            raise InvalidKeyError(f"{name} is not valid base64")
        text = data.decode("ascii")
    elif not isinstance(text, str):
        raise InvalidKeyError(f"{name} must be text, got {type(text).__name__}")
    stripped = text.strip()
    if len(stripped) != _BASE64_KEY_LENGTH:
        raise InvalidKeyError(
            f"{name} must be {_BASE64_KEY_LENGTH} base64 characters ({KEY_SIZE} bytes), got {len(stripped)}"
        )
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise InvalidKeyError(f"{name} is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(f"{name} must decode to {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def _check_raw(raw: bytes, kind: str) -> bytes:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidKeyError(f"{kind} key must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(f"{kind} key must be {KEY_SIZE} bytes, got {len(raw)}")
    return raw


class PublicKey:
    """A Curve25519 public key (a relay's or an agent's)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        self._raw = _check_raw(raw, "public")

    @classmethod
    def from_base64(cls, text: str | bytes) -> "PublicKey":
        return cls(decode_base64_key(text, "public"))

    @property
    def raw(self) -> bytes:
        return self._raw

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def __bytes__(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return _stdlib_hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((PublicKey, self._raw))

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"


class PrivateKey:
    """A Curve25519 private key; its public key and X25519 object are computed once and kept."""

    __slots__ = ("_public", "_raw", "_x25519")

    def __init__(self, raw: bytes) -> None:
        self._raw = _check_raw(raw, "private")
        self._x25519: X25519PrivateKey = dh_private(self._raw)
        self._public = PublicKey(dh_public_bytes(self._x25519))

    @classmethod
    def from_base64(cls, text: str | bytes) -> "PrivateKey":
        return cls(decode_base64_key(text, "private"))

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = os.urandom) -> "PrivateKey":
        """A new key, clamped like `wg genkey` does (RFC 7748 §5), so it round-trips through `wg pubkey`."""
        raw = bytearray(randbytes(KEY_SIZE))
        raw[0] &= 248
        raw[31] = (raw[31] & 127) | 64
        return cls(bytes(raw))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def x25519(self) -> X25519PrivateKey:
        """The `cryptography` object, for DH without re-loading the scalar each time."""
        return self._x25519

    def public_key(self) -> PublicKey:
        return self._public

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return _stdlib_hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        # Hash by the public key so the private bytes never feed a hash that might be observable.
        return hash((PrivateKey, self._public.raw))

    def __repr__(self) -> str:
        return f"PrivateKey(public={self._public.to_base64()!r})"


def decode_preshared_key(text: str | bytes) -> bytes:
    """A preshared key from its base64 form (`wg genpsk`), as the 32 raw bytes the handshake takes."""
    return decode_base64_key(text, "preshared")


def check_preshared_key(psk: bytes | None) -> bytes | None:
    """Validate an optional raw preshared key (§5.2); `None` means none (the handshake mixes in zeros)."""
    if psk is None:
        return None
    return _check_raw(psk, "preshared")
