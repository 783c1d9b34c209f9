"""IPv4 (RFC 791) and IPv6 (RFC 8200) headers: build and parse with `struct`, addresses as packed bytes.

Addresses travel through the codec as 4- or 16-byte `bytes`: comparing and summing them is cheap, while an
`ipaddress` object costs a microsecond or more per construction on a path whose budget is a few microseconds.
`packed()` accepts `ipaddress` objects and strings at the API edge for convenience.

Inner packets arrive from WireGuard padded to a multiple of 16 bytes (whitepaper section 5.4.6), so `parse_ip`
takes the packet length from the IP header and ignores trailing bytes, but rejects a packet shorter than its
header says (truncation).
"""

import itertools
import socket
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Final, NamedTuple

from probe.packets.checksum import finish, verifies, word_sum
from probe.packets.errors import ChecksumError, PacketError

# IP protocol / IPv6 next-header numbers (IANA "Assigned Internet Protocol Numbers").
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58

IPV4_HEADER_LEN: Final = 20
IPV6_HEADER_LEN: Final = 40

# RFC 791 section 3.1: version/IHL, TOS, total length, identification, flags/fragment offset, TTL, protocol,
# header checksum, source, destination. No options are ever built.
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
# RFC 8200 section 3: version/traffic class/flow label, payload length, next header, hop limit, source,
# destination.
_IPV6: Final = struct.Struct("!IHBB16s16s")
_IPV4_DF: Final = 0x4000
_IPV4_MF_AND_OFFSET: Final = 0x3FFF
# RFC 8200 section 4: extension headers that carry a length in 8-octet units after the first 8 octets and
# may sit between the fixed header and the upper layer: hop-by-hop options, routing, destination options.
_IPV6_SKIPPABLE: Final = frozenset((0, 43, 60))

Address = bytes | str | IPv4Address | IPv6Address

# RFC 6864 section 4: the identification only has to be unique per (src, dst, protocol) among fragments in
# flight; a process-wide counter is what most stacks do and costs a few tens of nanoseconds.
_next_ip_id = itertools.count(1).__next__


def next_ip_id() -> int:
    """The next IPv4 identification of this process."""
    return _next_ip_id() & 0xFFFF


class IPPacket(NamedTuple):
    """A parsed IPv4 or IPv6 packet, payload trimmed to the length the header gives."""

    version: int
    src: bytes
    dst: bytes
    proto: int
    """IPv4 protocol, or the IPv6 next header after skipping hop-by-hop, routing and destination options."""
    ttl: int
    """TTL (IPv4) or hop limit (IPv6) as received."""
    payload: bytes
    total_length: int
    """Bytes of the packet itself, header included; anything after it in the buffer was padding."""
    ident: int
    """IPv4 identification; 0 for IPv6 (which carries one only in a fragment header)."""
    fragmented: bool
    """True when this is one fragment of a larger datagram (IPv4 MF or offset, IPv6 fragment header): its
    payload is not a whole transport segment and cannot be verified on its own."""


def packed(address: Address) -> bytes:
    """The 4- or 16-byte network-order form of an address given as bytes, text or an `ipaddress` object."""
    if isinstance(address, bytes):
        if len(address) in (4, 16):
            return address
        raise PacketError(f"an address is 4 or 16 bytes, got {len(address)}")
    if isinstance(address, str):
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                return socket.inet_pton(family, address)
            except OSError:
                continue
        raise PacketError(f"not an IP address: {address!r}")
    return address.packed


def address_pair(src: Address, dst: Address) -> tuple[bytes, bytes]:
    """Both endpoints packed, refusing a mix of families (there is no such packet)."""
    s, d = packed(src), packed(dst)
    if len(s) != len(d):
        raise PacketError("source and destination are of different address families")
    return s, d


def build_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    df: bool = False,
    ident: int | None = None,
) -> bytes:
    """An IPv4 packet with a correct header checksum (the relay's kernel silently drops a bad one)."""
    if ident is None:
        ident = next_ip_id()
    total = IPV4_HEADER_LEN + len(payload)
    flags = _IPV4_DF if df else 0
    # The header checksum as a sum of the header's words, fields added as integers (see checksum.py).
    csum = finish(
        0x4500 + total + ident + flags + (ttl << 8) + proto + int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    )
    try:
        return _IPV4.pack(0x45, 0, total, ident, flags, ttl, proto, csum, src, dst) + payload
    except struct.error as exc:
        raise PacketError(f"IPv4 header field out of range: {exc}") from None


def build_ipv6(
    src: bytes, dst: bytes, next_header: int, payload: bytes, *, hop_limit: int = 64, flow_label: int = 0
) -> bytes:
    """An IPv6 packet with no extension headers. IPv6 has no header checksum (RFC 8200 section 8.1)."""
    if not 0 <= flow_label <= 0xFFFFF:
        raise PacketError(f"flow label is 20 bits, got {flow_label}")
    try:
        return _IPV6.pack(0x60000000 | flow_label, len(payload), next_header, hop_limit, src, dst) + payload
    except struct.error as exc:
        raise PacketError(f"IPv6 header field out of range: {exc}") from None


def build_ip(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    df: bool = False,
    ident: int | None = None,
) -> bytes:
    """IPv4 or IPv6 by the length of the packed addresses; `ttl` is the hop limit for IPv6, `df` and `ident`
    apply to IPv4 only (IPv6 routers never fragment, RFC 8200 section 5)."""
    if len(src) == 4:
        return build_ipv4(src, dst, proto, payload, ttl=ttl, df=df, ident=ident)
    return build_ipv6(src, dst, proto, payload, hop_limit=ttl)


def plain_payload_at(packet: bytes, proto: int, addresses: bytes) -> tuple[int, int] | None:
    """(start, end) of the payload of `packet` if it is a whole IP packet of protocol `proto` between `addresses`
    (source + destination, packed) in the plain form: IPv4 without options, not a fragment, header checksum
    verified; IPv6 with no extension header. None for anything else, including other forms `parse_ip` accepts.

    For the fast paths that recognise a predicted answer without parsing it (`EchoTemplate.reply_sequence`,
    `UdpFlow.reply_payload`): it checks what `parse_ip` checks, so a packet it passes parses to the same payload.
    """
    if len(addresses) == 8:
        if len(packet) < IPV4_HEADER_LEN or packet[0] != 0x45 or packet[9] != proto or packet[6] & 0x3F or packet[7]:
            return None  # options, another protocol, or a fragment (MF set or an offset)
        end = packet[2] << 8 | packet[3]
        if not IPV4_HEADER_LEN <= end <= len(packet) or packet[12:20] != addresses:
            return None
        # `verifies` written out: this runs for every answer, and a call costs as much as the sum itself.
        header_sum = int.from_bytes(packet[:IPV4_HEADER_LEN], "big")
        return (IPV4_HEADER_LEN, end) if header_sum and header_sum % 0xFFFF == 0 else None
    if len(packet) < IPV6_HEADER_LEN or packet[0] >> 4 != 6 or packet[6] != proto or packet[8:40] != addresses:
        return None
    end = IPV6_HEADER_LEN + (packet[4] << 8 | packet[5])
    return (IPV6_HEADER_LEN, end) if end <= len(packet) else None


def parse_ip(data: bytes) -> IPPacket:
    """Parse an IPv4 or IPv6 packet by its version nibble; trailing padding is ignored, truncation rejected.

    Raises `ChecksumError` for a bad IPv4 header checksum and `PacketError` for anything else malformed.
    """
    if not data:
        raise PacketError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise PacketError(f"unknown IP version {version}")


def _parse_ipv4(data: bytes) -> IPPacket:
    if len(data) < IPV4_HEADER_LEN:
        raise PacketError(f"IPv4 header truncated: {len(data)} bytes")
    b0, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(data)
    header_len = (b0 & 0x0F) * 4
    if header_len < IPV4_HEADER_LEN:
        raise PacketError(f"IPv4 IHL {header_len // 4} is below the minimum of 5")
    if total < header_len:
        raise PacketError(f"IPv4 total length {total} is shorter than its header ({header_len})")
    if len(data) < total:
        raise PacketError(f"IPv4 packet truncated: header says {total} bytes, got {len(data)}")
    # RFC 791 section 3.1: the checksum covers the header only, options included.
    if not verifies(word_sum(data[:header_len])):
        raise ChecksumError("bad IPv4 header checksum")
    return IPPacket(4, src, dst, proto, ttl, data[header_len:total], total, ident, (frag & _IPV4_MF_AND_OFFSET) != 0)


def _parse_ipv6(data: bytes) -> IPPacket:
    if len(data) < IPV6_HEADER_LEN:
        raise PacketError(f"IPv6 header truncated: {len(data)} bytes")
    _vtf, payload_len, next_header, hop_limit, src, dst = _IPV6.unpack_from(data)
    total = IPV6_HEADER_LEN + payload_len
    if len(data) < total:
        raise PacketError(f"IPv6 packet truncated: header says {total} bytes, got {len(data)}")
    offset = IPV6_HEADER_LEN
    while next_header in _IPV6_SKIPPABLE:
        if total < offset + 8:
            raise PacketError("IPv6 extension header truncated")
        next_header, ext_len = data[offset], data[offset + 1]
        offset += 8 + ext_len * 8
    if offset > total:
        raise PacketError("IPv6 extension header runs past the payload")
    # Fragment header (44): left as the next header, the payload is one fragment.
    return IPPacket(6, src, dst, next_header, hop_limit, data[offset:total], total, 0, next_header == 44)
