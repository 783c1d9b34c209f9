"""The fast packet codec: IPv4/IPv6, ICMP/ICMPv6 and UDP with `struct`, plus pure verifiers.

This is the hot path of every probe (a few microseconds per packet), so it imports nothing heavy: scapy is
used only by `probe.packets.evidence.dissect`, lazily. Addresses are packed 4/16-byte `bytes` throughout;
builders also accept `ipaddress` objects and strings.
"""

from probe.packets.checksum import internet_checksum
from probe.packets.errors import ChecksumError, EvidenceError, IdsExhaustedError, PacketError
from probe.packets.evidence import dissect, pcap_bytes, read_pcap, write_pcap
from probe.packets.icmp import (
    Echo,
    EchoTemplate,
    IcmpError,
    IcmpErrorKind,
    IcmpOther,
    Quoted,
    build_icmp_echo,
    build_icmp_error,
    parse_icmp,
    parse_quoted,
)
from probe.packets.ids import IdAllocator, icmp_identifiers, source_ports
from probe.packets.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Address,
    IPPacket,
    build_ip,
    packed,
    parse_ip,
)
from probe.packets.udp import Udp, UdpFlow, build_udp, parse_udp
from probe.packets.verify import (
    Mismatch,
    Verdict,
    judge_echo_reply,
    judge_udp_reply,
    verify_echo_reply,
    verify_udp_reply,
)

__all__ = [
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "Address",
    "ChecksumError",
    "Echo",
    "EchoTemplate",
    "EvidenceError",
    "IPPacket",
    "IcmpError",
    "IcmpErrorKind",
    "IcmpOther",
    "IdAllocator",
    "IdsExhaustedError",
    "Mismatch",
    "PacketError",
    "Quoted",
    "Udp",
    "UdpFlow",
    "Verdict",
    "build_icmp_echo",
    "build_icmp_error",
    "build_ip",
    "build_udp",
    "dissect",
    "icmp_identifiers",
    "internet_checksum",
    "judge_echo_reply",
    "judge_udp_reply",
    "packed",
    "parse_icmp",
    "parse_ip",
    "parse_quoted",
    "parse_udp",
    "pcap_bytes",
    "read_pcap",
    "source_ports",
    "verify_echo_reply",
    "verify_udp_reply",
    "write_pcap",
]
