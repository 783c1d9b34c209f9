"""Wire layouts of the four WireGuard messages (§5.4.2, §5.4.3, §5.4.7, §5.4.6).

Every message starts with a one-byte type and three reserved zero bytes; like wireguard-go we read those four
bytes as one little-endian u32, so a non-zero reserved byte is simply an unknown type. Indexes and the
transport counter are little-endian. `unpack` rejects any length or type mismatch with `MessageError`; it
never authenticates — that is the handshake's and the session's job.

The transport session packs its header with `TRANSPORT_HEADER` directly instead of building a `Transport`
object, because it runs once per packet.
"""

import struct
from dataclasses import dataclass, fields
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


# Field names per message class, looked up once: dataclasses.fields() per message cost as much as hashing it.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _check_fields(message: object, sizes: dict[str, int]) -> None:
    """Reject wrong field lengths and out-of-range integers now: `struct` would pad or truncate them."""
    cls = type(message)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(message))  # type: ignore[arg-type]
    for field_name in names:
        value = getattr(message, field_name)
        limit = _INTEGER_LIMITS.get(field_name)
        if limit is not None:
            if not isinstance(value, int) or not 0 <= value <= limit:
                raise MessageError(f"{cls.__name__}.{field_name} must be an integer in [0, {limit}]")
        elif not isinstance(value, bytes):
            raise MessageError(f"{cls.__name__}.{field_name} must be bytes")
        elif field_name in sizes and len(value) != sizes[field_name]:
            raise MessageError(f"{cls.__name__}.{field_name} must be {sizes[field_name]} bytes, got {len(value)}")


def _check_length(data: bytes, expected: int, name: str) -> None:
    if len(data) != expected:
        raise MessageError(f"{name} must be {expected} bytes, got {len(data)}")


def _check_type(found: int, expected: int, name: str) -> None:
    if found != expected:
        raise MessageError(f"{name}: type field is {found:#010x}, expected {expected} with zero reserved bytes")


@dataclass(frozen=True, slots=True)
class Initiation:
    """First handshake message, initiator to responder (§5.4.2)."""

    SIZE: ClassVar[int] = INITIATION_SIZE
    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    def __post_init__(self) -> None:
        _check_fields(
            self,
            {
                "ephemeral": KEY_SIZE,
                "encrypted_static": KEY_SIZE + TAG_SIZE,
                "encrypted_timestamp": TIMESTAMP_SIZE + TAG_SIZE,
                "mac1": MAC_SIZE,
                "mac2": MAC_SIZE,
            },
        )

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


@dataclass(frozen=True, slots=True)
class Response:
    """Second handshake message, responder to initiator (§5.4.3)."""

    SIZE: ClassVar[int] = RESPONSE_SIZE
    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    def __post_init__(self) -> None:
        _check_fields(self, {"ephemeral": KEY_SIZE, "encrypted_nothing": TAG_SIZE, "mac1": MAC_SIZE, "mac2": MAC_SIZE})

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


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply sent instead of a response when the responder is under load (§5.4.7)."""

    SIZE: ClassVar[int] = COOKIE_REPLY_SIZE
    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _check_fields(self, {"nonce": COOKIE_NONCE_SIZE, "encrypted_cookie": MAC_SIZE + TAG_SIZE})

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, self.receiver_index, self.nonce, self.encrypted_cookie)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_length(data, COOKIE_REPLY_SIZE, "cookie reply")
        kind, receiver_index, nonce, encrypted_cookie = COOKIE_REPLY.unpack(data)
        _check_type(kind, MESSAGE_COOKIE_REPLY, "cookie reply")
        return cls(receiver_index, nonce, encrypted_cookie)


@dataclass(frozen=True, slots=True)
class Transport:
    """Transport data message (§5.4.6): header, then the AEAD of the zero-padded packet (at least the tag)."""

    HEADER_SIZE: ClassVar[int] = TRANSPORT_HEADER_SIZE
    MIN_SIZE: ClassVar[int] = TRANSPORT_MIN_SIZE
    receiver_index: int
    counter: int
    encrypted_packet: bytes

    def __post_init__(self) -> None:
        _check_fields(self, {})
        if len(self.encrypted_packet) < TAG_SIZE:
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
    """Parse any WireGuard datagram into its message dataclass, or raise `MessageError`."""
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
