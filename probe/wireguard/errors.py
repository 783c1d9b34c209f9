"""Errors of the WireGuard protocol core.

The rule these serve: any byte string that arrives from the network and is fed to a decoder in this package
yields either a valid result or one of these — never a `struct.error`, `ValueError`, `InvalidTag` or
`CryptoError`. Callers (probe stages) catch `ProtocolError` and turn the subclass into a failure reason.
"""

from probe.errors import WgProbeError


class ProtocolError(WgProbeError):
    """A WireGuard message or key was rejected; the subclass says why."""


class MessageError(ProtocolError):
    """Malformed message: wrong length, unknown type, non-zero reserved bytes."""


class AuthenticationError(ProtocolError):
    """A MAC, an AEAD tag or a Diffie-Hellman result did not check out (wrong keys or tampering)."""


class UnknownPeerError(AuthenticationError):
    """An initiation decrypted to a static public key the responder does not know."""


class ReplayError(ProtocolError):
    """A transport counter was already seen or is too old, or a handshake timestamp did not increase."""


class IndexMismatchError(ProtocolError):
    """The message's receiver index is not the one this handshake or session owns."""


class HandshakeStateError(ProtocolError):
    """The operation is not allowed in the current handshake or session state."""


class InvalidKeyError(ProtocolError):
    """A key is not 32 bytes, not valid base64, or a low-order curve point."""
