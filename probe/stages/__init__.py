"""Probe stages, one module each with one signature: `async def run(ctx: PathContext) -> StageResult`.

`POST_HANDSHAKE` is the registry the runner uses, in verdict order; each entry says when it applies (a stage with
nothing to probe, such as egress without a configured reflector, is not run rather than reported as failed).
"""

from __future__ import annotations

from collections.abc import Callable

from probe.results import StageName
from probe.stages import egress, forward, handshake, mtu, tunnel
from probe.stages.base import PathContext, Settings, StageFn

__all__ = ["POST_HANDSHAKE", "PathContext", "Settings", "StageFn", "handshake"]

POST_HANDSHAKE: tuple[tuple[StageName, Callable[[PathContext], bool], StageFn], ...] = (
    (tunnel.NAME, tunnel.applies, tunnel.run),
    (forward.NAME, forward.applies, forward.run),
    (egress.NAME, egress.applies, egress.run),
    (mtu.NAME, mtu.applies, mtu.run),
)
