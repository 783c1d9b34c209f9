"""Stage 1, handshake: initiation/response on the path's entry port. It opens the tunnel the later stages use."""

from __future__ import annotations

import time

from probe.results import Reason, StageName, StageResult
from probe.stages.base import PathContext
from probe.tunnel import CookieFailed, HandshakeTimeout, PortUnreachable, Tunnel, TunnelError

NAME = StageName.handshake


async def run(ctx: PathContext) -> StageResult:
    s = ctx.settings
    started = time.perf_counter()
    try:
        ctx.tunnel = await Tunnel.open(
            ctx.identity,
            ctx.relay_key,
            ctx.entry,
            ctx.port,
            timeout=s.handshake_timeout,
            attempts=s.handshake_attempts,
            cookie_state=ctx.cookie_state,
            record=ctx.record,
            netns=s.netns,
        )
    except TunnelError as exc:
        reason = {
            PortUnreachable: Reason.port_unreachable,
            HandshakeTimeout: Reason.handshake_timeout,
            CookieFailed: Reason.cookie_failed,
        }.get(type(exc), Reason.socket_error)
        waited = time.perf_counter() - started
        return StageResult(name=NAME, ok=False, reason=reason, seconds=round(waited, 6), loss=1.0, detail=str(exc))
    tunnel = ctx.tunnel
    detail = f"{tunnel.cookies} cookie repl(ies) before acceptance" if tunnel.cookies else None
    return StageResult(
        name=NAME,
        ok=True,
        seconds=round(tunnel.handshake_seconds, 6),
        loss=round((tunnel.initiations - 1) / tunnel.initiations, 4),
        sent=tunnel.initiations,
        received=1,
        detail=detail,
    )
