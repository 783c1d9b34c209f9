"""A whole `probe verify`: one pass, or passes every `every` seconds over a soak window, with the baseline
comparison when asked; the overall verdict and its exit code.

Soak. Passes start at 0, every, 2*every, ... seconds into the window and a last one at its end, so the window is
covered to its last second (a pass that runs long delays the next; missed slots are skipped, not run in a burst).
The soak ends at the first pass in which a deployed server fails: that server went down between the end of its
last good pass and that pass, and both times are reported. A pass that could not judge (this host's own network
was down) does not end the soak, since a later failure still decides it, but the soak cannot pass any more.

The baseline comparison runs over every judged round of every pass, at the end of the window (a comparison of a
few early samples would be noise; a relay that goes down is caught by the passes themselves, at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from probe.errors import EXIT_FAILED, EXIT_OK, EXIT_UNJUDGED
from probe.inventory import Relay
from probe.verify.baseline import Comparison, GroupStats, Thresholds, compare
from probe.verify.judge import Verdict
from probe.verify.verifier import PassResult, Verifier

MAX_LISTED_PASSES = 20  # passes that could not judge, listed by time in the report (the rest are counted)
PassDone = Callable[[PassResult], None]


@dataclass(frozen=True, slots=True)
class Soak:
    duration: float  # seconds
    every: float  # seconds between the starts of passes


@dataclass
class History:
    """One server over the passes of a session."""

    passes: int = 0
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    last_ok_at: datetime | None = None  # when the last round of its last passed pass began
    failed_at: datetime | None = None  # when the round that made its failure certain began


@dataclass
class SessionResult:
    started_at: datetime
    finished_at: datetime
    last: PassResult  # the deciding pass: the one that failed, else the last
    passes: int
    histories: dict[str, History]
    unjudged_passes: list[datetime]  # start times of passes that could not judge (the first MAX_LISTED_PASSES)
    unjudged_count: int
    soak: Soak | None
    ended_early: bool  # a soak that stopped at a failure before its window ended
    control_group: list[str]
    canary_stats: GroupStats | None
    control_stats: GroupStats | None
    comparison: Comparison | None
    interrupted: bool = False  # stopped by SIGINT/SIGTERM: a failure seen still fails, nothing else can pass

    @property
    def verdict(self) -> Verdict:
        if self.last.verdict is Verdict.failed or (self.comparison and self.comparison.verdict is Verdict.failed):
            return Verdict.failed
        if self.interrupted or self.unjudged_count or self.last.verdict is not Verdict.passed:
            return Verdict.inconclusive
        if self.comparison is not None and self.comparison.verdict is not Verdict.passed:
            return Verdict.inconclusive
        return Verdict.passed

    @property
    def exit_code(self) -> int:
        return {Verdict.passed: EXIT_OK, Verdict.failed: EXIT_FAILED}.get(self.verdict, EXIT_UNJUDGED)


@dataclass
class Session:
    verifier: Verifier
    verified: Sequence[Relay]
    control: Sequence[Relay] = ()
    soak: Soak | None = None
    thresholds: Thresholds | None = None  # None: no baseline comparison
    on_pass: PassDone | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    histories: dict[str, History] = field(default_factory=dict)

    async def run(self) -> SessionResult:
        started_at = datetime.now(UTC)
        canary, control = GroupStats(), GroupStats()
        unjudged: list[datetime] = []
        unjudged_count = 0
        start = self.clock()
        slot, offset = 0, 0.0
        while True:
            wait = offset - (self.clock() - start)
            if wait > 0:
                await self._pause(wait)
            began = self.clock() - start
            result = await self.verifier.run_pass(self.verified, self.control, all_rounds=self.thresholds is not None)
            self._book(result)
            canary.add(r for j in result.group("verified") for r in j.rounds)
            control.add(r for j in result.group("control") for r in j.rounds)
            if result.verdict is Verdict.inconclusive:
                unjudged_count += 1
                if len(unjudged) < MAX_LISTED_PASSES:
                    unjudged.append(result.started_at)
            if self.on_pass is not None:
                self.on_pass(result)
            if result.verdict is Verdict.failed or self.soak is None or began >= self.soak.duration:
                break
            if self.verifier.interrupted:
                break
            elapsed = self.clock() - start
            while offset <= elapsed and offset < self.soak.duration:  # the next slot not already past
                slot += 1
                offset = min(slot * self.soak.every, self.soak.duration)
        comparison = None
        if self.thresholds is not None and result.verdict is not Verdict.failed and not self.verifier.interrupted:
            comparison = compare(canary, control, self.thresholds)
        return SessionResult(
            started_at=started_at,
            finished_at=datetime.now(UTC),
            last=result,
            passes=result.number,
            histories=self.histories,
            unjudged_passes=unjudged,
            unjudged_count=unjudged_count,
            soak=self.soak,
            ended_early=self.soak is not None and result.verdict is Verdict.failed,
            control_group=[relay.name for relay in self.control],
            canary_stats=canary if self.thresholds is not None else None,
            control_stats=control if self.thresholds is not None else None,
            comparison=comparison,
            interrupted=self.verifier.interrupted,
        )

    async def _pause(self, seconds: float) -> None:
        """Wait for the next pass's slot; an interrupt cuts the wait short (it is checked every tenth of a second:
        the injected sleep is what tests drive, so the wait is made of its calls)."""
        end = self.clock() + seconds
        while not self.verifier.interrupted and (left := end - self.clock()) > 0:
            await self.sleep(min(left, 0.1))

    def _book(self, result: PassResult) -> None:
        for name, judgement in result.judgements.items():
            history = self.histories.setdefault(name, History())
            verdict = judgement.verdict
            if not verdict.certain:
                continue
            history.passes += 1
            if verdict is Verdict.passed:
                history.passed += 1
                history.last_ok_at = judgement.rounds[-1].started_at
            elif verdict is Verdict.failed:
                history.failed += 1
                if history.failed_at is None:
                    history.failed_at = judgement.decided_at
            else:
                history.inconclusive += 1
