"""Round trips and edge cases of the struct codec: what a probe builds, and what it must accept or reject."""

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from probe.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    Address,
    ChecksumError,
    Echo,
    IcmpError,
    IcmpErrorKind,
    IcmpOther,
    PacketError,
    build_icmp_echo,
    build_icmp_error,
    build_ip,
    build_udp,
    internet_checksum,
    packed,
    parse_icmp,
    parse_ip,
    parse_udp,
)

US4, TARGET4, GATEWAY4 = packed("10.64.0.2"), packed("1.1.1.1"), packed("10.64.0.1")
US6, TARGET6, GATEWAY6 = packed("fc00:bbbb:bbbb:bb01::2"), packed("2606:4700:4700::1111"), packed("fc00::1")
PAIRS = [pytest.param(US4, TARGET4, id="v4"), pytest.param(US6, TARGET6, id="v6")]


def with_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_echo_request_round_trip(src: bytes, dst: bytes) -> None:
    packet = build_icmp_echo(src, dst, 0xBEEF, 42, b"wgprobe-payload", ttl=17)
    ip = parse_ip(packet)
    assert (ip.src, ip.dst, ip.ttl, ip.total_length) == (src, dst, 17, len(packet))
    assert ip.proto == (PROTO_ICMP if len(src) == 4 else PROTO_ICMPV6)
    assert parse_icmp(ip) == Echo(8 if len(src) == 4 else 128, 0, 0xBEEF, 42, b"wgprobe-payload")


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_echo_reply_is_a_reply(src: bytes, dst: bytes) -> None:
    echo = parse_icmp(parse_ip(build_icmp_echo(dst, src, 1, 2, b"x", reply=True)))
    assert isinstance(echo, Echo)
    assert echo.is_reply


def test_addresses_accepted_as_text_ipaddress_objects_or_packed_bytes() -> None:
    pairs: list[tuple[Address, Address]] = [
        ("10.64.0.2", "1.1.1.1"),
        (IPv4Address("10.64.0.2"), IPv4Address("1.1.1.1")),
    ]
    for src, dst in pairs:
        ip = parse_ip(build_icmp_echo(src, dst, 1, 1))
        assert (ip.src, ip.dst) == (US4, TARGET4)
    ip = parse_ip(build_udp(IPv6Address("fc00:bbbb:bbbb:bb01::2"), "2606:4700:4700::1111", 1, 2))
    assert (ip.src, ip.dst) == (US6, TARGET6)


@pytest.mark.parametrize(
    ("src", "dst"), [("10.64.0.2", "fc00::1"), ("not-an-address", "1.1.1.1"), (b"\x01\x02\x03", TARGET4)]
)
def test_bad_addresses_are_packet_errors(src: str | bytes, dst: str | bytes) -> None:
    with pytest.raises(PacketError):
        build_icmp_echo(src, dst, 1, 1)


@pytest.mark.parametrize(("identifier", "sequence"), [(65536, 0), (0, -1)])
def test_field_out_of_range_is_a_packet_error(identifier: int, sequence: int) -> None:
    with pytest.raises(PacketError):
        build_icmp_echo(US4, TARGET4, identifier, sequence)


def test_ipv4_options_ttl_df_identification() -> None:
    packet = build_ip(US4, TARGET4, PROTO_UDP, b"", ttl=3, df=True, ident=0x1234)
    assert packet[6] & 0x40, "DF is bit 1 of the flags (RFC 791 section 3.1)"
    ip = parse_ip(packet)
    assert (ip.ttl, ip.ident, ip.fragmented) == (3, 0x1234, False)
    assert internet_checksum(packet[:20]) == 0, "a header with its checksum sums to all ones"
    assert not build_icmp_echo(US4, TARGET4, 1, 1)[6] & 0x40, "DF off by default for echo"


def test_ipv4_identification_changes_between_packets() -> None:
    # RFC 6864: non-atomic datagrams need distinct IDs; two probes in a row must not share one.
    assert parse_ip(build_icmp_echo(US4, TARGET4, 1, 1)).ident != parse_ip(build_icmp_echo(US4, TARGET4, 1, 1)).ident


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_wireguard_padding_is_stripped_by_the_ip_length(src: bytes, dst: bytes) -> None:
    packet = build_icmp_echo(src, dst, 7, 8, b"abc")
    padded = packet + bytes(-len(packet) % 16)
    assert len(padded) % 16 == 0 and len(padded) > len(packet)
    ip = parse_ip(padded)
    assert ip.total_length == len(packet)
    assert parse_icmp(ip) == parse_icmp(parse_ip(packet))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_truncation_at_every_length_is_rejected(src: bytes, dst: bytes) -> None:
    packet = build_icmp_echo(src, dst, 7, 8, b"payload")
    for length in range(len(packet)):
        with pytest.raises(PacketError):
            parse_ip(packet[:length])


def test_bad_ipv4_header_checksum_is_a_checksum_error() -> None:
    packet = build_icmp_echo(US4, TARGET4, 1, 1)
    with pytest.raises(ChecksumError):
        parse_ip(with_byte(packet, 10, packet[10] ^ 0x01))


def test_unknown_version_and_short_ihl_are_malformed() -> None:
    packet = build_icmp_echo(US4, TARGET4, 1, 1)
    for bad in (with_byte(packet, 0, 0x55), with_byte(packet, 0, 0x44), b""):
        with pytest.raises(PacketError):
            parse_ip(bad)


def test_ipv4_fragment_is_flagged() -> None:
    packet = bytearray(build_ip(US4, TARGET4, PROTO_UDP, bytes(16), ident=9))
    packet[6] |= 0x20  # MF
    packet[10:12] = b"\x00\x00"
    packet[10:12] = internet_checksum(bytes(packet[:20])).to_bytes(2, "big")
    ip = parse_ip(bytes(packet))
    assert ip.fragmented
    with pytest.raises(PacketError):
        parse_udp(ip)


def test_ipv6_hop_by_hop_header_is_skipped() -> None:
    inner = build_udp(US6, TARGET6, 50000, 53, b"q")[40:]
    hop_by_hop = bytes([PROTO_UDP, 0, 1, 4, 0, 0, 0, 0])  # next header UDP, length 0, PadN
    packet = build_ip(US6, TARGET6, 0, hop_by_hop + inner)
    ip = parse_ip(packet)
    assert ip.proto == PROTO_UDP
    assert parse_udp(ip).payload == b"q"


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_udp_round_trip_and_corruption(src: bytes, dst: bytes) -> None:
    packet = build_udp(src, dst, 50123, 7, b"odd-length")
    udp = parse_udp(parse_ip(packet))
    assert (udp.sport, udp.dport, udp.payload) == (50123, 7, b"odd-length")
    with pytest.raises(ChecksumError):
        parse_udp(parse_ip(packet[:-1] + bytes([packet[-1] ^ 0x80])))


def test_udp_zero_checksum_accepted_over_ipv4_only() -> None:
    # RFC 768: zero means "not computed" over IPv4; RFC 8200 section 8.1: IPv6 receivers discard it.
    for src, dst, ok in ((US4, TARGET4, True), (US6, TARGET6, False)):
        raw = bytearray(build_udp(src, dst, 1000, 2000, b"data"))
        header = 20 if ok else 40
        raw[header + 6 : header + 8] = b"\x00\x00"
        ip = parse_ip(bytes(raw))
        if ok:
            assert parse_udp(ip).checksum == 0
        else:
            with pytest.raises(ChecksumError):
                parse_udp(ip)


def test_udp_length_longer_than_ip_payload_is_truncation() -> None:
    raw = bytearray(build_udp(US6, TARGET6, 1, 2, b"abcd"))
    struct.pack_into("!H", raw, 44, 13)
    with pytest.raises(PacketError):
        parse_udp(parse_ip(bytes(raw)))


@pytest.mark.parametrize(
    ("reporter", "us", "target", "kind", "code", "mtu"),
    [
        (GATEWAY4, US4, TARGET4, IcmpErrorKind.destination_unreachable, 3, None),
        (GATEWAY4, US4, TARGET4, IcmpErrorKind.time_exceeded, 0, None),
        (GATEWAY4, US4, TARGET4, IcmpErrorKind.packet_too_big, 4, 1280),
        (GATEWAY6, US6, TARGET6, IcmpErrorKind.destination_unreachable, 4, None),
        (GATEWAY6, US6, TARGET6, IcmpErrorKind.packet_too_big, 0, 1280),
        (GATEWAY6, US6, TARGET6, IcmpErrorKind.parameter_problem, 0, None),
    ],
)
def test_icmp_errors_quote_the_probe(
    reporter: bytes, us: bytes, target: bytes, kind: IcmpErrorKind, code: int, mtu: int | None
) -> None:
    probe = build_udp(us, target, 50001, 33434, bytes(100))
    error = parse_icmp(parse_ip(build_icmp_error(reporter, us, kind, probe, code=code, mtu=mtu or 0)))
    assert isinstance(error, IcmpError)
    assert (error.kind, error.code, error.mtu) == (kind, code, mtu)
    quoted = error.quoted
    assert (quoted.src, quoted.dst, quoted.proto, quoted.sport, quoted.dport) == (us, target, PROTO_UDP, 50001, 33434)
    assert quoted.identifier is None


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_icmp_error_quoting_an_echo_request_names_its_identifier(src: bytes, dst: bytes) -> None:
    probe = build_icmp_echo(src, dst, 4321, 9, b"p")
    error = parse_icmp(parse_ip(build_icmp_error(dst, src, IcmpErrorKind.time_exceeded, probe)))
    assert isinstance(error, IcmpError)
    assert (error.quoted.identifier, error.quoted.sequence, error.quoted.sport) == (4321, 9, None)


def test_icmp_error_quoting_less_than_8_bytes_is_malformed() -> None:
    probe = build_udp(US4, TARGET4, 1, 2)[:27]
    with pytest.raises(PacketError):
        parse_icmp(parse_ip(build_icmp_error(GATEWAY4, US4, IcmpErrorKind.destination_unreachable, probe)))


def test_other_icmp_types_are_reported_not_rejected() -> None:
    # ICMP redirect (RFC 792 type 5): well formed, but neither an echo nor an error about a probe.
    body = bytearray(struct.pack("!BBHI", 5, 1, 0, 0) + bytes(28))
    body[2:4] = internet_checksum(bytes(body)).to_bytes(2, "big")
    message = parse_icmp(parse_ip(build_ip(GATEWAY4, US4, PROTO_ICMP, bytes(body))))
    assert isinstance(message, IcmpOther)
    assert (message.type, message.code) == (5, 1)


def test_icmpv6_checksum_covers_the_pseudo_header() -> None:
    # RFC 4443 section 2.3: the same ICMPv6 bytes under a different source no longer verify.
    packet = build_icmp_echo(US6, TARGET6, 1, 1)
    moved = packet[:8] + GATEWAY6 + packet[24:]
    with pytest.raises(ChecksumError):
        parse_icmp(parse_ip(moved))


def test_parsers_refuse_the_wrong_protocol() -> None:
    ip = parse_ip(build_udp(US4, TARGET4, 1, 2))
    with pytest.raises(PacketError):
        parse_icmp(ip)
    with pytest.raises(PacketError):
        parse_udp(parse_ip(build_icmp_echo(US4, TARGET4, 1, 1)))
