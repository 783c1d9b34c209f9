"""ICMP echo through the tunnel, shared by the tunnel, forward and mtu stages."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address

from probe.packets import (
    EchoTemplate,
    IcmpError,
    IcmpErrorKind,
    IPPacket,
    Mismatch,
    Verdict,
    icmp_identifiers,
    judge_echo_reply,
    packed,
)
from probe.results import Reason, StageName
from probe.stages.base import ClaimKind, Exchange, PathContext

_NONCE = 8  # random bytes heading every echo payload: a reply must carry them back
_SEQUENCE = 2


class EchoExchange(Exchange):
    """Echo `target` from our tunnel address; `size` pads the whole IP packet to that many bytes (DF on IPv4)."""

    def __init__(
        self,
        ctx: PathContext,
        name: StageName,
        target: IPv4Address | IPv6Address,
        *,
        timeout_reason: Reason,
        unreachable_reason: Reason,
        size: int = 0,
    ) -> None:
        src = ctx.inner_src
        assert src is not None  # `applies` keeps stages without a tunnel address of the path's family out
        self._identifiers = icmp_identifiers()
        identifier = self._identifiers.acquire()
        super().__init__(name, (ClaimKind.echo, identifier), ctx.settings.packets)
        self.timeout_reason = timeout_reason
        self.unreachable_reason = unreachable_reason
        self.size = size
        header = (20 if src.version == 4 else 40) + 8
        pad = max(0, size - header - _NONCE - _SEQUENCE)
        self._ours, self._target = packed(src), packed(target)
        self.template = EchoTemplate(self._ours, self._target, identifier, os.urandom(_NONCE), pad=pad, df=size > 0)

    def build(self, seq: int) -> bytes:
        return self.template.build(seq)

    def _payload(self, seq: int) -> bytes | None:
        return self.template.payload(seq) if seq in self.sent else None

    def quick(self, packet: bytes, at: float) -> bool:
        # Almost every answer is exactly the reply we can predict: compare bytes, parse nothing. Anything else
        # (an error, a forgery, a corruption) gets the full judgement, which says what is wrong with it.
        seq = self.template.reply_sequence(packet)
        if seq is None or seq not in self.sent:
            return False
        self.answer(seq, at)
        return True

    def judge(self, ip: IPPacket) -> tuple[int | None, Verdict]:
        return judge_echo_reply(
            ip, src=self._target, dst=self._ours, identifier=self.template.identifier, payload_for=self._payload
        )

    def close(self) -> None:
        self._identifiers.release(self.template.identifier)


class MtuExchange(EchoExchange):
    def verdict(self) -> tuple[Reason | None, str | None]:
        # The large echo came back, but in fragments: a link between the target and us (most often the relay's
        # tunnel interface) carries less than the probe's size. That is a size finding, not a corrupt reply.
        reason, detail = super().verdict()
        fragments = [v for v in self.invalid if v.mismatch is Mismatch.fragmented]
        if reason is Reason.reply_invalid and fragments and len(fragments) == len(self.invalid):
            return Reason.mtu_too_big, (
                f"{len(self.invalid)} answer(s) came back fragmented: the path back carries less than {self.size} "
                "bytes whole"
            )
        return reason, detail

    def error_reason(self, error: IcmpError) -> Reason:
        # Only "packet too big" / "fragmentation needed" is about size; any other error is plain unreachability.
        return Reason.mtu_too_big if error.kind is IcmpErrorKind.packet_too_big else Reason.forward_unreachable
