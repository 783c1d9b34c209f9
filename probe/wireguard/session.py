"""The transport session: the keys a finished handshake yields, counters, and the replay window (§5.4.6, §6).

Theory of operation:

- A session has a local index (what the peer puts in its messages to us), a remote index (what we put in
  ours), a sending key and a receiving key. Each sent message carries the next 64-bit counter, which is also
  the AEAD nonce; the plaintext (an IP packet, or nothing for a keepalive) is zero-padded to a multiple of 16 bytes.
- Receiving checks, in this order: length and type, receiver index, that the counter is inside the replay
  window and not seen yet, then the AEAD tag, and only then marks the counter seen. Marking before
  authenticating would let one forged packet with a huge counter slide the window and make every genuine
  packet look too old.
- The responder must not send with a new session until it has received a transport message on it: only that
  proves the initiator has the keys too (§5.4.6, "the initiator sends first"). `encrypt` enforces it.
- A session stops after REJECT_AFTER_MESSAGES messages each way (§6.2). Time-based expiry needs the clock,
  which the caller owns: `expired(now)` says whether REJECT_AFTER_TIME has passed since `created_at`.
"""

from typing import Final

from cryptography.exceptions import InvalidTag

from probe.wireguard.constants import (
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REPLAY_WINDOW_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from probe.wireguard.crypto import ChaCha20Poly1305
from probe.wireguard.errors import (
    AuthenticationError,
    HandshakeStateError,
    IndexMismatchError,
    MessageError,
    ReplayError,
)
from probe.wireguard.messages import TRANSPORT_HEADER

_PAD: Final = bytes(PADDING_MULTIPLE)
_NONCE_PREFIX: Final = bytes(4)


class ReplayWindow:
    """Sliding window of seen counters (RFC 6479 semantics) as one Python int used as a bitmask.

    Bit i of `_bitmap` is set when counter `_highest - i` has been seen. `check` never changes state; `mark`
    is called only once the message has authenticated.
    """

    __slots__ = ("_bitmap", "_highest", "size")

    def __init__(self, size: int = REPLAY_WINDOW_SIZE) -> None:
        self.size: Final = size
        self._highest = -1  # nothing seen yet
        self._bitmap = 0

    @property
    def highest(self) -> int:
        """The greatest counter marked so far, or -1."""
        return self._highest

    def check(self, counter: int) -> bool:
        """Whether `counter` may still be accepted: ahead of the window, or inside it and unseen."""
        if counter > self._highest:
            return True
        behind = self._highest - counter
        return behind < self.size and not (self._bitmap >> behind) & 1

    def mark(self, counter: int) -> None:
        """Record `counter` as seen; the caller has checked it and authenticated its message."""
        if counter > self._highest:
            shift = counter - self._highest
            # A jump of a window or more clears the window; never shift by a huge (64-bit) amount.
            self._bitmap = 1 if shift >= self.size else ((self._bitmap << shift) | 1) & ((1 << self.size) - 1)
            self._highest = counter
        else:
            self._bitmap |= 1 << (self._highest - counter)


class TransportSession:
    """The transport keys a handshake yields; `encrypt` and `decrypt` whole transport messages."""

    __slots__ = (
        "_can_send",
        "_receiver",
        "_send_counter",
        "_sender",
        "created_at",
        "is_initiator",
        "local_index",
        "remote_index",
        "replay_window",
    )

    def __init__(
        self,
        *,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        receive_key: bytes,
        is_initiator: bool,
        created_at: float,
    ) -> None:
        self.local_index: Final = local_index
        self.remote_index: Final = remote_index
        self.is_initiator: Final = is_initiator
        self.created_at: Final = created_at
        # One cipher object per key for the session's life: creating one per packet would be wasted work.
        self._sender = ChaCha20Poly1305(send_key)
        self._receiver = ChaCha20Poly1305(receive_key)
        self._send_counter = 0
        self._can_send = is_initiator
        self.replay_window = ReplayWindow()

    @property
    def send_counter(self) -> int:
        """The counter the next sent message will carry (= messages sent so far)."""
        return self._send_counter

    @property
    def can_send(self) -> bool:
        """False for a responder session until the initiator's first transport message has authenticated."""
        return self._can_send

    def expired(self, now: float) -> bool:
        """Whether the session is older than REJECT_AFTER_TIME (§6.2) and must not be used any more."""
        return now - self.created_at >= REJECT_AFTER_TIME

    def encrypt(self, plaintext: bytes) -> bytes:
        """A whole transport message carrying `plaintext` zero-padded to 16 bytes (b"" makes a keepalive)."""
        if not self._can_send:
            raise HandshakeStateError("responder session cannot send before receiving from the initiator")
        counter = self._send_counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise HandshakeStateError("session has sent REJECT_AFTER_MESSAGES messages; a new handshake is needed")
        self._send_counter = counter + 1
        padded = plaintext + _PAD[: -len(plaintext) % PADDING_MULTIPLE]
        header = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, self.remote_index, counter)
        # The nonce is the header's counter field (little-endian, §5.4.6) behind four zero bytes: `aead_nonce`.
        return header + self._sender.encrypt(_NONCE_PREFIX + header[8:], padded, None)

    def decrypt(self, data: bytes) -> bytes:
        """The padded plaintext of a transport message for this session (b"" for a keepalive).

        Raises `MessageError`, `IndexMismatchError`, `ReplayError` or `AuthenticationError`; a message that
        fails any check leaves the session unchanged.
        """
        if len(data) < TRANSPORT_MIN_SIZE:
            raise MessageError(f"transport message must be at least {TRANSPORT_MIN_SIZE} bytes, got {len(data)}")
        kind, receiver_index, counter = TRANSPORT_HEADER.unpack_from(data)
        if kind != MESSAGE_TRANSPORT:
            raise MessageError(f"not a transport message: type field {kind:#010x}")
        if receiver_index != self.local_index:
            raise IndexMismatchError(f"transport for index {receiver_index:#010x}, ours is {self.local_index:#010x}")
        if counter >= REJECT_AFTER_MESSAGES or not self.replay_window.check(counter):
            raise ReplayError(f"transport counter {counter} replayed or outside the window")
        try:
            nonce = _NONCE_PREFIX + bytes(data[8:TRANSPORT_HEADER_SIZE])  # as in `encrypt`
            plaintext = self._receiver.decrypt(nonce, bytes(data[TRANSPORT_HEADER_SIZE:]), None)
        except InvalidTag:
            raise AuthenticationError("transport message failed authentication") from None
        self.replay_window.mark(counter)
        self._can_send = True
        return plaintext

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return (
            f"TransportSession({role}, local={self.local_index:#010x}, remote={self.remote_index:#010x}, "
            f"sent={self._send_counter}, highest_received={self.replay_window.highest})"
        )
