"""mac1, mac2 and the cookie mechanism (§5.3, §5.4.4, §5.4.7).

Theory of operation:

- Every handshake message ends in mac1 and mac2. mac1 = MAC(HASH(LABEL_MAC1 ‖ receiver's static public key),
  message up to mac1): anyone who knows the receiver's public key can compute it, and a receiver drops
  messages whose mac1 is wrong before doing any expensive DH. Note whose key: an initiation's mac1 uses the
  *relay's* public key, a response's mac1 uses *ours*.
- A responder under load does not answer an initiation whose mac2 is not valid; it sends a cookie reply
  instead. The cookie is MAC(secret, initiator's source address), the secret changing every two minutes. It
  travels encrypted with XAEAD, key HASH(LABEL_COOKIE ‖ responder's public key), a random 24-byte nonce, and
  the mac1 of the initiation it answers as associated data, so only the initiator that sent that initiation
  can use it.
- The initiator keeps the cookie (`CookieState`) and, while it is younger than two minutes, puts
  mac2 = MAC(cookie, message up to mac2) into its next initiations; otherwise mac2 is sixteen zero bytes.

`CookieChecker` is the responder side, so in-memory tests can run the whole cookie path.
"""

import hmac as _stdlib_hmac
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from probe.wireguard.constants import (
    COOKIE_LIFETIME,
    COOKIE_NONCE_SIZE,
    COOKIE_SECRET_MAX_AGE,
    HASH_SIZE,
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    INITIATION_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
)
from probe.wireguard.crypto import hash_, mac, xaead_decrypt, xaead_encrypt
from probe.wireguard.errors import HandshakeStateError, MessageError
from probe.wireguard.keys import PublicKey
from probe.wireguard.messages import CookieReply

_ZERO_MAC: Final = bytes(MAC_SIZE)


@lru_cache(maxsize=4096)
def mac1_key(public: bytes) -> bytes:
    """HASH(LABEL_MAC1 ‖ public): mac1 key for messages *to* the owner of `public` (cached per peer)."""
    return hash_(LABEL_MAC1 + public)


@lru_cache(maxsize=4096)
def cookie_key(public: bytes) -> bytes:
    """HASH(LABEL_COOKIE ‖ public): the XAEAD key of cookie replies sent *by* the owner of `public`."""
    return hash_(LABEL_COOKIE + public)


def compute_mac1(message: bytes, receiver_public: bytes) -> bytes:
    """mac1 of a handshake message: keyed over everything before the two trailing macs."""
    return mac(mac1_key(receiver_public), message[: len(message) - 2 * MAC_SIZE])


def verify_mac1(message: bytes, receiver_public: bytes) -> bool:
    """Whether the message's mac1 is right for a message addressed to the owner of `receiver_public`."""
    expected = compute_mac1(message, receiver_public)
    offset = len(message) - 2 * MAC_SIZE
    return _stdlib_hmac.compare_digest(expected, message[offset : offset + MAC_SIZE])


def compute_mac2(message: bytes, cookie: bytes) -> bytes:
    """mac2 of a handshake message: keyed with the cookie over everything before mac2."""
    return mac(cookie, message[: len(message) - MAC_SIZE])


class CookieState:
    """The initiator's view of one responder's cookies: the last mac1 sent and the latest decrypted cookie."""

    __slots__ = ("_cookie", "_cookie_key", "_last_mac1", "_mac1_key", "_received_at", "responder")

    def __init__(self, responder: PublicKey) -> None:
        self.responder: Final = responder
        self._mac1_key = mac1_key(responder.raw)
        self._cookie_key = cookie_key(responder.raw)
        self._cookie: bytes | None = None
        self._received_at = 0.0
        self._last_mac1: bytes | None = None

    def fresh_cookie(self, now: float) -> bytes | None:
        """The held cookie if it is younger than its lifetime; a clock gone backwards also discards it."""
        if self._cookie is None:
            return None
        if not 0.0 <= now - self._received_at < COOKIE_LIFETIME:
            self._cookie = None
            return None
        return self._cookie

    def add_macs(self, body: bytes, now: float) -> bytes:
        """Append mac1 and mac2 to a handshake message body (the message up to mac1) and remember mac1."""
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        cookie = self.fresh_cookie(now)
        mac2 = _ZERO_MAC if cookie is None else mac(cookie, body + mac1)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Decrypt a cookie reply (AD = our last mac1) and hold its cookie from `now` on.

        Raises `AuthenticationError` if it does not decrypt: forged, for an older initiation, or another key.
        """
        if self._last_mac1 is None:
            raise HandshakeStateError("cookie reply received before any handshake message was sent")
        self._cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        self._received_at = now


class CookieChecker:
    """The responder side: rotating secret, cookie per source address, cookie replies and mac2 checks."""

    __slots__ = ("_cookie_key", "_randbytes", "_secret", "_secret_born", "public_key")

    def __init__(self, public_key: PublicKey, randbytes: Callable[[int], bytes] = os.urandom) -> None:
        self.public_key: Final = public_key
        self._cookie_key = cookie_key(public_key.raw)
        self._randbytes = randbytes
        self._secret: bytes | None = None
        self._secret_born = 0.0

    def _secret_valid(self, now: float) -> bool:
        return self._secret is not None and 0.0 <= now - self._secret_born < COOKIE_SECRET_MAX_AGE

    def cookie(self, source: bytes, now: float) -> bytes:
        """MAC(secret, source address), first replacing the secret if it is two minutes old (§5.4.7)."""
        if self._secret is None or not self._secret_valid(now):
            self._secret = self._randbytes(HASH_SIZE)
            self._secret_born = now
        return mac(self._secret, source)

    def verify_mac2(self, message: bytes, source: bytes, now: float) -> bool:
        """Whether mac2 proves the sender has the current cookie for `source` (never after the secret expired)."""
        if self._secret is None or not self._secret_valid(now):
            return False
        expected = compute_mac2(message, mac(self._secret, source))
        return _stdlib_hmac.compare_digest(expected, message[len(message) - MAC_SIZE :])

    def create_reply(self, initiation: bytes, source: bytes, now: float) -> bytes:
        """The cookie reply to an initiation (whose mac1 the caller has already verified) from `source`."""
        if len(initiation) != INITIATION_SIZE:
            raise MessageError(f"initiation must be {INITIATION_SIZE} bytes, got {len(initiation)}")
        sender_index = int.from_bytes(initiation[4:8], "little")
        mac1 = initiation[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET]
        nonce = self._randbytes(COOKIE_NONCE_SIZE)
        encrypted = xaead_encrypt(self._cookie_key, nonce, self.cookie(source, now), mac1)
        return CookieReply(sender_index, nonce, encrypted).pack()
