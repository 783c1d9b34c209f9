"""Whatever comes out of a tunnel, parsers and verifiers answer with a value or a PacketError, nothing else.

Random bytes mostly die at the first length or checksum check, so besides raw random input the transport parsers
get bodies whose checksum has been made valid, which drives them into the deeper code (ICMP error quotes, UDP
lengths).
"""

import contextlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from probe.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    IPPacket,
    PacketError,
    build_icmp_echo,
    build_udp,
    parse_icmp,
    parse_ip,
    parse_quoted,
    parse_udp,
    verify_echo_reply,
    verify_udp_reply,
)
from probe.packets.checksum import pseudo_header_sum, word_sum

SETTINGS = settings(max_examples=300, deadline=None)
US4, TARGET4 = bytes([10, 64, 0, 2]), bytes([1, 1, 1, 1])
US6, TARGET6 = bytes.fromhex("fc00bbbbbbbbbb010000000000000002"), bytes.fromhex("26064700470000000000000000001111")
CHECKSUM_OFFSET = {PROTO_ICMP: 2, PROTO_ICMPV6: 2, PROTO_UDP: 6}


def never_foreign(parse: Callable[[], object]) -> None:
    # Only PacketError may escape; anything else propagates and fails the test.
    with contextlib.suppress(PacketError):
        parse()


def verify_all(packet: bytes) -> None:
    """Every verifier, both families; a verifier returns a Verdict and never raises."""
    for us, target in ((US4, TARGET4), (US6, TARGET6)):
        verify_echo_reply(packet, expect_src=target, expect_dst=us, identifier=1, sequence=2, payload=b"p")
        verify_udp_reply(packet, expect_src=target, expect_dst=us, expect_sport=53, expect_dport=50000)


def with_valid_checksum(version: int, proto: int, body: bytes) -> bytes:
    """`body` with its transport checksum field set so that it verifies, as if a real stack had sent it."""
    offset = CHECKSUM_OFFSET[proto]
    if len(body) < offset + 2:
        return body
    zeroed = body[:offset] + b"\x00\x00" + body[offset + 2 :]
    src, dst = (TARGET4, US4) if version == 4 else (TARGET6, US6)
    total = word_sum(zeroed)
    if proto != PROTO_ICMP:
        total += pseudo_header_sum(src, dst, proto, len(zeroed))
    csum = 0xFFFF - (total % 0xFFFF or (0xFFFF if total else 0))
    return zeroed[:offset] + csum.to_bytes(2, "big") + zeroed[offset + 2 :]


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    never_foreign(lambda: parse_ip(data))
    never_foreign(lambda: parse_quoted(data))
    verify_all(data)


@SETTINGS
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F]), st.binary(max_size=120))
def test_random_bytes_behind_a_plausible_version_byte(first: int, rest: bytes) -> None:
    data = bytes([first]) + rest
    never_foreign(lambda: parse_ip(data))
    never_foreign(lambda: parse_quoted(data))
    verify_all(data)


@SETTINGS
@given(
    st.sampled_from([(4, PROTO_ICMP), (6, PROTO_ICMPV6), (4, PROTO_UDP), (6, PROTO_UDP)]),
    st.binary(max_size=120),
    st.booleans(),
)
def test_transport_parsers_on_random_bodies(version_proto: tuple[int, int], body: bytes, fix: bool) -> None:
    version, proto = version_proto
    if fix:
        body = with_valid_checksum(version, proto, body)
    src, dst = (TARGET4, US4) if version == 4 else (TARGET6, US6)
    ip = IPPacket(version, src, dst, proto, 64, body, len(body), 0, False)
    never_foreign(lambda: parse_icmp(ip))
    never_foreign(lambda: parse_udp(ip))


@SETTINGS
@given(st.sampled_from([4, 6]), st.sampled_from([1, 3, 11, 12, 2, 4, 128, 129]), st.binary(max_size=100))
def test_icmp_errors_with_random_quotes_and_valid_checksums(version: int, icmp_type: int, quote: bytes) -> None:
    proto = PROTO_ICMP if version == 4 else PROTO_ICMPV6
    body = with_valid_checksum(version, proto, bytes([icmp_type, 4, 0, 0, 0, 0, 5, 0x78]) + quote)
    src, dst = (TARGET4, US4) if version == 4 else (TARGET6, US6)
    never_foreign(lambda: parse_icmp(IPPacket(version, src, dst, proto, 64, body, len(body), 0, False)))


valid_packets = st.sampled_from(
    [
        build_icmp_echo(TARGET4, US4, 1, 2, b"p", reply=True),
        build_icmp_echo(TARGET6, US6, 1, 2, b"p", reply=True),
        build_udp(TARGET4, US4, 53, 50000, b"answer"),
        build_udp(TARGET6, US6, 53, 50000, b"answer"),
    ]
)


@SETTINGS
@given(valid_packets, st.data())
def test_mutated_valid_packets(packet: bytes, data: st.DataObject) -> None:
    # Overwrite a random slice and cut at a random length: headers stay plausible, so deeper checks run.
    start = data.draw(st.integers(0, len(packet)))
    patch = data.draw(st.binary(max_size=8))
    mutated = (packet[:start] + patch + packet[start + len(patch) :])[: data.draw(st.integers(0, len(packet) + 8))]
    never_foreign(lambda: parse_ip(mutated))
    verify_all(mutated)
