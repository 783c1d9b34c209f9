"""Wire layouts of the four WireGuard messages (§5.4.2, §5.4.3, §5.4.7, §5.4.6).

Every message starts with a one-byte type and three reserved zero bytes; like wireguard-go we read those four
bytes as one little-endian u32, so a non-zero reserved byte is simply an unknown type. Indexes and the
transport counter are little-endian. `unpack` rejects any length or type mismatch with `MessageError`; it
never authenticates — that is the handshake's and the session's job.

The transport session packs its header with `TRANSPORT_HEADER` directly instead of building a `Transport`
object, because it runs once per packet.
"""

import struct
from typing import ClassVar, Final, Self

from probe.wireguard.constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    KEY_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TAG_SIZE,
    TIMESTAMP_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from probe.wireguard.errors import MessageError

_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1
_INTEGER_LIMITS: Final = {"sender_index": _U32_MAX, "receiver_index": _U32_MAX, "counter": _U64_MAX}

INITIATION: Final = struct.Struct("<II32s48s28s16s16s")
RESPONSE: Final = struct.Struct("<III32s16s16s16s")
COOKIE_REPLY: Final = struct.Struct("<II24s32s")
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
_TYPE: Final = struct.Struct("<I")

assert INITIATION.size == INITIATION_SIZE
assert RESPONSE.size == RESPONSE_SIZE
assert COOKIE_REPLY.size == COOKIE_REPLY_SIZE
assert TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE


class _Message:
    """What the four messages share: fields set once, checked then (`struct` would pad or truncate a wrong length
    or an out-of-range integer), read-only afterwards; equal, hashed and shown by value.

    Written out rather than frozen, slotted dataclasses: a dataclass compiles its methods from source when its class
    is made, ~3.8 M instructions each, and `probe server` makes all four before it probes (2% of its start-up)."""

    __slots__ = ()
    _FIELDS: ClassVar[tuple[str, ...]] = ()  # in wire order
    _SIZES: ClassVar[dict[str, int]] = {}  # exact lengths of bytes fields

    def _set(self, *values: int | bytes) -> None:
        cls = type(self)
        for name, value in zip(cls._FIELDS, values, strict=True):
            limit = _INTEGER_LIMITS.get(name)
            if limit is not None:
                if not isinstance(value, int) or not 0 <= value <= limit:
                    raise MessageError(f"{cls.__name__}.{name} must be an integer in [0, {limit}]")
            elif not isinstance(value, bytes):
                raise MessageError(f"{cls.__name__}.{name} must be bytes")
            elif name in cls._SIZES and len(value) != cls._SIZES[name]:
                raise MessageError(f"{cls.__name__}.{name} must be {cls._SIZES[name]} bytes, got {len(value)}")
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[int | bytes, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Message)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(self._FIELDS, self._values(), strict=True))
        return f"{type(self).__name__}({shown})"


def _check_length(data: bytes, expected: int, name: str) -> None:
    if len(data) != expected:
        raise MessageError(f"{name} must be {expected} bytes, got {len(data)}")


def _check_type(found: int, expected: int, name: str) -> None:
    if found != expected:
        raise MessageError(f"{name}: type field is {found:#010x}, expected {expected} with zero reserved bytes")


class Initiation(_Message):
    """First handshake message, initiator to responder (§5.4.2)."""

    _FIELDS = ("sender_index", "ephemeral", "encrypted_static", "encrypted_timestamp", "mac1", "mac2")  # in wire order
    __slots__ = _FIELDS
    SIZE: ClassVar[int] = INITIATION_SIZE
    _SIZES: ClassVar[dict[str, int]] = {
        "ephemeral": KEY_SIZE,
        "encrypted_static": KEY_SIZE + TAG_SIZE,
        "encrypted_timestamp": TIMESTAMP_SIZE + TAG_SIZE,
        "mac1": MAC_SIZE,
        "mac2": MAC_SIZE,
    }
    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    def __init__(
        self,
        sender_index: int,
        ephemeral: bytes,
        encrypted_static: bytes,
        encrypted_timestamp: bytes,
        mac1: bytes,
        mac2: bytes,
    ) -> None:
        self._set(sender_index, ephemeral, encrypted_static, encrypted_timestamp, mac1, mac2)

    def pack(self) -> bytes:
        return INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender_index,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_length(data, INITIATION_SIZE, "initiation")
        kind, *values = INITIATION.unpack(data)
        _check_type(kind, MESSAGE_INITIATION, "initiation")
        return cls(*values)


class Response(_Message):
    """Second handshake message, responder to initiator (§5.4.3)."""

    _FIELDS = ("sender_index", "receiver_index", "ephemeral", "encrypted_nothing", "mac1", "mac2")  # in wire order
    __slots__ = _FIELDS
    SIZE: ClassVar[int] = RESPONSE_SIZE
    _SIZES: ClassVar[dict[str, int]] = {
        "ephemeral": KEY_SIZE,
        "encrypted_nothing": TAG_SIZE,
        "mac1": MAC_SIZE,
        "mac2": MAC_SIZE,
    }
    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    def __init__(
        self,
        sender_index: int,
        receiver_index: int,
        ephemeral: bytes,
        encrypted_nothing: bytes,
        mac1: bytes,
        mac2: bytes,
    ) -> None:
        self._set(sender_index, receiver_index, ephemeral, encrypted_nothing, mac1, mac2)

    def pack(self) -> bytes:
        return RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender_index,
            self.receiver_index,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_length(data, RESPONSE_SIZE, "response")
        kind, *values = RESPONSE.unpack(data)
        _check_type(kind, MESSAGE_RESPONSE, "response")
        return cls(*values)


class CookieReply(_Message):
    """Cookie reply sent instead of a response when the responder is under load (§5.4.7)."""

    _FIELDS = ("receiver_index", "nonce", "encrypted_cookie")  # in wire order
    __slots__ = _FIELDS
    SIZE: ClassVar[int] = COOKIE_REPLY_SIZE
    _SIZES: ClassVar[dict[str, int]] = {"nonce": COOKIE_NONCE_SIZE, "encrypted_cookie": MAC_SIZE + TAG_SIZE}
    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def __init__(self, receiver_index: int, nonce: bytes, encrypted_cookie: bytes) -> None:
        self._set(receiver_index, nonce, encrypted_cookie)

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, self.receiver_index, self.nonce, self.encrypted_cookie)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_length(data, COOKIE_REPLY_SIZE, "cookie reply")
        kind, receiver_index, nonce, encrypted_cookie = COOKIE_REPLY.unpack(data)
        _check_type(kind, MESSAGE_COOKIE_REPLY, "cookie reply")
        return cls(receiver_index, nonce, encrypted_cookie)


class Transport(_Message):
    """Transport data message (§5.4.6): header, then the AEAD of the zero-padded packet (at least the tag)."""

    _FIELDS = ("receiver_index", "counter", "encrypted_packet")  # in wire order
    __slots__ = _FIELDS
    HEADER_SIZE: ClassVar[int] = TRANSPORT_HEADER_SIZE
    MIN_SIZE: ClassVar[int] = TRANSPORT_MIN_SIZE
    receiver_index: int
    counter: int
    encrypted_packet: bytes

    def __init__(self, receiver_index: int, counter: int, encrypted_packet: bytes) -> None:
        self._set(receiver_index, counter, encrypted_packet)
        if len(encrypted_packet) < TAG_SIZE:
            raise MessageError(f"Transport.encrypted_packet must be at least {TAG_SIZE} bytes")

    def pack(self) -> bytes:
        return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, self.receiver_index, self.counter) + self.encrypted_packet

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        if len(data) < TRANSPORT_MIN_SIZE:
            raise MessageError(f"transport message must be at least {TRANSPORT_MIN_SIZE} bytes, got {len(data)}")
        kind, receiver_index, counter = TRANSPORT_HEADER.unpack_from(data)
        _check_type(kind, MESSAGE_TRANSPORT, "transport")
        return cls(receiver_index, counter, bytes(data[TRANSPORT_HEADER_SIZE:]))


Message = Initiation | Response | CookieReply | Transport


def message_type(data: bytes) -> int:
    """The type field (with reserved bytes) of a datagram, for cheap dispatch before full parsing."""
    if len(data) < _TYPE.size:
        raise MessageError(f"datagram of {len(data)} bytes is too short for a WireGuard message")
    kind: int = _TYPE.unpack_from(data)[0]
    return kind


def parse_message(data: bytes) -> Message:
    """Parse any WireGuard datagram into its message object, or raise `MessageError`."""
    kind = message_type(data)
    if kind == MESSAGE_INITIATION:
        return Initiation.unpack(data)
    if kind == MESSAGE_RESPONSE:
        return Response.unpack(data)
    if kind == MESSAGE_COOKIE_REPLY:
        return CookieReply.unpack(data)
    if kind == MESSAGE_TRANSPORT:
        return Transport.unpack(data)
    raise MessageError(f"unknown message type field {kind:#010x}")
