"""ICMP echo through the tunnel, shared by the tunnel, forward and mtu stages: build, claim and judge."""

from __future__ import annotations

import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from probe.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    Echo,
    IcmpError,
    IPPacket,
    PacketError,
    Verdict,
    build_icmp_echo,
    icmp_identifiers,
    parse_icmp,
    parse_ip,
    verify_echo_reply,
)
from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext, exchange, stage_result

_ECHO_REPLIES = (0, 129)


def claim_echo(identifier: int) -> Callable[[IPPacket], bool]:
    """Claim echo replies carrying `identifier`, and ICMP errors quoting an echo request that carried it."""

    def claim(ip: IPPacket) -> bool:
        if ip.proto not in (PROTO_ICMP, PROTO_ICMPV6) or len(ip.payload) < 8:
            return False
        if ip.payload[0] in _ECHO_REPLIES:
            return int.from_bytes(ip.payload[4:6], "big") == identifier
        try:
            message = parse_icmp(ip)
        except PacketError:
            return False
        return isinstance(message, IcmpError) and message.quoted.identifier == identifier

    return claim


async def echo_stage(
    ctx: PathContext,
    name: StageName,
    target: IPv4Address | IPv6Address,
    *,
    timeout_reason: Reason,
    error_reason: Reason | Callable[[IcmpError], Reason],
    size: int = 0,
) -> StageResult:
    """Echo `target` until enough answers; `size` pads the whole IP packet to that many bytes (DF set on IPv4)."""
    src = ctx.inner_src
    assert src is not None and ctx.demux is not None
    allocator = icmp_identifiers()
    identifier = allocator.acquire()
    nonce = os.urandom(8)
    header = (20 if src.version == 4 else 40) + 8
    pad = bytes(max(0, size - header - 10))
    payloads: dict[int, bytes] = {}

    def build(seq: int) -> bytes:
        payloads[seq] = nonce + seq.to_bytes(2, "big") + pad
        return build_icmp_echo(src, target, identifier, seq, payloads[seq], df=size > 0)

    def judge(packet: bytes) -> tuple[int | None, Verdict]:
        seq = _sequence(packet)
        verdict = verify_echo_reply(
            packet,
            expect_src=target,
            expect_dst=src,
            identifier=identifier,
            sequence=seq,
            payload=payloads.get(seq, b""),
        )
        return seq, verdict

    inbox = ctx.demux.claim(claim_echo(identifier))
    try:
        outcome = await exchange(ctx, inbox, build, judge)
    finally:
        allocator.release(identifier)
    return stage_result(name, outcome, ctx, timeout_reason=timeout_reason, error_reason=error_reason)


def _sequence(packet: bytes) -> int:
    """The echo sequence a packet answers: its own, or for an ICMP error the quoted request's (-1: unknown)."""
    try:
        message = parse_icmp(parse_ip(packet))
    except PacketError:
        return -1
    if isinstance(message, IcmpError):
        return message.quoted.sequence if message.quoted.sequence is not None else -1
    return message.sequence if isinstance(message, Echo) else -1
