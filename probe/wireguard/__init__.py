"""Sans-I/O WireGuard protocol core: keys, messages, the Noise_IKpsk2 handshake, cookies, transport sessions.

Nothing here opens sockets, starts tasks or reads a clock: callers pass received bytes and `now` (Unix
seconds) in and get bytes to send and decrypted payloads out. Every rejection is a `ProtocolError` subclass.

Typical client use::

    identity = Identity(PrivateKey.from_base64(agent_key))          # one per key, shared by all handshakes
    handshake = InitiatorHandshake(identity, PublicKey.from_base64(relay_key))
    sock.send(handshake.create_initiation(now))
    session = handshake.consume_response(sock.recv(), now)           # or consume_cookie_reply, then resend
    sock.send(session.encrypt(ip_packet))
    reply = session.decrypt(sock.recv())                             # padded; strip by the inner IP length
"""

from typing import TYPE_CHECKING

from probe.wireguard.cookie import CookieChecker, CookieState, compute_mac1, compute_mac2, verify_mac1
from probe.wireguard.errors import (
    AuthenticationError,
    HandshakeStateError,
    IndexMismatchError,
    InvalidKeyError,
    MessageError,
    ProtocolError,
    ReplayError,
    UnknownPeerError,
)
from probe.wireguard.handshake import InitiatorHandshake, InitiatorState
from probe.wireguard.identity import Identity, decode_tai64n, encode_tai64n
from probe.wireguard.keys import PrivateKey, PublicKey, decode_preshared_key
from probe.wireguard.messages import (
    CookieReply,
    Initiation,
    Message,
    Response,
    Transport,
    message_type,
    parse_message,
)
from probe.wireguard.session import ReplayWindow, TransportSession

if TYPE_CHECKING:
    from probe.wireguard.responder import CookieRequired, HandshakeAccepted, Responder, ResponderResult

# The responder side serves tests, the lab and the simulated fleet, never a probe: it loads on first use.
_RESPONDER = frozenset({"CookieRequired", "HandshakeAccepted", "Responder", "ResponderResult"})


def __getattr__(name: str) -> object:
    if name in _RESPONDER:
        from probe.wireguard import responder

        return getattr(responder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuthenticationError",
    "CookieChecker",
    "CookieReply",
    "CookieRequired",
    "CookieState",
    "HandshakeAccepted",
    "HandshakeStateError",
    "Identity",
    "IndexMismatchError",
    "Initiation",
    "InitiatorHandshake",
    "InitiatorState",
    "InvalidKeyError",
    "Message",
    "MessageError",
    "PrivateKey",
    "ProtocolError",
    "PublicKey",
    "ReplayError",
    "ReplayWindow",
    "Responder",
    "ResponderResult",
    "Response",
    "Transport",
    "TransportSession",
    "UnknownPeerError",
    "compute_mac1",
    "compute_mac2",
    "decode_preshared_key",
    "decode_tai64n",
    "encode_tai64n",
    "message_type",
    "parse_message",
    "verify_mac1",
]
