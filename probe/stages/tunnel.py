"""Stage 2, tunnel: echo to the in-tunnel gateway. Proves decryption and local delivery on the relay."""

from __future__ import annotations

from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext
from probe.stages.echo import echo_stage

NAME = StageName.tunnel


def applies(ctx: PathContext) -> bool:
    return ctx.inner_src is not None


async def run(ctx: PathContext) -> StageResult:
    target = ctx.settings.gateway if ctx.family == 4 else ctx.settings.gateway_v6
    return await echo_stage(ctx, NAME, target, timeout_reason=Reason.tunnel_timeout, error_reason=Reason.tunnel_timeout)
