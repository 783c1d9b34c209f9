"""The initiator side of the WireGuard handshake (Noise_IKpsk2, §5.4.2-§5.4.5).

Theory of operation
-------------------
The initiator (the probe) knows the responder's (relay's) static public key S_r. Both sides keep a chaining
key C and a transcript hash H and feed every message field into them; they end up with the same C only if each
side's DH operations used the private keys matching the public keys the other side expected.

Initiation (§5.4.2), sent by us::

    C = HASH(CONSTRUCTION); H = HASH(C ‖ IDENTIFIER); H = HASH(H ‖ S_r)
    C = KDF1(C, E_i); msg.ephemeral = E_i; H = HASH(H ‖ E_i)              # fresh ephemeral E_i per initiation
    (C, k) = KDF2(C, DH(E_i, S_r)); msg.static = AEAD(k, 0, S_i, H); H = HASH(H ‖ msg.static)
    (C, k) = KDF2(C, DH(S_i, S_r)); msg.timestamp = AEAD(k, 0, TAI64N, H); H = HASH(H ‖ msg.timestamp)
    mac1 = MAC(HASH(LABEL_MAC1 ‖ S_r), msg up to mac1); mac2 = cookie ? MAC(cookie, msg up to mac2) : zeros

Response (§5.4.3), consumed by us (its mac1 is keyed with *our* public key S_i)::

    C = KDF1(C, E_r); H = HASH(H ‖ E_r)
    C = KDF1(C, DH(E_i, E_r)); C = KDF1(C, DH(S_i, E_r))
    (C, τ, k) = KDF3(C, Q)        # Q = preshared key, or 32 zero bytes without one (§5.2)
    H = HASH(H ‖ τ); AEAD-open(k, 0, msg.empty, H) must give ε; H = HASH(H ‖ msg.empty)

Transport keys (§5.4.5): (T_send, T_recv) = KDF2(C, ε) for the initiator; the responder swaps them.

States::

    READY --create_initiation--> INITIATION_SENT --consume_response--> ESTABLISHED
                                   |       ^  (retransmit: create_initiation again, new ephemeral and index)
               consume_cookie_reply|       |create_initiation (now carries mac2)
                                   v       |
                                  COOKIE_RECEIVED

Only the latest initiation's response is accepted, as in wireguard-go. A message that fails any check raises a
`ProtocolError` and leaves the state unchanged, so a forged packet cannot break a pending handshake. Timing
out and retransmitting after REKEY_TIMEOUT is the caller's decision: this object never reads a clock.
"""

import enum
import os
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from probe.wireguard.constants import (
    INITIATION_MAC1_OFFSET,
    KEY_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
)
from probe.wireguard.cookie import CookieState, verify_mac1
from probe.wireguard.crypto import (
    INITIAL_CHAINING_KEY,
    INITIAL_HASH,
    aead_decrypt,
    aead_encrypt,
    dh,
    dh_private,
    dh_public,
    dh_public_bytes,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    static_public,
)
from probe.wireguard.errors import AuthenticationError, HandshakeStateError, IndexMismatchError, MessageError
from probe.wireguard.identity import Identity
from probe.wireguard.keys import PublicKey, check_preshared_key
from probe.wireguard.messages import CookieReply, Response, message_type
from probe.wireguard.session import TransportSession

_NO_PRESHARED_KEY: Final = bytes(KEY_SIZE)
_INITIATION_BODY: Final = struct.Struct("<II32s48s28s")  # the initiation up to mac1 (§5.4.2)
assert _INITIATION_BODY.size == INITIATION_MAC1_OFFSET


@lru_cache(maxsize=4096)
def initial_hash(responder_public: bytes) -> bytes:
    """H after mixing in the responder's static key, HASH(HASH(C ‖ IDENTIFIER) ‖ S_r): the same for every
    handshake with one responder, so it is computed once per relay."""
    return hash_(INITIAL_HASH + responder_public)


def random_index(randbytes: Callable[[int], bytes]) -> int:
    """A random 32-bit sender index (§5.4.2); it names the handshake and then the session locally."""
    return int.from_bytes(randbytes(4), "little")


def psk_or_zeros(preshared_key: bytes | None) -> bytes:
    """Q of §5.2: the preshared key, or 32 zero bytes when none is configured."""
    return _NO_PRESHARED_KEY if preshared_key is None else preshared_key


class InitiatorState(enum.Enum):
    READY = "ready"
    INITIATION_SENT = "initiation_sent"
    COOKIE_RECEIVED = "cookie_received"
    ESTABLISHED = "established"


class InitiatorHandshake:
    """One handshake from a local `Identity` to one responder, as a sans-I/O state machine."""

    def __init__(
        self,
        identity: Identity,
        peer_public: PublicKey,
        preshared_key: bytes | None = None,
        *,
        randbytes: Callable[[int], bytes] = os.urandom,
        cookie_state: CookieState | None = None,
    ) -> None:
        if cookie_state is not None and cookie_state.responder != peer_public:
            raise HandshakeStateError("cookie_state belongs to a different responder key")
        self.identity: Final = identity
        self.peer_public: Final = peer_public
        self._psk = psk_or_zeros(check_preshared_key(preshared_key))
        self._randbytes = randbytes
        # Share one CookieState across handshakes to the same relay so a cookie outlives a single handshake.
        self.cookie_state: Final = cookie_state if cookie_state is not None else CookieState(peer_public)
        self.state = InitiatorState.READY
        self.sender_index: int | None = None
        self.sent_at: float | None = None
        self._ephemeral: X25519PrivateKey | None = None
        self._chaining_key = b""
        self._hash = b""

    def create_initiation(self, now: float) -> bytes:
        """A new initiation message (fresh ephemeral key and sender index); call again to retransmit."""
        if self.state is InitiatorState.ESTABLISHED:
            raise HandshakeStateError("handshake already established; start a new one to rekey")
        peer = self.peer_public.raw
        ephemeral = dh_private(self._randbytes(KEY_SIZE))
        ephemeral_public = dh_public_bytes(ephemeral)
        sender_index = random_index(self._randbytes)

        h = hash_(initial_hash(peer) + ephemeral_public)
        c = kdf1(INITIAL_CHAINING_KEY, ephemeral_public)
        c, k = kdf2(c, dh(ephemeral, static_public(peer)))
        encrypted_static = aead_encrypt(k, 0, self.identity.public_key.raw, h)
        h = hash_(h + encrypted_static)
        c, k = kdf2(c, self.identity.static_dh(self.peer_public))
        encrypted_timestamp = aead_encrypt(k, 0, self.identity.timestamp(now), h)
        h = hash_(h + encrypted_timestamp)

        # Packed with the layout directly: every field was made here at its size, so the field checks of
        # `Initiation` would only cost time. The cookie state appends mac1 (and mac2 when it holds a cookie).
        body = _INITIATION_BODY.pack(
            MESSAGE_INITIATION, sender_index, ephemeral_public, encrypted_static, encrypted_timestamp
        )
        message = self.cookie_state.add_macs(body, now)

        self._ephemeral, self._chaining_key, self._hash = ephemeral, c, h
        self.sender_index, self.sent_at = sender_index, now
        self.state = InitiatorState.INITIATION_SENT
        return message

    def _check_pending(self, receiver_index: int, what: str) -> X25519PrivateKey:
        if self.state not in (InitiatorState.INITIATION_SENT, InitiatorState.COOKIE_RECEIVED):
            raise HandshakeStateError(f"{what} received in state {self.state.value}")
        if receiver_index != self.sender_index:
            raise IndexMismatchError(f"{what} for index {receiver_index:#010x}, ours is {self.sender_index:#010x}")
        assert self._ephemeral is not None  # set together with the INITIATION_SENT state
        return self._ephemeral

    def consume_response(self, data: bytes, now: float) -> TransportSession:
        """Verify and decrypt the responder's message; on success the handshake is ESTABLISHED.

        mac2 of a response is not checked: a responder only sets it when holding a cookie from us, and a
        client never sends cookie replies (wireguard-go checks it only when itself under load).
        """
        response = Response.unpack(data)
        ephemeral = self._check_pending(response.receiver_index, "response")
        if not verify_mac1(data, self.identity.public_key.raw):
            raise AuthenticationError("response mac1 invalid (not keyed with our public key)")

        c = kdf1(self._chaining_key, response.ephemeral)
        h = hash_(self._hash + response.ephemeral)
        their_ephemeral = dh_public(response.ephemeral)  # loaded once for both DH operations below
        c = kdf1(c, dh(ephemeral, their_ephemeral))
        c = kdf1(c, dh(self.identity.private_key.x25519, their_ephemeral))
        c, tau, k = kdf3(c, self._psk)
        h = hash_(h + tau)
        if aead_decrypt(k, 0, response.encrypted_nothing, h) != b"":
            raise AuthenticationError("response empty field decrypted to data")  # unreachable with a 16-byte field
        send_key, receive_key = kdf2(c, b"")

        self.state = InitiatorState.ESTABLISHED
        self._ephemeral, self._chaining_key, self._hash = None, b"", b""  # forget secrets no longer needed
        assert self.sender_index is not None
        return TransportSession(
            local_index=self.sender_index,
            remote_index=response.sender_index,
            send_key=send_key,
            receive_key=receive_key,
            is_initiator=True,
            created_at=now,
        )

    def consume_cookie_reply(self, data: bytes, now: float) -> None:
        """Take the cookie from a cookie reply; the caller then calls `create_initiation` again (§5.4.7)."""
        reply = CookieReply.unpack(data)
        self._check_pending(reply.receiver_index, "cookie reply")
        self.cookie_state.consume_reply(reply, now)
        self.state = InitiatorState.COOKIE_RECEIVED

    def receive(self, data: bytes, now: float) -> TransportSession | None:
        """Dispatch a datagram from the responder: a session for a response, None after a cookie reply."""
        kind = message_type(data)
        if kind == MESSAGE_RESPONSE:
            return self.consume_response(data, now)
        if kind == MESSAGE_COOKIE_REPLY:
            self.consume_cookie_reply(data, now)
            return None
        raise MessageError(f"initiator expected a response or cookie reply, got type field {kind:#010x}")

    def __repr__(self) -> str:
        return f"InitiatorHandshake(peer={self.peer_public.to_base64()!r}, state={self.state.value})"
