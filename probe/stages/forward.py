"""Stage 3, forward: echo to the outside target through the relay's NAT — the failure handshakes cannot see."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from probe.results import Reason, StageName
from probe.stages.base import Exchange, PathContext
from probe.stages.echo import EchoExchange

NAME = StageName.forward
AFTER = StageName.tunnel  # nothing crosses the NAT if the tunnel itself does not carry traffic


def target(ctx: PathContext) -> IPv4Address | IPv6Address | None:
    return ctx.settings.forward_target if ctx.family == 4 else ctx.settings.forward_target_v6


def applies(ctx: PathContext) -> bool:
    return ctx.inner_src is not None and target(ctx) is not None


def prepare(ctx: PathContext) -> Exchange:
    dst = target(ctx)
    assert dst is not None
    return EchoExchange(
        ctx, NAME, dst, timeout_reason=Reason.forward_timeout, unreachable_reason=Reason.forward_unreachable
    )
