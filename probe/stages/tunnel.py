"""Stage 2, tunnel: echo to the in-tunnel gateway. Proves decryption and local delivery on the relay."""

from __future__ import annotations

from probe.results import Reason, StageName
from probe.stages.base import Exchange, PathContext
from probe.stages.echo import EchoExchange

NAME = StageName.tunnel
AFTER = None


def applies(ctx: PathContext) -> bool:
    return ctx.inner_src is not None


def prepare(ctx: PathContext) -> Exchange:
    target = ctx.settings.gateway if ctx.family == 4 else ctx.settings.gateway_v6
    return EchoExchange(
        ctx, NAME, target, timeout_reason=Reason.tunnel_timeout, unreachable_reason=Reason.tunnel_unreachable
    )
