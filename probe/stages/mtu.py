"""Stage 5, mtu: a large echo (DF set) to the outside target. Small probes pass a relay whose path drops large
packets; customers then see stalled downloads. A black hole (timeout) and an explicit "too big" are told apart."""

from __future__ import annotations

from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext
from probe.stages.echo import echo_stage
from probe.stages.forward import applies as forward_applies
from probe.stages.forward import target

NAME = StageName.mtu


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
        error_reason=Reason.mtu_too_big,
        size=ctx.settings.mtu_probe_size,
    )
