"""Stage 5, mtu: a large echo (DF set) to the outside target. Small probes pass a relay whose path drops large
packets; customers then see stalled downloads. A black hole (timeout) and an explicit "too big" are told apart."""

from __future__ import annotations

from probe.results import Reason, StageName
from probe.stages.base import Exchange, PathContext
from probe.stages.echo import MtuExchange
from probe.stages.forward import applies as forward_applies
from probe.stages.forward import target

NAME = StageName.mtu
AFTER = StageName.forward  # a large packet through a NAT that forwards nothing says nothing about size


def applies(ctx: PathContext) -> bool:
    return forward_applies(ctx) and ctx.settings.mtu_probe_size > 0


def prepare(ctx: PathContext) -> Exchange:
    dst = target(ctx)
    assert dst is not None
    return MtuExchange(
        ctx,
        NAME,
        dst,
        timeout_reason=Reason.mtu_blackhole,
        unreachable_reason=Reason.forward_unreachable,
        size=ctx.settings.mtu_probe_size,
    )
