"""Stage 3, forward: echo to the outside target through the relay's NAT — the failure handshakes cannot see."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext
from probe.stages.echo import echo_stage

NAME = StageName.forward


def target(ctx: PathContext) -> IPv4Address | IPv6Address | None:
    return ctx.settings.forward_target if ctx.family == 4 else ctx.settings.forward_target_v6


def applies(ctx: PathContext) -> bool:
    return ctx.inner_src is not None and target(ctx) is not None


async def run(ctx: PathContext) -> StageResult:
    dst = target(ctx)
    assert dst is not None
    return await echo_stage(
        ctx, NAME, dst, timeout_reason=Reason.forward_timeout, error_reason=Reason.forward_unreachable
    )
