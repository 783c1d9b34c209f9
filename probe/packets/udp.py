"""UDP (RFC 768) over IPv4 and IPv6: build and parse, checksum over the pseudo-header."""

import struct
from dataclasses import dataclass
from typing import Final

from probe.packets.checksum import finish, pseudo_header_sum, verifies, word_sum
from probe.packets.errors import ChecksumError, PacketError
from probe.packets.ip import PROTO_UDP, Address, IPPacket, address_pair, build_ip

UDP_HEADER_LEN: Final = 8
_UDP: Final = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class Udp:
    sport: int
    dport: int
    checksum: int
    """As received; 0 means the IPv4 sender computed none (RFC 768), which is never valid over IPv6."""
    payload: bytes


def build_udp(
    src: Address,
    dst: Address,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    ttl: int = 64,
    df: bool = False,
) -> bytes:
    """A whole IPv4+UDP or IPv6+UDP packet, family by address, always with a checksum."""
    s, d = address_pair(src, dst)
    length = UDP_HEADER_LEN + len(payload)
    csum = finish(pseudo_header_sum(s, d, PROTO_UDP, length) + sport + dport + length + word_sum(payload))
    # RFC 768: a computed checksum of zero is sent as all ones, since zero means "no checksum".
    try:
        udp = _UDP.pack(sport, dport, length, csum or 0xFFFF) + payload
    except struct.error as exc:
        raise PacketError(f"UDP field out of range: {exc}") from None
    return build_ip(s, d, PROTO_UDP, udp, ttl=ttl, df=df)


def parse_udp(packet: IPPacket) -> Udp:
    """Parse the UDP datagram carried by `packet`, checksum verified.

    A UDP length shorter than the IP payload is honoured (the rest is padding, as Linux trims it); a longer
    one is truncation.
    """
    if packet.proto != PROTO_UDP:
        raise PacketError(f"IPv{packet.version} protocol {packet.proto} is not UDP")
    if packet.fragmented:
        raise PacketError("UDP datagram is fragmented")
    body = packet.payload
    if len(body) < UDP_HEADER_LEN:
        raise PacketError(f"UDP header truncated: {len(body)} bytes")
    sport, dport, length, csum = _UDP.unpack_from(body)
    if length < UDP_HEADER_LEN or length > len(body):
        raise PacketError(f"UDP length {length} does not fit the {len(body)}-byte IP payload")
    datagram = body[:length]
    if csum == 0:
        # RFC 8200 section 8.1: over IPv6 the checksum is mandatory and a zero one is discarded.
        if packet.version == 6:
            raise ChecksumError("UDP over IPv6 without a checksum")
    elif not verifies(pseudo_header_sum(packet.src, packet.dst, PROTO_UDP, length) + word_sum(datagram)):
        raise ChecksumError("bad UDP checksum")
    return Udp(sport, dport, csum, datagram[UDP_HEADER_LEN:])
