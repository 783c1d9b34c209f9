"""The responder side of the WireGuard handshake (§5.4.2-§5.4.5, §5.4.7).

wgprobe is a client, so this exists for two reasons: in-memory two-peer tests of the initiator against a
spec-following responder, and the reflector/lab tools that need a tiny WireGuard server. It follows the
order wireguard-go uses for an incoming initiation:

1. check length and type, then mac1 (keyed with HASH(LABEL_MAC1 ‖ our public key)) — cheap, before any DH;
2. under load, a missing or stale mac2 gets a cookie reply instead of a response;
3. replay the initiator's Noise steps to learn and authenticate its static key, which must be a known peer;
4. the decrypted TAI64N timestamp must be strictly greater than the last accepted one from that peer (§5.1);
5. build the response and derive transport keys, swapped relative to the initiator's.

Not implemented: wireguard-go's 20 ms per-peer initiation flood limit; callers of a lab responder that need it
can compare `now` themselves.
"""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from probe.wireguard.constants import KEY_SIZE, MAC_SIZE, RESPONSE_MAC1_OFFSET
from probe.wireguard.cookie import CookieChecker, mac1_key, verify_mac1
from probe.wireguard.crypto import (
    INITIAL_CHAINING_KEY,
    aead_decrypt,
    aead_encrypt,
    dh,
    dh_private,
    dh_public_bytes,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    mac,
)
from probe.wireguard.errors import (
    AuthenticationError,
    HandshakeStateError,
    ReplayError,
    UnknownPeerError,
)
from probe.wireguard.handshake import initial_hash, psk_or_zeros, random_index
from probe.wireguard.identity import Identity
from probe.wireguard.keys import PublicKey, check_preshared_key
from probe.wireguard.messages import Initiation, Response
from probe.wireguard.session import TransportSession

_ZERO_MAC: Final = bytes(MAC_SIZE)


@dataclass(frozen=True, slots=True)
class HandshakeAccepted:
    """The initiation was valid: send `response`; `session` is ready to receive (and, after that, to send)."""

    response: bytes
    session: TransportSession
    initiator: PublicKey


@dataclass(frozen=True, slots=True)
class CookieRequired:
    """Under load and without a valid mac2: send `cookie_reply` and keep no state (§5.4.7)."""

    cookie_reply: bytes


ResponderResult = HandshakeAccepted | CookieRequired


@dataclass(frozen=True, slots=True)
class _Peer:
    public: PublicKey
    psk: bytes


@dataclass(frozen=True, slots=True)
class _InitiationState:
    """What a verified initiation leaves for building the response."""

    peer: _Peer
    chaining_key: bytes
    hash: bytes
    initiator_ephemeral: bytes
    timestamp: bytes


class Responder:
    """Answers initiations for one local `Identity` from a fixed set of peers (public key -> optional PSK)."""

    def __init__(
        self,
        identity: Identity,
        peers: Mapping[PublicKey, bytes | None],
        *,
        cookie_checker: CookieChecker | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if cookie_checker is not None and cookie_checker.public_key != identity.public_key:
            raise HandshakeStateError("cookie_checker belongs to a different public key")
        self.identity: Final = identity
        self._peers = {key.raw: _Peer(key, psk_or_zeros(check_preshared_key(psk))) for key, psk in peers.items()}
        self._cookie_checker = cookie_checker
        self._randbytes = randbytes
        self._last_timestamp: dict[bytes, bytes] = {}

    def consume_initiation(
        self, data: bytes, now: float, source: bytes | None = None, under_load: bool = False
    ) -> ResponderResult:
        """Verify an initiation and answer it with a response, or with a cookie reply when under load."""
        initiation = Initiation.unpack(data)
        if not verify_mac1(data, self.identity.public_key.raw):
            raise AuthenticationError("initiation mac1 invalid (not keyed with this responder's public key)")
        if under_load:
            checker = self._cookie_checker
            if checker is None or source is None:
                raise HandshakeStateError("under_load needs a cookie_checker and the source address")
            if not checker.verify_mac2(data, source, now):
                return CookieRequired(checker.create_reply(data, source, now))
        state = self._open_initiation(initiation)
        last = self._last_timestamp.get(state.peer.public.raw)
        if last is not None and state.timestamp <= last:
            raise ReplayError("initiation timestamp not newer than the last one from this peer")
        self._last_timestamp[state.peer.public.raw] = state.timestamp
        return self._respond(initiation, state, now)

    def _open_initiation(self, msg: Initiation) -> _InitiationState:
        """The initiator's §5.4.2 steps replayed from our side; authenticates its static key and timestamp."""
        h = hash_(initial_hash(self.identity.public_key.raw) + msg.ephemeral)
        c = kdf1(INITIAL_CHAINING_KEY, msg.ephemeral)
        c, k = kdf2(c, dh(self.identity.private_key.x25519, msg.ephemeral))
        initiator_static = aead_decrypt(k, 0, msg.encrypted_static, h)
        h = hash_(h + msg.encrypted_static)
        peer = self._peers.get(initiator_static)
        if peer is None:
            raise UnknownPeerError("initiation from a static key that is not a known peer")
        c, k = kdf2(c, self.identity.static_dh(peer.public))
        timestamp = aead_decrypt(k, 0, msg.encrypted_timestamp, h)
        h = hash_(h + msg.encrypted_timestamp)
        return _InitiationState(peer, c, h, msg.ephemeral, timestamp)

    def _respond(self, initiation: Initiation, state: _InitiationState, now: float) -> HandshakeAccepted:
        """The response of §5.4.3 and the responder's transport keys (§5.4.5)."""
        ephemeral = dh_private(self._randbytes(KEY_SIZE))
        ephemeral_public = dh_public_bytes(ephemeral)
        sender_index = random_index(self._randbytes)
        c = kdf1(state.chaining_key, ephemeral_public)
        h = hash_(state.hash + ephemeral_public)
        c = kdf1(c, dh(ephemeral, state.initiator_ephemeral))
        c = kdf1(c, dh(ephemeral, state.peer.public.raw))
        c, tau, k = kdf3(c, state.peer.psk)
        h = hash_(h + tau)
        encrypted_nothing = aead_encrypt(k, 0, b"", h)
        receive_key, send_key = kdf2(c, b"")

        unmacked = Response(
            sender_index, initiation.sender_index, ephemeral_public, encrypted_nothing, _ZERO_MAC, _ZERO_MAC
        ).pack()
        body = unmacked[:RESPONSE_MAC1_OFFSET]
        # mac1 keyed with the initiator's public key; mac2 stays zero because we never hold a cookie from it.
        response = body + mac(mac1_key(state.peer.public.raw), body) + _ZERO_MAC
        session = TransportSession(
            local_index=sender_index,
            remote_index=initiation.sender_index,
            send_key=send_key,
            receive_key=receive_key,
            is_initiator=False,
            created_at=now,
        )
        return HandshakeAccepted(response, session, state.peer.public)
