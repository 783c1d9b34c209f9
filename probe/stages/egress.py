"""Stage 4, egress: ask `probe reflector` (outside the fleet) through the tunnel which address it saw. It must be
the relay's expected egress address: a relay that NATs to a wrong address breaks every customer's allow-lists."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address

from probe import reflector
from probe.packets import IPPacket, Mismatch, Udp, UdpFlow, Verdict, judge_udp_reply, source_ports
from probe.results import Reason, StageName
from probe.stages.base import ClaimKind, Exchange, PathContext

NAME = StageName.egress
AFTER = StageName.forward  # the reflector sits beyond the NAT, as the forward target does
_NONCE_AT = slice(8, 8 + reflector.NONCE_SIZE)  # where a response carries the request's nonce


def endpoint(ctx: PathContext) -> tuple[IPv4Address | IPv6Address, int] | None:
    return ctx.settings.reflector if ctx.family == 4 else ctx.settings.reflector_v6


def applies(ctx: PathContext) -> bool:
    return ctx.inner_src is not None and endpoint(ctx) is not None and ctx.expected_egress is not None


class ReflectorExchange(Exchange):
    timeout_reason = Reason.egress_timeout
    unreachable_reason = Reason.egress_unreachable

    def __init__(self, ctx: PathContext) -> None:
        found, src = endpoint(ctx), ctx.inner_src
        assert found is not None and src is not None and ctx.expected_egress is not None
        self._ports = source_ports()
        self.sport = self._ports.acquire()
        super().__init__(NAME, (ClaimKind.udp, self.sport), ctx.settings.packets)
        self.src, (self.target, self.target_port) = src, found
        self.flow = UdpFlow(src, self.target, self.sport, self.target_port)
        self._ours, self._theirs = self.flow.src, self.flow.dst
        self.expected = ctx.expected_egress
        self.nonces: dict[bytes, int] = {}  # nonce -> sequence
        self.observed: dict[int, reflector.Observed] = {}

    def build(self, seq: int) -> bytes:
        nonce = os.urandom(reflector.NONCE_SIZE)
        self.nonces[nonce] = seq
        return self.flow.build(reflector.build_request(nonce))

    def quick(self, packet: bytes, at: float) -> bool:
        payload = self.flow.reply_payload(packet)
        if payload is None:
            return False
        nonce = bytes(payload[_NONCE_AT])
        seq = self.nonces.get(nonce)
        if seq is None or seq not in self.sent:
            return False
        try:
            observed = reflector.parse_response(payload, nonce)
        except reflector.ReflectorError:
            return False  # the full judgement says what is wrong with it
        if seq not in self.answered:
            self.observed[seq] = observed
        self.answer(seq, at)
        return True

    def judge(self, ip: IPPacket) -> tuple[int | None, Verdict]:
        verdict = judge_udp_reply(
            ip, src=self._theirs, dst=self._ours, their_port=self.target_port, our_port=self.sport
        )
        reply = verdict.reply
        if not verdict.ok or not isinstance(reply, Udp):
            return None, verdict
        seq = self.nonces.get(bytes(reply.payload[_NONCE_AT]))
        if seq is not None:
            try:
                reflector.parse_response(reply.payload, bytes(reply.payload[_NONCE_AT]))
            except reflector.ReflectorError:
                seq = None
        if seq is None:
            # A UDP answer on our flow that is not a reflector response to any of our nonces: forged or corrupted.
            return None, Verdict(Mismatch.wrong_payload, verdict.ttl, verdict.source, reply)
        return seq, verdict

    def accepted(self, seq: int, verdict: Verdict) -> None:
        assert isinstance(verdict.reply, Udp)
        nonce = bytes(verdict.reply.payload[_NONCE_AT])
        self.observed[seq] = reflector.parse_response(verdict.reply.payload, nonce)

    def verdict(self) -> tuple[Reason | None, str | None]:
        reason, detail = super().verdict()
        wrong = next((o for o in self.observed.values() if o.address != self.expected), None)
        if wrong is not None and self.failure is None:
            return Reason.egress_mismatch, f"reflector saw {wrong.address}, expected {self.expected}"
        if reason is None and self.observed:
            seen = next(iter(self.observed.values()))
            return None, f"egress {seen.address} port {seen.port}"
        return reason, detail

    def close(self) -> None:
        self._ports.release(self.sport)


def prepare(ctx: PathContext) -> Exchange:
    return ReflectorExchange(ctx)
