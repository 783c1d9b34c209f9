"""ICMP (RFC 792) and ICMPv6 (RFC 4443): echo request/reply, and the errors a relay or router sends back.

An error quotes the start of the packet that caused it (RFC 792: the IP header and at least 64 bits of the
datagram; RFC 4443 section 2.4(c): as much as fits in the minimum MTU). `Quoted` keeps exactly what a verifier
needs to tell which probe the error is about: addresses, protocol, ports or echo identifier/sequence. A
relay's NAT translates the quote back (Linux conntrack rewrites the embedded header), so the quote names our
inner address.
"""

import struct
from enum import StrEnum
from typing import Final, NamedTuple

from probe.packets.checksum import finish, pseudo_header_sum, verifies, word_sum
from probe.packets.errors import ChecksumError, PacketError
from probe.packets.ip import (
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Address,
    IPPacket,
    address_pair,
    build_ip,
    next_ip_id,
    plain_payload_at,
)

ECHO_REQUEST_V4: Final = 8
ECHO_REPLY_V4: Final = 0
ECHO_REQUEST_V6: Final = 128
ECHO_REPLY_V6: Final = 129
ECHO_REQUESTS: Final = frozenset((ECHO_REQUEST_V4, ECHO_REQUEST_V6))
ECHO_REPLIES: Final = frozenset((ECHO_REPLY_V4, ECHO_REPLY_V6))

# Type, code, checksum, then the 4-byte "rest of header": identifier and sequence for echo (RFC 792 page 14,
# RFC 4443 section 4), unused/MTU/pointer for errors.
_HEADER: Final = struct.Struct("!BBHHH")
_ERROR_HEADER: Final = struct.Struct("!BBHI")
_ICMP_HEADER_LEN: Final = 8
# RFC 1812 section 4.3.2.3: an ICMPv4 error is at most 576 bytes; RFC 4443 section 2.4(c): at most 1280.
_QUOTE_LIMIT: Final = {
    4: 576 - IPV4_HEADER_LEN - _ICMP_HEADER_LEN,
    6: 1280 - IPV6_HEADER_LEN - _ICMP_HEADER_LEN,
}
_QUOTED_ECHO_REQUEST: Final = frozenset(((4, PROTO_ICMP, ECHO_REQUEST_V4), (6, PROTO_ICMPV6, ECHO_REQUEST_V6)))
# RFC 792 destination unreachable code 4, "fragmentation needed and DF set"; MTU field: RFC 1191 section 4.
_FRAGMENTATION_NEEDED: Final = 4


class IcmpErrorKind(StrEnum):
    """ICMP error messages that quote the offending packet, named the same for both families."""

    destination_unreachable = "destination_unreachable"  # v4 type 3 (not code 4), v6 type 1
    packet_too_big = "packet_too_big"  # v4 type 3 code 4 "fragmentation needed and DF set", v6 type 2
    time_exceeded = "time_exceeded"  # v4 type 11, v6 type 3
    parameter_problem = "parameter_problem"  # v4 type 12, v6 type 4


_ERROR_TYPES: Final = {
    4: {
        3: IcmpErrorKind.destination_unreachable,
        11: IcmpErrorKind.time_exceeded,
        12: IcmpErrorKind.parameter_problem,
    },
    6: {
        1: IcmpErrorKind.destination_unreachable,
        2: IcmpErrorKind.packet_too_big,
        3: IcmpErrorKind.time_exceeded,
        4: IcmpErrorKind.parameter_problem,
    },
}
# The ICMP types that are errors quoting the offending packet, per IP version.
ERROR_TYPES: Final = {version: frozenset(types) for version, types in _ERROR_TYPES.items()}
_ERROR_TYPE_OF: Final = {
    version: {kind: icmp_type for icmp_type, kind in types.items()} for version, types in _ERROR_TYPES.items()
}
_ERROR_TYPE_OF[4][IcmpErrorKind.packet_too_big] = 3


class Echo(NamedTuple):
    """An echo request or reply (ICMP types 8/0, ICMPv6 types 128/129)."""

    type: int
    code: int
    identifier: int
    sequence: int
    payload: bytes

    @property
    def is_reply(self) -> bool:
        return self.type in ECHO_REPLIES


class Quoted(NamedTuple):
    """The part of the offending packet an ICMP error quotes, as far as a verifier needs it."""

    version: int
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    sport: int | None
    """UDP or TCP source port; None for other protocols."""
    dport: int | None
    identifier: int | None
    """Echo identifier when the quoted packet is an ICMP/ICMPv6 echo request; None otherwise."""
    sequence: int | None


class IcmpError(NamedTuple):
    """An ICMP error message and the packet it complains about."""

    kind: IcmpErrorKind
    type: int
    code: int
    mtu: int | None
    """Next-hop MTU of a packet-too-big error (RFC 1191 section 4, RFC 4443 section 3.2); None otherwise."""
    quoted: Quoted


class IcmpOther(NamedTuple):
    """Any other ICMP message (redirect, router advertisement...): well formed, never a probe's answer."""

    type: int
    code: int
    body: bytes


def build_icmp_echo(
    src: Address,
    dst: Address,
    identifier: int,
    sequence: int,
    payload: bytes = b"",
    *,
    ttl: int = 64,
    df: bool = False,
    reply: bool = False,
) -> bytes:
    """A whole IPv4+ICMP or IPv6+ICMPv6 echo request (or reply, for reflectors and tests), by family."""
    s, d = address_pair(src, dst)
    if len(s) == 4:
        icmp_type, proto, total = (ECHO_REPLY_V4 if reply else ECHO_REQUEST_V4), PROTO_ICMP, 0
    else:
        icmp_type, proto = (ECHO_REPLY_V6 if reply else ECHO_REQUEST_V6), PROTO_ICMPV6
        # RFC 4443 section 2.3: the ICMPv6 checksum covers the IPv6 pseudo-header, unlike ICMPv4's.
        total = pseudo_header_sum(s, d, PROTO_ICMPV6, _ICMP_HEADER_LEN + len(payload))
    total += (icmp_type << 8) + identifier + sequence + word_sum(payload)
    try:
        icmp = _HEADER.pack(icmp_type, 0, finish(total), identifier, sequence) + payload
    except struct.error as exc:
        raise PacketError(f"echo field out of range: {exc}") from None
    return build_ip(s, d, proto, icmp, ttl=ttl, df=df)


def build_icmp_error(
    src: Address,
    dst: Address,
    kind: IcmpErrorKind,
    original: bytes,
    *,
    code: int = 0,
    mtu: int = 0,
    ttl: int = 64,
) -> bytes:
    """An ICMP error from `src` (the reporting router) to `dst` quoting `original`, as a relay would send it.

    For IPv4 packet_too_big becomes destination unreachable code 4 with the MTU in the low 16 bits.
    """
    s, d = address_pair(src, dst)
    version = 4 if len(s) == 4 else 6
    icmp_type = _ERROR_TYPE_OF[version][kind]
    if version == 4 and kind is IcmpErrorKind.packet_too_big:
        code = _FRAGMENTATION_NEEDED
    rest = mtu if kind is IcmpErrorKind.packet_too_big else 0
    quote = original[: _QUOTE_LIMIT[version]]
    proto = PROTO_ICMP if version == 4 else PROTO_ICMPV6
    total = (icmp_type << 8) + code + (rest >> 16) + (rest & 0xFFFF) + word_sum(quote)
    if version == 6:
        total += pseudo_header_sum(s, d, PROTO_ICMPV6, _ICMP_HEADER_LEN + len(quote))
    try:
        icmp = _ERROR_HEADER.pack(icmp_type, code, finish(total), rest) + quote
    except struct.error as exc:
        raise PacketError(f"ICMP error field out of range: {exc}") from None
    return build_ip(s, d, proto, icmp, ttl=ttl)


def parse_icmp(packet: IPPacket) -> Echo | IcmpError | IcmpOther:
    """Parse the ICMP (IPv4) or ICMPv6 (IPv6) message carried by `packet`, checksum verified."""
    expected = PROTO_ICMP if packet.version == 4 else PROTO_ICMPV6
    if packet.proto != expected:
        raise PacketError(f"IPv{packet.version} protocol {packet.proto} is not ICMP")
    if packet.fragmented:
        raise PacketError("ICMP message is fragmented")
    body = packet.payload
    if len(body) < _ICMP_HEADER_LEN:
        raise PacketError(f"ICMP message truncated: {len(body)} bytes")
    total = word_sum(body)
    if packet.version == 6:
        total += pseudo_header_sum(packet.src, packet.dst, PROTO_ICMPV6, len(body))
    if not verifies(total):
        raise ChecksumError("bad ICMPv6 checksum" if packet.version == 6 else "bad ICMP checksum")
    icmp_type, code, _csum, identifier, sequence = _HEADER.unpack_from(body)
    # Type numbers 0/8 and 128/129 belong to one family each; an ICMPv4 type 128 is "other".
    if (icmp_type in ECHO_REPLIES or icmp_type in ECHO_REQUESTS) and (icmp_type < 128) == (packet.version == 4):
        return Echo(icmp_type, code, identifier, sequence, body[_ICMP_HEADER_LEN:])
    kind = _ERROR_TYPES[packet.version].get(icmp_type)
    if kind is None:
        return IcmpOther(icmp_type, code, body[4:])
    mtu: int | None = None
    if packet.version == 6 and kind is IcmpErrorKind.packet_too_big:
        mtu = (identifier << 16) | sequence
    elif packet.version == 4 and code == _FRAGMENTATION_NEEDED and kind is IcmpErrorKind.destination_unreachable:
        kind, mtu = IcmpErrorKind.packet_too_big, sequence
    return IcmpError(kind, icmp_type, code, mtu, parse_quoted(body[_ICMP_HEADER_LEN:]))


def parse_quoted(data: bytes) -> Quoted:
    """Parse the packet quoted in an ICMP error: an IP header and at least 8 bytes of what followed.

    The quote is a prefix, so lengths in it are not checked against the data and its IPv4 header checksum is
    not verified (the reporting router may have decremented the TTL before quoting; the ICMP checksum covers
    it all).
    """
    if not data:
        raise PacketError("ICMP error quotes nothing")
    version = data[0] >> 4
    if version == 4:
        if len(data) < IPV4_HEADER_LEN:
            raise PacketError("quoted IPv4 header truncated")
        offset = (data[0] & 0x0F) * 4
        if offset < IPV4_HEADER_LEN:
            raise PacketError("quoted IPv4 IHL below 5")
        ttl, proto = data[8], data[9]
        src, dst = data[12:16], data[16:20]
    elif version == 6:
        if len(data) < IPV6_HEADER_LEN:
            raise PacketError("quoted IPv6 header truncated")
        proto, ttl = data[6], data[7]
        src, dst = data[8:24], data[24:40]
        offset = IPV6_HEADER_LEN
    else:
        raise PacketError(f"quoted packet has unknown IP version {version}")
    head = data[offset : offset + 8]
    if len(head) < 8:
        raise PacketError("ICMP error quotes fewer than 8 bytes after the IP header (RFC 792)")
    a, b, c, d = struct.unpack("!HHHH", head)
    sport = dport = identifier = sequence = None
    if proto in (PROTO_UDP, PROTO_TCP):
        sport, dport = a, b
    elif (version, proto, head[0]) in _QUOTED_ECHO_REQUEST:
        identifier, sequence = c, d
    return Quoted(version, src, dst, proto, ttl, sport, dport, identifier, sequence)


class EchoTemplate:
    """The echo requests of one probe: only the sequence number (and the IPv4 identification) changes from one to
    the next, so everything else, checksum sums included, is computed once per probe rather than per packet.

    The payload is `head` + the sequence (2 bytes) + `pad` zero bytes; `build(seq)` equals
    `build_icmp_echo(src, dst, identifier, seq, payload(seq), df=df)` byte for byte (a test holds it).
    """

    __slots__ = (
        "_head",
        "_icmp_sum",
        "_ip_sum",
        "_pad",
        "_prefix",
        "_reply_addresses",
        "_reply_total",
        "dst",
        "identifier",
        "src",
        "version",
    )

    def __init__(self, src: Address, dst: Address, identifier: int, head: bytes, *, pad: int = 0, df: bool = False):
        s, d = address_pair(src, dst)
        if len(head) % 2:
            raise PacketError("echo template head must be of even length (the sequence sits at an even offset)")
        self.src, self.dst, self.identifier = s, d, identifier
        self.version = 4 if len(s) == 4 else 6
        self._head, self._pad = head, bytes(pad)
        length = _ICMP_HEADER_LEN + len(head) + 2 + pad
        # What a reply's IP header must say for `reply_sequence`: from the target to us, this long.
        self._reply_addresses = d + s
        self._reply_total = (IPV4_HEADER_LEN if self.version == 4 else IPV6_HEADER_LEN) + length
        icmp_type = ECHO_REQUEST_V4 if self.version == 4 else ECHO_REQUEST_V6
        # The sequence is summed twice per packet (header field and payload word), in `build`.
        self._icmp_sum = (icmp_type << 8) + identifier + word_sum(head)
        if self.version == 6:
            self._icmp_sum += pseudo_header_sum(s, d, PROTO_ICMPV6, length)
            self._prefix = struct.pack("!IHBB", 0x60000000, length, PROTO_ICMPV6, 64) + s + d
            self._ip_sum = 0
        else:
            total = IPV4_HEADER_LEN + length
            flags = 0x4000 if df else 0
            self._ip_sum = 0x4500 + total + flags + (64 << 8) + PROTO_ICMP + int.from_bytes(s + d, "big")
            self._prefix = struct.pack("!BBHHHBB", 0x45, 0, total, 0, flags, 64, PROTO_ICMP)

    def payload(self, seq: int) -> bytes:
        return self._head + seq.to_bytes(2, "big") + self._pad

    def reply(self, seq: int) -> bytes:
        """The ICMP message of the correct echo reply to request `seq`, byte for byte: an answer equal to it
        needs no parsing. The reply differs from the request only in its type (0/129 for 8/128), and the
        checksum by as much: the IPv6 pseudo-header sums the same with source and destination swapped."""
        reply_type = ECHO_REPLY_V4 if self.version == 4 else ECHO_REPLY_V6
        request_type = ECHO_REQUEST_V4 if self.version == 4 else ECHO_REQUEST_V6
        checksum = finish(self._icmp_sum + 2 * seq - ((request_type - reply_type) << 8))
        header = _HEADER.pack(reply_type, 0, checksum, self.identifier, seq)
        return header + self._head + seq.to_bytes(2, "big") + self._pad

    def reply_sequence(self, packet: bytes) -> int | None:
        """The sequence `packet` answers when it is the correct echo reply to this template's request of that
        sequence, checked in one pass over the raw inner packet; None for anything else.

        None is not a verdict: the caller gives such a packet to the full judgement (`judge_echo_reply`), which
        says what is wrong with it, or that it is a good reply in a form not predicted here (IPv4 options, IPv6
        extension headers, the other one's-complement zero as ICMP checksum). Whenever this returns a sequence,
        the full judgement of the same packet says "ok" for that sequence if it was sent (a test holds it): the IP
        header is checked as `parse_ip` checks it (version, IHL, lengths, fragment bits, IPv4 checksum), and the
        ICMP message must equal the predicted `reply(seq)` byte for byte, which covers type, code, checksum,
        identifier, sequence and payload. TOS/traffic class, IPv4 identification and TTL/hop limit are the
        replier's to choose and are not judged by the full verifier either.
        """
        found = plain_payload_at(packet, PROTO_ICMP if self.version == 4 else PROTO_ICMPV6, self._reply_addresses)
        if found is None or found[1] != self._reply_total:
            return None
        start = found[0]
        seq = int.from_bytes(packet[start + 6 : start + 8], "big")
        if packet[start : self._reply_total] != self.reply(seq):
            return None
        return seq

    def build(self, seq: int) -> bytes:
        icmp = _HEADER.pack(
            ECHO_REQUEST_V4 if self.version == 4 else ECHO_REQUEST_V6,
            0,
            finish(self._icmp_sum + 2 * seq),
            self.identifier,
            seq,
        )
        tail = self._head + seq.to_bytes(2, "big") + self._pad
        if self.version == 6:
            return self._prefix + icmp + tail
        ident = next_ip_id()
        header = self._prefix[:4] + ident.to_bytes(2, "big") + self._prefix[6:]
        checksum = finish(self._ip_sum + ident).to_bytes(2, "big")
        return header + checksum + self.src + self.dst + icmp + tail


def echo_request_message(version: int, identifier: int, sequence: int, payload: bytes) -> bytes:
    """The ICMP part alone of an echo request, for an ICMP socket (the kernel writes the IP header). ICMPv6 sums a
    pseudo-header with the source address the kernel picks, so its checksum is left for the kernel to fill in, as
    it does on every ICMPv6 socket (RFC 3542 section 3.1)."""
    if version == 4:
        checksum = finish((ECHO_REQUEST_V4 << 8) + identifier + sequence + word_sum(payload))
        return _HEADER.pack(ECHO_REQUEST_V4, 0, checksum, identifier, sequence) + payload
    return _HEADER.pack(ECHO_REQUEST_V6, 0, 0, identifier, sequence) + payload
