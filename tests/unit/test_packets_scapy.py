"""Cross-check the fast codec against scapy, in both directions, on hypothesis-generated packets.

scapy is the reference here (DESIGN.md: it serves tests and evidence, never the hot path): every packet the codec
builds must dissect in scapy to the same fields with checksums scapy itself would compute, and every packet scapy
builds must parse in the codec to the same fields.
"""

import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPerror6, IPv6
from scapy.packet import Packet, Raw

from probe.packets import (
    Echo,
    IcmpError,
    IcmpErrorKind,
    build_icmp_echo,
    build_icmp_error,
    build_udp,
    parse_icmp,
    parse_ip,
    parse_udp,
)

SETTINGS = settings(max_examples=40, deadline=None)
ipv4 = st.binary(min_size=4, max_size=4)
ipv6 = st.binary(min_size=16, max_size=16)
addresses = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
payloads = st.binary(max_size=300)
ttls = st.integers(1, 255)


def text(address: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)


def dissect(raw: bytes) -> Packet:
    return IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)


def assert_checksums_as_scapy_computes(raw: bytes) -> None:
    """Delete every checksum field, let scapy rebuild the packet, and compare with what the codec wrote."""
    original = dissect(raw)
    stripped = original.copy()
    layer: Any = stripped
    deleted = 0
    while layer:
        for name in ("chksum", "cksum"):
            if name in layer.fields:
                # delfieldval, not `del fields[...]`: it also drops scapy's cache of the dissected bytes.
                layer.delfieldval(name)
                deleted += 1
        layer = layer.payload
    assert deleted >= 1
    assert bytes(stripped) == raw


@SETTINGS
@given(addresses, u16, u16, payloads, ttls, st.booleans())
def test_echo_built_by_codec_dissects_in_scapy(
    pair: tuple[bytes, bytes], identifier: int, sequence: int, payload: bytes, ttl: int, df: bool
) -> None:
    src, dst = pair
    raw = build_icmp_echo(src, dst, identifier, sequence, payload, ttl=ttl, df=df)
    packet = dissect(raw)
    if len(src) == 4:
        assert (packet[IP].src, packet[IP].dst, packet[IP].ttl) == (text(src), text(dst), ttl)
        assert bool(packet[IP].flags.DF) == df
        echo = packet[ICMP]
        assert (echo.type, bytes(echo.payload)) == (8, payload)
    else:
        assert (packet[IPv6].src, packet[IPv6].dst, packet[IPv6].hlim) == (text(src), text(dst), ttl)
        echo = packet[ICMPv6EchoRequest]
        assert echo.data == payload
    assert (echo.id, echo.seq) == (identifier, sequence)
    assert_checksums_as_scapy_computes(raw)


@SETTINGS
@given(addresses, u16, u16, payloads, ttls)
def test_udp_built_by_codec_dissects_in_scapy(
    pair: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, ttl: int
) -> None:
    src, dst = pair
    raw = build_udp(src, dst, sport, dport, payload, ttl=ttl)
    udp = dissect(raw)[UDP]
    assert (udp.sport, udp.dport, udp.len) == (sport, dport, 8 + len(payload))
    assert bytes(udp.payload) == payload
    assert_checksums_as_scapy_computes(raw)


@SETTINGS
@given(addresses, u16, u16, payloads, ttls)
def test_icmp_error_built_by_codec_dissects_in_scapy(
    pair: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, ttl: int
) -> None:
    us, target = pair
    probe = build_udp(us, target, sport, dport, payload)
    raw = build_icmp_error(target, us, IcmpErrorKind.time_exceeded, probe, ttl=ttl)
    packet = dissect(raw)
    quote_ip, quote_udp = (IPerror, UDPerror) if len(us) == 4 else (IPerror6, UDPerror)
    assert (packet[quote_ip].src, packet[quote_ip].dst) == (text(us), text(target))
    assert (packet[quote_udp].sport, packet[quote_udp].dport) == (sport, dport)
    assert_checksums_as_scapy_computes(raw)


@SETTINGS
@given(addresses, u16, u16, payloads, ttls)
def test_echo_reply_built_by_scapy_parses_in_codec(
    pair: tuple[bytes, bytes], identifier: int, sequence: int, payload: bytes, ttl: int
) -> None:
    src, dst = pair
    if len(src) == 4:
        packet: Packet = IP(src=text(src), dst=text(dst), ttl=ttl) / ICMP(type=0, id=identifier, seq=sequence)
        packet = packet / Raw(payload)
    else:
        packet = IPv6(src=text(src), dst=text(dst), hlim=ttl) / ICMPv6EchoReply(
            id=identifier, seq=sequence, data=payload
        )
    ip = parse_ip(bytes(packet))
    assert (ip.src, ip.dst, ip.ttl) == (src, dst, ttl)
    echo = parse_icmp(ip)
    assert isinstance(echo, Echo)
    assert (echo.is_reply, echo.identifier, echo.sequence, echo.payload) == (True, identifier, sequence, payload)


@SETTINGS
@given(addresses, u16, u16, payloads)
def test_udp_built_by_scapy_parses_in_codec(pair: tuple[bytes, bytes], sport: int, dport: int, payload: bytes) -> None:
    src, dst = pair
    network: Packet = IP(src=text(src), dst=text(dst)) if len(src) == 4 else IPv6(src=text(src), dst=text(dst))
    udp = parse_udp(parse_ip(bytes(network / UDP(sport=sport, dport=dport) / Raw(payload))))
    assert (udp.sport, udp.dport, udp.payload) == (sport, dport, payload)


@SETTINGS
@given(addresses, u16, u16, payloads)
def test_icmp_error_built_by_scapy_parses_in_codec(
    pair: tuple[bytes, bytes], sport: int, dport: int, payload: bytes
) -> None:
    us, target = pair
    if len(us) == 4:
        probe: Packet = IP(src=text(us), dst=text(target)) / UDP(sport=sport, dport=dport) / Raw(payload)
        error: Packet = IP(src=text(target), dst=text(us)) / ICMP(type=3, code=3) / bytes(probe)
        kind, code = IcmpErrorKind.destination_unreachable, 3
    else:
        probe = IPv6(src=text(us), dst=text(target)) / UDP(sport=sport, dport=dport) / Raw(payload)
        error = IPv6(src=text(target), dst=text(us)) / ICMPv6TimeExceeded() / bytes(probe)
        kind, code = IcmpErrorKind.time_exceeded, 0
    message = parse_icmp(parse_ip(bytes(error)))
    assert isinstance(message, IcmpError)
    assert (message.kind, message.code) == (kind, code)
    quoted = message.quoted
    assert (quoted.src, quoted.dst, quoted.sport, quoted.dport) == (us, target, sport, dport)
