"""Stage 5, mtu: a large echo (DF set) to the outside target. Small probes pass a relay whose path drops large
packets; customers then see stalled downloads. A black hole (timeout) and an explicit "too big" are told apart."""

from __future__ import annotations

from probe.packets import IcmpError, IcmpErrorKind
from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext
from probe.stages.echo import echo_stage
from probe.stages.forward import applies as forward_applies
from probe.stages.forward import target

NAME = StageName.mtu


def _error_reason(error: IcmpError) -> Reason:
    # Only "packet too big" / "fragmentation needed" is about size; any other error is plain unreachability.
    return Reason.mtu_too_big if error.kind is IcmpErrorKind.packet_too_big else Reason.forward_unreachable


def applies(ctx: PathContext) -> bool:
    return forward_applies(ctx) and ctx.settings.mtu_probe_size > 0


async def run(ctx: PathContext) -> StageResult:
    dst = target(ctx)
    assert dst is not None
    return await echo_stage(
        ctx,
        NAME,
        dst,
        timeout_reason=Reason.mtu_blackhole,
        error_reason=_error_reason,
        size=ctx.settings.mtu_probe_size,
    )
