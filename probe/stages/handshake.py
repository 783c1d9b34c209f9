"""Stage 1, handshake: initiations on the path's entry port until one is answered. It returns the tunnel the
later stages use (None when it failed)."""

from __future__ import annotations

from probe.results import Reason, StageName, StageResult
from probe.stages.base import IN_FLIGHT_RTTS, MIN_IN_FLIGHT, PathContext
from probe.tunnel import CookieFailed, HandshakeTimeout, PortUnreachable, Tunnel, TunnelError
from probe.wireguard.attempts import HandshakeAttempts

NAME = StageName.handshake
_REASONS: dict[type[TunnelError], Reason] = {
    PortUnreachable: Reason.port_unreachable,
    HandshakeTimeout: Reason.handshake_timeout,
    CookieFailed: Reason.cookie_failed,
}


async def run(ctx: PathContext) -> tuple[StageResult, Tunnel | None]:
    s = ctx.settings
    started = ctx.clock()
    try:
        tunnel = await Tunnel.open(
            ctx.identity,
            ctx.relay_key,
            ctx.entry,
            ctx.port,
            timeout=s.handshake_timeout,
            attempts=s.handshake_attempts,
            first_gap=ctx.first_gap,
            cookie_state=ctx.cookie_state,
            record=ctx.record,
            netns=s.netns,
            clock=ctx.clock,
        )
    except TunnelError as exc:
        reason = _REASONS.get(type(exc), Reason.socket_error)
        return result(exc.attempts, reason, ctx.clock() - started, str(exc)), None
    detail = f"{tunnel.cookies} cookie repl(ies) before acceptance" if tunnel.cookies else None
    return result(tunnel.attempts, None, tunnel.handshake_seconds, detail), tunnel


def result(
    attempts: HandshakeAttempts | None, reason: Reason | None, seconds: float, detail: str | None
) -> StageResult:
    """The handshake's StageResult: initiations as `sent`, valid answers as `received`, the rest as `rejected`."""
    sent = received = rejected = 0
    loss = 1.0 if reason is not None else 0.0
    if attempts is not None:
        in_flight = max(IN_FLIGHT_RTTS * attempts.handshake_seconds(), MIN_IN_FLIGHT)
        now = max((p.answered_at or p.sent_at for p in attempts.pending), default=0.0)
        if reason is not None:
            in_flight, now = 0.0, float("inf")  # every initiation of a failed handshake was waited out
        sent, received = attempts.settled_counts(now, in_flight)
        loss = (1 - received / sent) if sent else loss
        rejected = attempts.rejected
        if rejected and reason is None:
            noise = f"{rejected} answer(s) did not authenticate"
            detail = f"{detail}; {noise}" if detail else noise
    return StageResult(
        name=NAME,
        ok=reason is None,
        reason=reason,
        seconds=round(seconds, 6),
        loss=round(loss, 4),
        sent=sent,
        received=received,
        detail=detail,
        judged=True,
        rejected=rejected,
    )
