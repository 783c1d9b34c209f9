"""Stage 4, egress: ask `probe reflector` (outside the fleet) through the tunnel which address it saw. It must be
the relay's expected egress address: a relay that NATs to a wrong address breaks every customer's allow-lists."""

from __future__ import annotations

import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from probe import reflector
from probe.packets import (
    PROTO_UDP,
    IcmpError,
    IPPacket,
    Mismatch,
    PacketError,
    Udp,
    Verdict,
    build_udp,
    parse_icmp,
    source_ports,
    verify_udp_reply,
)
from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext, exchange, stage_result

NAME = StageName.egress


def endpoint(ctx: PathContext) -> tuple[IPv4Address | IPv6Address, int] | None:
    return ctx.settings.reflector if ctx.family == 4 else ctx.settings.reflector_v6


def applies(ctx: PathContext) -> bool:
    return ctx.inner_src is not None and endpoint(ctx) is not None and ctx.expected_egress is not None


def claim_udp(port: int) -> Callable[[IPPacket], bool]:
    def claim(ip: IPPacket) -> bool:
        if ip.proto == PROTO_UDP:
            return len(ip.payload) >= 4 and int.from_bytes(ip.payload[2:4], "big") == port
        try:
            message = parse_icmp(ip)
        except PacketError:
            return False
        return isinstance(message, IcmpError) and message.quoted.sport == port

    return claim


async def run(ctx: PathContext) -> StageResult:
    found = endpoint(ctx)
    src = ctx.inner_src
    assert found is not None and src is not None and ctx.demux is not None
    target, target_port = found
    ports = source_ports()
    sport = ports.acquire()
    nonces: dict[int, bytes] = {}
    seen: dict[int, reflector.Observed] = {}
    wrong: list[reflector.Observed] = []

    def build(seq: int) -> bytes:
        nonces[seq] = os.urandom(reflector.NONCE_SIZE)
        return build_udp(src, target, sport, target_port, reflector.build_request(nonces[seq]))

    def judge(packet: bytes) -> tuple[int | None, Verdict]:
        verdict = verify_udp_reply(
            packet, expect_src=target, expect_dst=src, expect_sport=target_port, expect_dport=sport
        )
        if verdict.icmp_error is not None or not verdict.ok or not isinstance(verdict.reply, Udp):
            return None, verdict
        for seq, nonce in nonces.items():
            try:
                observed = reflector.parse_response(verdict.reply.payload, nonce)
            except reflector.ReflectorError:
                continue
            seen[seq] = observed
            if observed.address != ctx.expected_egress:
                wrong.append(observed)
            return seq, verdict
        # A UDP answer on our flow that is not a reflector response to any of our nonces: forged or corrupted.
        return None, Verdict(Mismatch.wrong_payload, verdict.ttl, verdict.source, verdict.reply)

    inbox = ctx.demux.claim(claim_udp(sport))
    try:
        outcome = await exchange(ctx, inbox, build, judge)
    finally:
        ports.release(sport)
    result = stage_result(NAME, outcome, ctx, timeout_reason=Reason.egress_timeout, error_reason=Reason.egress_timeout)
    if wrong:
        return result.model_copy(
            update={
                "ok": False,
                "reason": Reason.egress_mismatch,
                "detail": f"reflector saw {wrong[0].address}, expected {ctx.expected_egress}",
            }
        )
    if result.ok and seen:
        observed = next(iter(seen.values()))
        return result.model_copy(update={"detail": f"egress {observed.address} port {observed.port}"})
    return result
