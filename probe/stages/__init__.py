"""Probe stages, one module each: `handshake.run(ctx)` returns its result and the tunnel; every later stage gives
`applies(ctx)`, `prepare(ctx) -> Exchange` (sans-I/O, see base.py) and `AFTER`, the stage whose failure leaves it
unjudged. `REGISTRY` lists them in verdict order; `probe.runner.run_stages(ctx, registry)` runs a registry.

A stage with nothing to probe (egress without a configured reflector) does not apply: it is not run rather than
reported as failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from probe.results import STAGE_ORDER, StageName, StageResult
from probe.stages import egress, forward, handshake, mtu, tunnel
from probe.stages.base import Exchange, PathContext, Settings
from probe.tunnel import Tunnel

__all__ = ["REGISTRY", "Exchange", "PathContext", "Registry", "Settings", "Stage"]

HandshakeFn = Callable[[PathContext], Awaitable[tuple[StageResult, Tunnel | None]]]


class Stage(NamedTuple):
    name: StageName
    applies: Callable[[PathContext], bool]
    prepare: Callable[[PathContext], Exchange]
    after: StageName | None  # if that stage failed, this one's failure says nothing of its own: not judged


class Registry(NamedTuple):
    handshake: HandshakeFn
    stages: tuple[Stage, ...]

    def replace(self, name: StageName, prepare: Callable[[PathContext], Exchange]) -> Registry:
        """The same registry with one stage's `prepare` swapped (tests use it to inject a broken stage)."""
        stages = tuple(Stage(s.name, s.applies, prepare, s.after) if s.name is name else s for s in self.stages)
        return Registry(self.handshake, stages)


_MODULES = {module.NAME: module for module in (tunnel, forward, egress, mtu)}
# In STAGE_ORDER, the one definition of the order verdicts read in (probe/results.py).
REGISTRY = Registry(
    handshake=handshake.run,
    stages=tuple(
        Stage(name, _MODULES[name].applies, _MODULES[name].prepare, _MODULES[name].AFTER)
        for name in STAGE_ORDER
        if name is not handshake.NAME
    ),
)
