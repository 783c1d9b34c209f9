"""The direct source: this host probes, with its agent config, every path of every server, round after round.

Every round of a server is a whole `probe server` of it: the main port and one port of every entry range, on both
families. Each round takes the next step of the port rotation, so successive rounds and passes walk other ports of
each range, and a verification never covers only a rotation's share of the ranges (the agent's schedule does that,
spread over a minute; a verification cannot wait for it).

A round in which a path failed for what would be the relay's reason carries a control check (probe/control.py:
the reflector and the forward target asked directly, through no relay) taken after the round began, shared by every
such round of that moment: when this host's own network is down, its failures say nothing of the relays and the
verification is inconclusive, never failed. A passed round needs no check, nor one whose paths could not even be
sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from probe.config import ProbeConfig
from probe.control import control_check
from probe.inventory import Inventory, Relay
from probe.messages import ControlCheck
from probe.results import blames_relay
from probe.runner import Prober, rotation_now
from probe.stages.base import Settings
from probe.verify.judge import Observation
from probe.verify.source import Accept

DEFAULT_CONCURRENCY = 16  # relays probed at once, as `probe sweep`
ControlCheckFn = Callable[[Settings], Awaitable[ControlCheck]]


class DirectSource:
    mode = "direct"

    def __init__(
        self,
        config: ProbeConfig,
        inventory: Inventory,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        rotation: int | None = None,
        control: ControlCheckFn = control_check,
        evidence: bool = True,
    ) -> None:
        self.agent = config.agent.name
        self.prober = Prober(config, inventory, evidence=evidence)
        self.concurrency = concurrency
        self._rotation = rotation_now() if rotation is None else rotation
        self._probed: dict[str, int] = {}  # rounds probed per relay, over every pass: where its rotation stands
        self._check = control
        self._control: asyncio.Future[ControlCheck] | None = None
        self._control_started = float("-inf")

    def vantage_points(self) -> list[str]:
        return [self.agent]

    def describe(self) -> str:
        return f"{self.agent} (this host)"

    async def run(self, relays: Sequence[Relay], accept: Accept) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def rounds(relay: Relay) -> None:
            number, more = 0, True
            while more:
                number += 1
                async with gate:  # per round, so every relay gets its next round in turn
                    started = time.monotonic()
                    result = await self.prober.probe_relay(relay, rotation=self._next_rotation(relay.name))
                check = await self._control_since(started) if blames_relay(result) else None
                more = accept(
                    Observation(
                        vantage=self.agent,
                        round=number,
                        result=result,
                        control_ok=None if check is None else check.ok,
                        control_detail=None if check is None else check.detail,
                    )
                )

        async with asyncio.TaskGroup() as group:
            for relay in relays:
                group.create_task(rounds(relay))

    async def close(self) -> None:
        if self._control is not None and not self._control.done():
            self._control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control

    def _next_rotation(self, relay: str) -> int:
        done = self._probed.get(relay, 0)
        self._probed[relay] = done + 1
        return self._rotation + done

    async def _control_since(self, started: float) -> ControlCheck:
        """A control check begun no earlier than `started`: the one in flight or just done if it qualifies, else a
        new one. Shielded: one caller cancelled does not cancel the check for the others."""
        if self._control is None or self._control_started < started:
            self._control_started = time.monotonic()
            self._control = asyncio.ensure_future(self._check(self.prober.settings))
        return await asyncio.shield(self._control)
