"""UDP (RFC 768) over IPv4 and IPv6: build and parse, checksum over the pseudo-header."""

import struct
from typing import Final, NamedTuple

from probe.packets.checksum import finish, pseudo_header_sum, verifies, word_sum
from probe.packets.errors import ChecksumError, PacketError
from probe.packets.ip import PROTO_UDP, Address, IPPacket, address_pair, build_ip, plain_payload_at

UDP_HEADER_LEN: Final = 8
_UDP: Final = struct.Struct("!HHHH")


class Udp(NamedTuple):
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


class UdpFlow:
    """One probe's UDP flow, from `src`:`sport` to `dst`:`dport`: the sums of its addresses and ports are computed
    once, so building a datagram and checking an answer each take one pass over the packet.

    `build(payload)` equals `build_udp(src, dst, sport, dport, payload)` byte for byte (a test holds it).
    """

    __slots__ = ("_pseudo", "_reply_addresses", "dport", "dst", "sport", "src", "version")

    def __init__(self, src: Address, dst: Address, sport: int, dport: int) -> None:
        self.src, self.dst = address_pair(src, dst)
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise PacketError(f"UDP ports are 16 bits, got {sport} and {dport}")
        self.sport, self.dport = sport, dport
        self.version = 4 if len(self.src) == 4 else 6
        # The pseudo-header's addresses and protocol (RFC 768; RFC 8200 section 8.1), the same both ways.
        self._pseudo = pseudo_header_sum(self.src, self.dst, PROTO_UDP, 0)
        self._reply_addresses = self.dst + self.src

    def build(self, payload: bytes) -> bytes:
        length = UDP_HEADER_LEN + len(payload)
        csum = finish(self._pseudo + 2 * length + self.sport + self.dport + word_sum(payload))
        # RFC 768: a computed checksum of zero is sent as all ones, since zero means "no checksum".
        try:
            udp = _UDP.pack(self.sport, self.dport, length, csum or 0xFFFF) + payload
        except struct.error as exc:
            raise PacketError(f"UDP field out of range: {exc}") from None
        return build_ip(self.src, self.dst, PROTO_UDP, udp)

    def reply_payload(self, packet: bytes) -> bytes | None:
        """The payload of `packet` when it is a well-formed UDP answer on this flow (from `dst`:`dport` to
        `src`:`sport`, checksums verified), checked in one pass over the raw inner packet; None for anything else.

        None is not a verdict: the caller gives such a packet to the full judgement (`judge_udp_reply`), which
        says what is wrong with it or accepts a form not taken here (IPv4 options, IPv6 extension headers, a UDP
        length shorter than the IP payload, an IPv4 datagram sent without a checksum). Whenever this returns a
        payload, the full judgement of the same packet says "ok" with that payload (a test holds it).
        """
        found = plain_payload_at(packet, PROTO_UDP, self._reply_addresses)
        if found is None or found[1] - found[0] < UDP_HEADER_LEN:
            return None
        start, end = found
        sport, dport, length, csum = _UDP.unpack_from(packet, start)
        if sport != self.dport or dport != self.sport or length != end - start or not csum:
            return None
        datagram = packet[start:end]
        if not verifies(self._pseudo + length + word_sum(datagram)):
            return None
        return datagram[UDP_HEADER_LEN:]
