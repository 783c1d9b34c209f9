"""The verifiers: one table row per Mismatch, ICMP errors about our probe versus someone else's, and the
flipped-byte test (cloudprober's test connection flips the last byte of a reply; here every byte and every bit).
"""

import struct

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6

from probe.packets import (
    PROTO_UDP,
    IcmpErrorKind,
    Mismatch,
    Verdict,
    build_icmp_echo,
    build_icmp_error,
    build_ip,
    build_udp,
    internet_checksum,
    packed,
    verify_echo_reply,
    verify_udp_reply,
)

US, TARGET, GATEWAY, OTHER = packed("10.64.0.2"), packed("1.1.1.1"), packed("10.64.0.1"), packed("9.9.9.9")
US6, TARGET6 = packed("fc00:bbbb:bbbb:bb01::2"), packed("2606:4700:4700::1111")
IDENT, SEQ, PAYLOAD = 0x5A5A, 3, b"wgprobe 0123456789abcdef"
SPORT, DPORT = 50123, 7


def echo_reply(
    src: bytes = TARGET, dst: bytes = US, identifier: int = IDENT, sequence: int = SEQ, payload: bytes = PAYLOAD
) -> bytes:
    return build_icmp_echo(src, dst, identifier, sequence, payload, reply=True)


def judge_echo(packet: bytes, us: bytes = US, target: bytes = TARGET) -> Verdict:
    return verify_echo_reply(packet, expect_src=target, expect_dst=us, identifier=IDENT, sequence=SEQ, payload=PAYLOAD)


def judge_udp(packet: bytes, us: bytes = US, target: bytes = TARGET) -> Verdict:
    # The probe went US:SPORT -> TARGET:DPORT; the answer comes back TARGET:DPORT -> US:SPORT.
    return verify_udp_reply(
        packet, expect_src=target, expect_dst=us, expect_sport=DPORT, expect_dport=SPORT, payload=PAYLOAD
    )


def corrupt_last_byte(packet: bytes) -> bytes:
    return packet[:-1] + bytes([packet[-1] ^ 0xFF])


def first_fragment(packet: bytes) -> bytes:
    """`packet` with more-fragments set (RFC 791 section 3.1), as a router with a smaller MTU would send it."""
    fragment = bytearray(packet)
    struct.pack_into("!HxxH", fragment, 6, 0x2000, 0)  # flags and offset; the header checksum, zeroed
    struct.pack_into("!H", fragment, 10, internet_checksum(bytes(fragment[:20])))
    return bytes(fragment)


ECHO_PROBE = build_icmp_echo(US, TARGET, IDENT, SEQ, PAYLOAD)
UDP_PROBE = build_udp(US, TARGET, SPORT, DPORT, PAYLOAD)
TABLE: list[tuple[str, Verdict, Mismatch | None]] = [
    ("echo reply", judge_echo(echo_reply()), None),
    ("padded echo reply", judge_echo(echo_reply() + bytes(12)), None),
    ("truncated", judge_echo(echo_reply()[:30]), Mismatch.malformed),
    ("fragment of a reply", judge_echo(first_fragment(echo_reply())), Mismatch.fragmented),
    ("corrupted payload", judge_echo(corrupt_last_byte(echo_reply())), Mismatch.bad_checksum),
    ("to someone else", judge_echo(echo_reply(dst=OTHER)), Mismatch.wrong_destination),
    ("udp to echo probe", judge_echo(build_udp(TARGET, US, 1, 2)), Mismatch.wrong_protocol),
    ("echo request back", judge_echo(build_icmp_echo(TARGET, US, IDENT, SEQ, PAYLOAD)), Mismatch.wrong_type),
    ("reply from elsewhere", judge_echo(echo_reply(src=OTHER)), Mismatch.wrong_source),
    ("other identifier", judge_echo(echo_reply(identifier=IDENT + 1)), Mismatch.wrong_identifier),
    ("other sequence", judge_echo(echo_reply(sequence=SEQ + 1)), Mismatch.wrong_sequence),
    ("other payload", judge_echo(echo_reply(payload=PAYLOAD[::-1])), Mismatch.wrong_payload),
    (
        "relay: net unreachable for our ping",
        judge_echo(build_icmp_error(GATEWAY, US, IcmpErrorKind.destination_unreachable, ECHO_PROBE)),
        Mismatch.icmp_error,
    ),
    (
        "unreachable for another ping",
        judge_echo(
            build_icmp_error(
                GATEWAY, US, IcmpErrorKind.destination_unreachable, build_icmp_echo(US, TARGET, IDENT + 1, SEQ)
            )
        ),
        Mismatch.foreign_icmp_error,
    ),
    ("udp answer", judge_udp(build_udp(TARGET, US, DPORT, SPORT, PAYLOAD)), None),
    ("udp answer, other port", judge_udp(build_udp(TARGET, US, DPORT, SPORT + 1, PAYLOAD)), Mismatch.wrong_port),
    ("udp answer, other payload", judge_udp(build_udp(TARGET, US, DPORT, SPORT, b"?")), Mismatch.wrong_payload),
    ("echo reply to udp probe", judge_udp(echo_reply()), Mismatch.wrong_protocol),
    (
        "port unreachable for our udp",
        judge_udp(build_icmp_error(TARGET, US, IcmpErrorKind.destination_unreachable, UDP_PROBE, code=3)),
        Mismatch.icmp_error,
    ),
]


@pytest.mark.parametrize(("verdict", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_verdict_table(verdict: Verdict, expected: Mismatch | None) -> None:
    assert verdict.mismatch == expected
    assert verdict.ok == (expected is None)


def test_table_exercises_every_mismatch() -> None:
    # The set is closed (a metric label): every member must be reachable, or it is dead weight.
    assert {row[2] for row in TABLE} == {*Mismatch, None}


def test_verdict_reports_ttl_source_and_the_icmp_error() -> None:
    ok = judge_echo(build_icmp_echo(TARGET, US, IDENT, SEQ, PAYLOAD, ttl=57, reply=True))
    assert (ok.ttl, ok.source, ok.icmp_error) == (57, TARGET, None)
    too_big = judge_echo(build_icmp_error(GATEWAY, US, IcmpErrorKind.packet_too_big, ECHO_PROBE, mtu=1280, ttl=64))
    assert too_big.mismatch is Mismatch.icmp_error
    assert too_big.source == GATEWAY
    assert too_big.icmp_error is not None
    assert (too_big.icmp_error.kind, too_big.icmp_error.mtu) == (IcmpErrorKind.packet_too_big, 1280)


def test_udp_payload_check_can_be_skipped_for_services_like_dns() -> None:
    answer = build_udp(TARGET, US, 53, SPORT, b"\x12\x34\x81\x80")
    verdict = verify_udp_reply(answer, expect_src=TARGET, expect_dst=US, expect_sport=53, expect_dport=SPORT)
    assert verdict.ok


def test_fragmented_reply_cannot_be_judged() -> None:
    packet = bytearray(build_ip(TARGET, US, PROTO_UDP, build_udp(TARGET, US, DPORT, SPORT, PAYLOAD)[20:], ident=1))
    struct.pack_into("!H", packet, 6, 0x2000)  # more fragments (RFC 791 section 3.1)
    struct.pack_into("!H", packet, 10, 0)
    struct.pack_into("!H", packet, 10, internet_checksum(bytes(packet[:20])))
    assert judge_udp(bytes(packet)).mismatch is Mismatch.fragmented


def flips(packet: bytes) -> list[tuple[int, int, bytes]]:
    """Every single-bit flip and every whole-byte inversion: (position, mask, mutated packet)."""
    out = []
    for position in range(len(packet)):
        for mask in (0xFF, *(1 << bit for bit in range(8))):
            out.append((position, mask, packet[:position] + bytes([packet[position] ^ mask]) + packet[position + 1 :]))
    return out


def test_every_flip_of_an_ipv4_echo_reply_is_caught() -> None:
    # IPv4: the header checksum covers every header byte, TTL and identification included (RFC 791), and the
    # ICMP checksum covers the rest (RFC 792), so there is no position a corruption may pass through.
    reply = echo_reply()
    assert judge_echo(reply).ok
    missed = [(position, mask) for position, mask, bad in flips(reply) if judge_echo(bad).ok]
    assert missed == []


def test_every_flip_of_an_ipv4_udp_reply_is_caught() -> None:
    reply = build_udp(TARGET, US, DPORT, SPORT, PAYLOAD)
    assert judge_udp(reply).ok
    missed = []
    for position, mask, bad in flips(reply):
        if judge_udp(bad).ok:
            # RFC 768: a zero UDP checksum means "none computed" over IPv4. A flip that zeroes the checksum
            # leaves a packet whose every other byte is intact, so accepting it is correct, not a miss.
            if position in (26, 27) and bad[26:28] == b"\x00\x00":
                continue
            missed.append((position, mask))
    assert missed == []


# IPv6 (RFC 8200 section 3) has no header checksum and routers may rewrite these fields in flight: traffic class
# (DSCP/ECN, low nibble of byte 0 and high nibble of byte 1), flow label (rest of bytes 1-3, RFC 6437) and hop
# limit (byte 7, decremented at every hop). A verifier must not reject on them, so flips there pass by design;
# every other byte is covered by the ICMPv6/UDP checksum, whose pseudo-header includes addresses, length and
# next header (RFC 8200 section 8.1, RFC 4443 section 2.3).
def ipv6_unjudged(position: int, mask: int) -> bool:
    return (position == 0 and mask & 0xF0 == 0) or position in (1, 2, 3, 7)


@pytest.mark.parametrize("kind", ["echo", "udp"])
def test_every_flip_of_an_ipv6_reply_is_caught_except_fields_routers_rewrite(kind: str) -> None:
    if kind == "echo":
        reply = echo_reply(src=TARGET6, dst=US6)

        def judge(packet: bytes) -> Verdict:
            return judge_echo(packet, us=US6, target=TARGET6)
    else:
        reply = build_udp(TARGET6, US6, DPORT, SPORT, PAYLOAD)

        def judge(packet: bytes) -> Verdict:
            return judge_udp(packet, us=US6, target=TARGET6)

    assert judge(reply).ok
    for position, mask, bad in flips(reply):
        verdict = judge(bad)
        assert verdict.ok == ipv6_unjudged(position, mask), (position, mask, verdict)
        if verdict.ok and position == 7:
            assert verdict.ttl == bad[7], "the hop limit is reported even though it is not judged"


def test_ipv6_answer_built_by_scapy_verifies() -> None:
    answer = bytes(
        IPv6(src="2606:4700:4700::1111", dst="fc00:bbbb:bbbb:bb01::2", hlim=55)
        / UDP(sport=DPORT, dport=SPORT)
        / PAYLOAD
    )
    verdict = verify_udp_reply(
        answer, expect_src=TARGET6, expect_dst=US6, expect_sport=DPORT, expect_dport=SPORT, payload=PAYLOAD
    )
    assert verdict.ok
    assert verdict.ttl == 55
