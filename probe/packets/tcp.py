"""TCP (RFC 793 / RFC 9293) SYN build and SYN-ACK/RST parse: enough to prove a flow crosses the relay's NAT.

A probe never completes a handshake: the answer to a SYN (a SYN-ACK from an open port or a RST from a closed
one) already shows the packet went out through the NAT and the answer came back.
"""

import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import Final

from probe.packets.checksum import finish, pseudo_header_sum, verifies, word_sum
from probe.packets.errors import ChecksumError, PacketError
from probe.packets.ip import PROTO_TCP, Address, IPPacket, address_pair, build_ip

TCP_HEADER_LEN: Final = 20
# RFC 793 section 3.1: ports, sequence, acknowledgment, data offset/reserved, flags, window, checksum, urgent.
_TCP: Final = struct.Struct("!HHIIBBHHH")
_MSS_OPTION: Final = struct.Struct("!BBH")  # RFC 793 section 3.1 "Maximum Segment Size": kind 2, length 4


class TcpFlags(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


@dataclass(frozen=True, slots=True)
class TcpSegment:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    """A plain int for speed; test it against `TcpFlags` members."""
    window: int
    options: bytes
    payload: bytes

    @property
    def is_syn_ack(self) -> bool:
        return self.flags & (TcpFlags.SYN | TcpFlags.ACK | TcpFlags.RST) == TcpFlags.SYN | TcpFlags.ACK

    @property
    def is_rst(self) -> bool:
        return bool(self.flags & TcpFlags.RST)


def build_tcp_syn(
    src: Address,
    dst: Address,
    sport: int,
    dport: int,
    seq: int,
    *,
    window: int = 64240,
    mss: int | None = 1360,
    ttl: int = 64,
    df: bool = True,
) -> bytes:
    """A whole IPv4+TCP or IPv6+TCP SYN. DF is set by default as stacks do for TCP (path MTU discovery).

    The default MSS suits WireGuard's 1420-byte inner MTU for IPv6 (1420 - 40 - 20), and so also IPv4.
    """
    s, d = address_pair(src, dst)
    options = b"" if mss is None else _MSS_OPTION.pack(2, 4, mss)
    length = TCP_HEADER_LEN + len(options)
    offset_byte = (length // 4) << 4
    total = pseudo_header_sum(s, d, PROTO_TCP, length) + word_sum(options)
    total += sport + dport + seq + (offset_byte << 8) + TcpFlags.SYN + window
    try:
        tcp = _TCP.pack(sport, dport, seq, 0, offset_byte, TcpFlags.SYN, window, finish(total), 0) + options
    except struct.error as exc:
        raise PacketError(f"TCP field out of range: {exc}") from None
    return build_ip(s, d, PROTO_TCP, tcp, ttl=ttl, df=df)


def parse_tcp(packet: IPPacket) -> TcpSegment:
    """Parse the TCP segment carried by `packet`, checksum verified (RFC 793 section 3.1)."""
    if packet.proto != PROTO_TCP:
        raise PacketError(f"IPv{packet.version} protocol {packet.proto} is not TCP")
    if packet.fragmented:
        raise PacketError("TCP segment is fragmented")
    body = packet.payload
    if len(body) < TCP_HEADER_LEN:
        raise PacketError(f"TCP header truncated: {len(body)} bytes")
    sport, dport, seq, ack, offset_byte, flags, window, _csum, _urgent = _TCP.unpack_from(body)
    header_len = (offset_byte >> 4) * 4
    if header_len < TCP_HEADER_LEN or header_len > len(body):
        raise PacketError(f"TCP data offset {header_len} does not fit the {len(body)}-byte segment")
    if not verifies(pseudo_header_sum(packet.src, packet.dst, PROTO_TCP, len(body)) + word_sum(body)):
        raise ChecksumError("bad TCP checksum")
    return TcpSegment(sport, dport, seq, ack, flags, window, body[TCP_HEADER_LEN:header_len], body[header_len:])
