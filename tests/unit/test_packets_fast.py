"""The one-pass checks of a predicted answer (`EchoTemplate.reply_sequence`, `UdpFlow.reply_payload`) agree with the
full verifiers: whenever the fast path accepts a packet, the full judgement of that packet says "ok" with the same
sequence or payload; a good answer in the plain form is accepted; and hostile packets (corrupted, wrong checksums,
truncated, swapped words, forged sources, fragments) are never accepted, on IPv4 and IPv6. A packet the fast path
declines goes to the full judgement, so a decline can never change a verdict, only an acceptance could."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.packets import (
    EchoTemplate,
    PacketError,
    UdpFlow,
    Verdict,
    build_icmp_echo,
    build_udp,
    judge_echo_reply,
    judge_udp_reply,
    parse_ip,
)
from probe.packets.udp import Udp

FAMILIES = [("10.64.0.2", "198.18.0.2"), ("fc00:bbbb:bbbb:bb01::2", "fd77:7770::2")]
OUR_PORT, THEIR_PORT = 40123, 7777


def full_echo(template: EchoTemplate, packet: bytes) -> tuple[int | None, Verdict | None]:
    """The full path: parse, then judge as the stage does (None: does not even parse)."""
    try:
        ip = parse_ip(packet)
    except PacketError:
        return None, None
    return judge_echo_reply(
        ip, src=template.dst, dst=template.src, identifier=template.identifier, payload_for=template.payload
    )


def full_udp(flow: UdpFlow, packet: bytes) -> Verdict | None:
    try:
        ip = parse_ip(packet)
    except PacketError:
        return None
    return judge_udp_reply(ip, src=flow.dst, dst=flow.src, their_port=flow.dport, our_port=flow.sport)


def echo_reply(template: EchoTemplate, seq: int, *, ttl: int = 57) -> bytes:
    return build_icmp_echo(
        template.dst, template.src, template.identifier, seq, template.payload(seq), reply=True, ttl=ttl
    )


def assert_echo_agrees(template: EchoTemplate, packet: bytes) -> int | None:
    fast = template.reply_sequence(packet)
    if fast is not None:
        seq, verdict = full_echo(template, packet)
        assert verdict is not None and verdict.ok and seq == fast, (packet.hex(), verdict)
    return fast


def assert_udp_agrees(flow: UdpFlow, packet: bytes) -> bytes | None:
    fast = flow.reply_payload(packet)
    if fast is not None:
        verdict = full_udp(flow, packet)
        assert verdict is not None and verdict.ok, (packet.hex(), verdict)
        assert isinstance(verdict.reply, Udp) and verdict.reply.payload == fast
    return fast


# A hostile relay's ways with a good answer: each turns it into something else.
def flip(packet: bytes, at: int, bit: int) -> bytes:
    at %= len(packet)
    return packet[:at] + bytes([packet[at] ^ (1 << bit)]) + packet[at + 1 :]


def swap_words(packet: bytes, a: int, b: int) -> bytes:
    """Two 16-bit words exchanged: the internet checksum cannot see it (the sum is the same)."""
    words = list(struct.unpack(f"!{len(packet) // 2}H", packet[: len(packet) // 2 * 2]))
    a, b = a % len(words), b % len(words)
    words[a], words[b] = words[b], words[a]
    return struct.pack(f"!{len(words)}H", *words) + packet[len(words) * 2 :]


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 2000), st.just(0)),
    st.tuples(st.just("swap"), st.integers(0, 1000), st.integers(0, 1000)),
    st.tuples(st.just("pad"), st.integers(1, 15), st.just(0)),
)


def mutate(packet: bytes, mutation: tuple[str, int, int]) -> bytes:
    kind, a, b = mutation
    if kind == "flip":
        return flip(packet, a, b)
    if kind == "truncate":
        return packet[: a % len(packet)]
    if kind == "swap":
        return swap_words(packet, a, b)
    return packet + bytes(a)  # WireGuard's padding: still the same answer


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(seq=st.integers(0, 0xFFFF), pad=st.sampled_from([0, 14, 1240]), ttl=st.integers(1, 255))
def test_a_good_echo_reply_is_taken_by_the_fast_path(src: str, dst: str, seq: int, pad: int, ttl: int) -> None:
    template = EchoTemplate(src, dst, 4242, os.urandom(8), pad=pad)
    assert assert_echo_agrees(template, echo_reply(template, seq, ttl=ttl)) == seq
    assert assert_echo_agrees(template, echo_reply(template, seq) + bytes(12)) == seq  # tunnel padding


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(seq=st.integers(0, 0xFFFF), mutation=MUTATIONS)
def test_hostile_echo_replies_are_never_taken_unless_the_full_verifier_agrees(
    src: str, dst: str, seq: int, mutation: tuple[str, int, int]
) -> None:
    template = EchoTemplate(src, dst, 4242, os.urandom(8), pad=14)
    assert_echo_agrees(template, mutate(echo_reply(template, seq), mutation))


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(data=st.binary(max_size=120))
def test_random_bytes_are_never_taken_as_an_echo_reply(src: str, dst: str, data: bytes) -> None:
    template = EchoTemplate(src, dst, 4242, bytes(8))
    assert assert_echo_agrees(template, data) is None or len(data) >= 28


def test_each_named_fault_is_declined_and_judged_in_full() -> None:
    template = EchoTemplate("10.64.0.2", "198.18.0.2", 4242, os.urandom(8))
    good = echo_reply(template, 7)
    bad_ip_checksum = good[:10] + bytes([good[10] ^ 1]) + good[11:]
    bad_icmp_checksum = good[:22] + bytes([good[22] ^ 1]) + good[23:]
    forged_source = build_icmp_echo("198.18.0.9", "10.64.0.2", 4242, 7, template.payload(7), reply=True)
    other_identifier = build_icmp_echo("198.18.0.2", "10.64.0.2", 4243, 7, template.payload(7), reply=True)
    request = build_icmp_echo("198.18.0.2", "10.64.0.2", 4242, 7, template.payload(7))
    fragment = good[:6] + b"\x20\x00" + good[8:10] + b"\x00\x00" + good[12:]  # MF set, checksum fixed below
    fragment = fragment[:10] + _ip_checksum(fragment[:20]) + fragment[12:]
    for packet, mismatch in [
        (bad_ip_checksum, "bad_checksum"),
        (bad_icmp_checksum, "bad_checksum"),
        (forged_source, "wrong_source"),
        (other_identifier, "wrong_identifier"),
        (request, "wrong_type"),
        (fragment, "fragmented"),
        (good[:30], "malformed"),
    ]:
        assert template.reply_sequence(packet) is None
        _seq, verdict = full_echo(template, packet)
        assert verdict is None or verdict.mismatch == mismatch, (mismatch, verdict)


def test_good_replies_in_forms_it_does_not_predict_are_left_to_the_full_verifier() -> None:
    v6 = EchoTemplate("fc00:bbbb:bbbb:bb01::2", "fd77:7770::2", 4242, os.urandom(8))
    plain = echo_reply(v6, 3)
    # A hop-by-hop options header (8 bytes of PadN) between the IPv6 header and the ICMPv6 message.
    hop_by_hop = bytes([58, 0, 1, 4, 0, 0, 0, 0])
    with_options = (
        plain[:4] + (len(plain) - 40 + 8).to_bytes(2, "big") + b"\x00" + plain[7:40] + hop_by_hop + plain[40:]
    )
    assert v6.reply_sequence(with_options) is None
    seq, verdict = full_echo(v6, with_options)
    assert seq == 3 and verdict is not None and verdict.ok


def _ip_checksum(header: bytes) -> bytes:
    zeroed = header[:10] + b"\x00\x00" + header[12:]
    total = int.from_bytes(zeroed, "big") % 0xFFFF
    return (0xFFFF - total).to_bytes(2, "big")


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(payload=st.binary(min_size=0, max_size=64))
def test_the_flow_builds_what_the_codec_builds(src: str, dst: str, payload: bytes) -> None:
    flow = UdpFlow(src, dst, OUR_PORT, THEIR_PORT)
    built, expected = flow.build(payload), build_udp(src, dst, OUR_PORT, THEIR_PORT, payload)
    if flow.version == 4:  # the IPv4 identification (and so the header checksum) comes from a counter
        built, expected = built[:4] + built[6:10] + built[12:], expected[:4] + expected[6:10] + expected[12:]
    assert built == expected


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(payload=st.binary(min_size=0, max_size=64), ttl=st.integers(1, 255))
def test_a_good_udp_answer_is_taken_by_the_fast_path(src: str, dst: str, payload: bytes, ttl: int) -> None:
    flow = UdpFlow(src, dst, OUR_PORT, THEIR_PORT)
    answer = build_udp(dst, src, THEIR_PORT, OUR_PORT, payload, ttl=ttl)
    assert assert_udp_agrees(flow, answer) == payload
    assert assert_udp_agrees(flow, answer + bytes(9)) == payload


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(payload=st.binary(min_size=48, max_size=48), mutation=MUTATIONS)
def test_hostile_udp_answers_are_never_taken_unless_the_full_verifier_agrees(
    src: str, dst: str, payload: bytes, mutation: tuple[str, int, int]
) -> None:
    flow = UdpFlow(src, dst, OUR_PORT, THEIR_PORT)
    answer = build_udp(dst, src, THEIR_PORT, OUR_PORT, payload)
    assert_udp_agrees(flow, mutate(answer, mutation))


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(data=st.binary(max_size=120))
def test_random_bytes_are_never_taken_as_a_udp_answer(src: str, dst: str, data: bytes) -> None:
    assert_udp_agrees(UdpFlow(src, dst, OUR_PORT, THEIR_PORT), data)


def test_udp_answers_it_declines() -> None:
    flow = UdpFlow("10.64.0.2", "198.18.0.2", OUR_PORT, THEIR_PORT)
    good = build_udp("198.18.0.2", "10.64.0.2", THEIR_PORT, OUR_PORT, b"x" * 48)
    no_checksum = good[:26] + b"\x00\x00" + good[28:]  # IPv4 allows it (RFC 768): the full verifier takes it
    wrong_port = build_udp("198.18.0.2", "10.64.0.2", THEIR_PORT + 1, OUR_PORT, b"x" * 48)
    bad_checksum = good[:30] + bytes([good[30] ^ 1]) + good[31:]
    assert flow.reply_payload(no_checksum) is None
    verdict = full_udp(flow, no_checksum)
    assert verdict is not None and verdict.ok
    for packet, mismatch in [(wrong_port, "wrong_port"), (bad_checksum, "bad_checksum")]:
        assert flow.reply_payload(packet) is None
        verdict = full_udp(flow, packet)
        assert verdict is not None and verdict.mismatch == mismatch
    v6 = UdpFlow("fc00:bbbb:bbbb:bb01::2", "fd77:7770::2", OUR_PORT, THEIR_PORT)
    good6 = build_udp("fd77:7770::2", "fc00:bbbb:bbbb:bb01::2", THEIR_PORT, OUR_PORT, b"y" * 48)
    zero6 = good6[:46] + b"\x00\x00" + good6[48:]  # never valid over IPv6 (RFC 8200 section 8.1)
    assert v6.reply_payload(zero6) is None
    verdict = full_udp(v6, zero6)
    assert verdict is not None and verdict.mismatch == "bad_checksum"


def test_flow_ports_are_16_bits() -> None:
    with pytest.raises(PacketError, match="16 bits"):
        UdpFlow("10.64.0.2", "198.18.0.2", 70000, 1)
