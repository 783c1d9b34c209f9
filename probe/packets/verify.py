"""Pure verifiers: judge one captured packet against the probe that was sent, and say what is wrong with it.

Capture and judgement are separate (cloudprober probes/ping/pingutils.go): a stage collects the inner
packets that come back through the tunnel and calls one function here per packet; nothing here does I/O or
keeps state.

Every function returns a `Verdict`. Its `mismatch` is None when the packet is the expected answer, else one
member of the closed `Mismatch` set. Stages map those onto their own failure reasons, e.g. `icmp_error` onto
"forward_unreachable" and the rest onto "reply_invalid"; a stage still waiting for its answer may also
choose to skip packets that are simply someone else's (`wrong_identifier`, `wrong_port`,
`foreign_icmp_error`).

Checks run outermost first, so the reported mismatch is the first thing a reader of the dissection would
notice: parse (malformed, bad_checksum), addressed to us, protocol, message type, source, identifiers,
payload. Fields no checksum covers and that routers may rewrite (IPv6 hop limit, traffic class, flow label;
RFC 8200 section 3) are reported (`ttl`) but never judged.
"""

from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from probe.packets.errors import ChecksumError, PacketError
from probe.packets.icmp import Echo, IcmpError, IcmpOther, Quoted, parse_icmp
from probe.packets.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    Address,
    IPPacket,
    packed,
    parse_ip,
)
from probe.packets.udp import Udp, parse_udp


class Mismatch(StrEnum):
    """Why a packet is not the answer to a probe. Closed: safe as a metric label."""

    malformed = "malformed"  # not a parseable IP packet or message
    fragmented = "fragmented"  # only a fragment of one: a link on the way back had a smaller MTU than the answer
    bad_checksum = "bad_checksum"  # IPv4 header, ICMP, ICMPv6 or UDP checksum does not verify (RFC 1071)
    wrong_destination = "wrong_destination"  # not addressed to the probe's own (tunnel) address
    wrong_protocol = "wrong_protocol"  # not the protocol the probe used (nor an ICMP error about it)
    wrong_type = "wrong_type"  # right protocol but not an answer: not an echo reply
    wrong_source = "wrong_source"  # the answer comes from another host than the probed target
    wrong_identifier = "wrong_identifier"  # ICMP echo identifier differs
    wrong_sequence = "wrong_sequence"  # ICMP echo sequence number differs
    wrong_port = "wrong_port"  # UDP ports are not the probe's, reversed
    wrong_payload = "wrong_payload"  # payload differs from what was sent
    icmp_error = "icmp_error"  # an ICMP error about this very probe: see Verdict.icmp_error
    foreign_icmp_error = "foreign_icmp_error"  # an ICMP error about some other packet


Reply = Echo | Udp | IcmpError | IcmpOther


class Verdict(NamedTuple):
    mismatch: Mismatch | None
    ttl: int | None
    """TTL or hop limit of the packet judged; None when it did not parse. Lets a stage see how far away the
    answer came from (and spot a reply forged by the relay itself)."""
    source: bytes | None
    """IP source of the packet judged: the target, or the router that sent an ICMP error."""
    reply: Reply | None
    """The parsed message, when it got that far."""

    @property
    def ok(self) -> bool:
        return self.mismatch is None

    @property
    def icmp_error(self) -> IcmpError | None:
        return self.reply if isinstance(self.reply, IcmpError) else None


_MALFORMED = Verdict(Mismatch.malformed, None, None, None)
_BAD_CHECKSUM = Verdict(Mismatch.bad_checksum, None, None, None)


def verify_echo_reply(
    packet: bytes, *, expect_src: Address, expect_dst: Address, identifier: int, sequence: int, payload: bytes
) -> Verdict:
    """Judge `packet` as the echo reply from `expect_src` (the target) to `expect_dst` (our own address)."""
    ip = _parsed(packet)
    if isinstance(ip, Verdict):
        return ip
    _seq, verdict = judge_echo_reply(
        ip,
        src=packed(expect_src),
        dst=packed(expect_dst),
        identifier=identifier,
        payload_for=lambda seq: payload if seq == sequence else None,
    )
    if verdict.ok and isinstance(verdict.reply, Echo) and verdict.reply.sequence != sequence:
        return Verdict(Mismatch.wrong_sequence, verdict.ttl, verdict.source, verdict.reply)
    return verdict


def judge_echo_reply(
    ip: IPPacket, *, src: bytes, dst: bytes, identifier: int, payload_for: Callable[[int], bytes | None]
) -> tuple[int | None, Verdict]:
    """(sequence, verdict) for an already parsed packet as the echo reply from `src` to `dst` (packed addresses).

    `payload_for(sequence)` is the payload sent with that sequence number, or None for a sequence never sent. The
    sequence returned is the reply's own, or for an ICMP error the quoted request's, so the caller can match it to
    a probe; None when there is none.
    """
    outer = _check_outer(ip, dst)
    if outer is not None:
        return None, outer
    proto = PROTO_ICMP if ip.version == 4 else PROTO_ICMPV6
    if ip.proto != proto:
        return None, Verdict(Mismatch.wrong_protocol, ip.ttl, ip.src, None)
    message = _icmp(ip)
    if isinstance(message, Verdict):
        return None, message
    if isinstance(message, IcmpError):
        quoted = message.quoted
        verdict = _judge_error(ip, message, src, dst, lambda q: q.identifier == identifier)
        return quoted.sequence, verdict
    if not isinstance(message, Echo) or not message.is_reply or message.code != 0:
        return None, Verdict(Mismatch.wrong_type, ip.ttl, ip.src, message)
    mismatch = None
    expected = payload_for(message.sequence)
    if ip.src != src:
        mismatch = Mismatch.wrong_source
    elif message.identifier != identifier:
        mismatch = Mismatch.wrong_identifier
    elif expected is None:
        mismatch = Mismatch.wrong_sequence
    elif message.payload != expected:
        mismatch = Mismatch.wrong_payload
    return message.sequence, Verdict(mismatch, ip.ttl, ip.src, message)


def verify_udp_reply(
    packet: bytes,
    *,
    expect_src: Address,
    expect_dst: Address,
    expect_sport: int,
    expect_dport: int,
    payload: bytes | None = None,
) -> Verdict:
    """Judge `packet` as the UDP answer from `expect_src`:`expect_sport` (the target and the port the probe
    was sent to) to `expect_dst`:`expect_dport` (our address and source port). `payload=None` skips the
    payload check, for services whose answer differs from the question (DNS); an echo service's answer must
    match exactly.
    """
    ip = _parsed(packet)
    if isinstance(ip, Verdict):
        return ip
    verdict = judge_udp_reply(
        ip, src=packed(expect_src), dst=packed(expect_dst), their_port=expect_sport, our_port=expect_dport
    )
    if verdict.ok and payload is not None and isinstance(verdict.reply, Udp) and verdict.reply.payload != payload:
        return Verdict(Mismatch.wrong_payload, verdict.ttl, verdict.source, verdict.reply)
    return verdict


def judge_udp_reply(ip: IPPacket, *, src: bytes, dst: bytes, their_port: int, our_port: int) -> Verdict:
    """Judge an already parsed packet as the UDP answer from `src`:`their_port` to `dst`:`our_port`."""
    outer = _check_outer(ip, dst)
    if outer is not None:
        return outer
    if ip.proto != PROTO_UDP:
        return _icmp_or_wrong_protocol(ip, src, dst, proto=PROTO_UDP, our_port=our_port, their_port=their_port)
    try:
        udp = parse_udp(ip)
    except ChecksumError:
        return Verdict(Mismatch.bad_checksum, ip.ttl, ip.src, None)
    except PacketError:
        return Verdict(Mismatch.malformed, ip.ttl, ip.src, None)
    mismatch = None
    if ip.src != src:
        mismatch = Mismatch.wrong_source
    elif udp.sport != their_port or udp.dport != our_port:
        mismatch = Mismatch.wrong_port
    return Verdict(mismatch, ip.ttl, ip.src, udp)


def _parsed(packet: bytes) -> IPPacket | Verdict:
    try:
        return parse_ip(packet)
    except ChecksumError:
        return _BAD_CHECKSUM
    except PacketError:
        return _MALFORMED


def _check_outer(ip: IPPacket, dst: bytes) -> Verdict | None:
    """A verdict when the IP layer alone already fails the packet: not addressed to us, or a fragment."""
    if ip.dst != dst:
        return Verdict(Mismatch.wrong_destination, ip.ttl, ip.src, None)
    if ip.fragmented:
        # A fragment cannot be judged alone. Probe answers are small; a relay's NAT reassembles (conntrack
        # needs whole datagrams) and the tunnel MTU fits them, so a fragment here is itself a fault.
        return Verdict(Mismatch.fragmented, ip.ttl, ip.src, None)
    return None


def _icmp(ip: IPPacket) -> Echo | IcmpError | IcmpOther | Verdict:
    try:
        return parse_icmp(ip)
    except ChecksumError:
        return Verdict(Mismatch.bad_checksum, ip.ttl, ip.src, None)
    except PacketError:
        return Verdict(Mismatch.malformed, ip.ttl, ip.src, None)


def _icmp_or_wrong_protocol(
    ip: IPPacket, src: bytes, dst: bytes, *, proto: int, our_port: int, their_port: int
) -> Verdict:
    """A UDP or TCP probe's answer in another protocol: an ICMP error about the probe, or just wrong."""
    if ip.proto != (PROTO_ICMP if ip.version == 4 else PROTO_ICMPV6):
        return Verdict(Mismatch.wrong_protocol, ip.ttl, ip.src, None)
    message = _icmp(ip)
    if isinstance(message, Verdict):
        return message
    if not isinstance(message, IcmpError):
        return Verdict(Mismatch.wrong_protocol, ip.ttl, ip.src, message)
    return _judge_error(
        ip, message, src, dst, lambda q: q.proto == proto and q.sport == our_port and q.dport == their_port
    )


def _judge_error(
    ip: IPPacket, error: IcmpError, src: bytes, dst: bytes, same_flow: Callable[[Quoted], bool]
) -> Verdict:
    """An ICMP error is about our probe when it quotes a packet from us to the target of the probe's flow."""
    quoted = error.quoted
    ours = quoted.src == dst and quoted.dst == src and same_flow(quoted)
    return Verdict(Mismatch.icmp_error if ours else Mismatch.foreign_icmp_error, ip.ttl, ip.src, error)
