"""One verification pass: a source's observations judged as they come, each verdict reported the moment it is
certain, and the pass ended the moment the whole pass's verdict is.

The pass's verdict is certain when one deployed server failed (the rollout stops there whatever the others say;
`keep_going` waits for every server instead, to list all that fail), or when every deployed server's verdict is
certain and no control group is measured (a control group is probed for all its rounds: the comparison wants every
sample). Servers still unfinished when a pass ends at a failure are reported as such.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from probe.inventory import Relay
from probe.verify.judge import Observation, Quorum, Rules, ServerJudgement, Verdict
from probe.verify.source import Source

Decided = Callable[[ServerJudgement], None]


@dataclass
class PassResult:
    number: int  # 1-based
    started_at: datetime
    finished_at: datetime
    judgements: dict[str, ServerJudgement]
    stopped_early: bool  # ended at a failure while servers were still unfinished

    def group(self, name: str) -> list[ServerJudgement]:
        return [j for j in self.judgements.values() if j.group == name]

    @property
    def verdict(self) -> Verdict:
        """The deployed servers' verdict: failed if one failed, passed if all passed, else inconclusive."""
        return overall(self.group("verified"))


def interleave(first: Sequence[Relay], second: Sequence[Relay]) -> list[Relay]:
    """Both groups spread evenly over one list, so that under a concurrency cap neither is probed while this host is
    busier than when the other was (the baseline compares their round trips)."""
    spread = [(n / len(first), 0, relay) for n, relay in enumerate(first)]
    spread += [(n / len(second), 1, relay) for n, relay in enumerate(second)]
    return [relay for _, _, relay in sorted(spread, key=lambda item: item[:2])]


def overall(judgements: Sequence[ServerJudgement]) -> Verdict:
    verdicts = [j.verdict for j in judgements]
    if Verdict.failed in verdicts:
        return Verdict.failed
    if verdicts and all(v is Verdict.passed for v in verdicts):
        return Verdict.passed
    return Verdict.inconclusive


class Verifier:
    def __init__(
        self,
        source: Source,
        rules: Rules,
        *,
        quorum: Quorum = "majority",
        keep_going: bool = False,
        on_decided: Decided | None = None,
    ) -> None:
        self.source = source
        self.rules = rules
        self.quorum = quorum
        self.keep_going = keep_going
        self.on_decided = on_decided
        self.passes = 0
        self.interrupted = False  # SIGINT/SIGTERM: the pass in flight ends now, no other starts
        self._sink: _PassSink | None = None

    def interrupt(self) -> None:
        """End the pass in flight at once (what is judged stays judged, the rest is left unfinished)."""
        self.interrupted = True
        if self._sink is not None:
            self._sink.done.set()

    async def run_pass(
        self, verified: Sequence[Relay], control: Sequence[Relay] = (), *, all_rounds: bool = False
    ) -> PassResult:
        """Judge `verified` (and measure `control`) once. `all_rounds`: every server gets every round, as the
        baseline comparison needs; a failing deployed server still ends the pass."""
        self.passes += 1
        started_at = datetime.now(UTC)
        judgements = {r.name: ServerJudgement(r.name, self.rules, "verified", self.quorum) for r in verified}
        judgements |= {r.name: ServerJudgement(r.name, self.rules, "control", self.quorum) for r in control}
        sink = _PassSink(self, judgements, has_control=bool(control), all_rounds=all_rounds)
        self._sink = sink
        if self.interrupted:
            sink.done.set()
        try:
            stopped = await self._until(self.source.run(interleave(verified, control), sink), sink.done)
        finally:
            self._sink = None
        unfinished = any(not j.verdict.certain for j in judgements.values() if j.group == "verified")
        return PassResult(
            number=self.passes,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            judgements=judgements,
            stopped_early=stopped and unfinished,
        )

    def certain(self, judgements: dict[str, ServerJudgement], *, has_control: bool) -> bool:
        """Whether the pass's verdict is certain (see the module's docstring)."""
        verified = [j for j in judgements.values() if j.group == "verified"]
        if not self.keep_going and any(j.verdict is Verdict.failed for j in verified):
            return True
        return not has_control and all(j.verdict.certain for j in verified)

    @staticmethod
    async def _until(work: Coroutine[Any, Any, None], done: asyncio.Event) -> bool:
        """Run `work` until it returns or `done` is set; True when `done` cut it short. An error of `work` is raised."""
        runner = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(done.wait())
        try:
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finished = runner.done()
        finally:
            for task in (runner, waiter):
                task.cancel()
            await asyncio.gather(runner, waiter, return_exceptions=True)  # both have ended when we go on
        if finished:
            runner.result()  # its own error, if it failed, goes up from here
        return not finished


class _PassSink:
    """One pass's `accept` (probe/verify/source.py, Sink): observations judged as they come, verdicts reported the
    moment they are certain, and `done` set the moment the pass's verdict is."""

    def __init__(
        self, verifier: Verifier, judgements: dict[str, ServerJudgement], *, has_control: bool, all_rounds: bool
    ) -> None:
        self.verifier = verifier
        self.judgements = judgements
        self.has_control = has_control
        self.all_rounds = all_rounds
        self.done = asyncio.Event()

    def __call__(self, observation: Observation) -> bool:
        judgement = self.judgements.get(observation.result.server)
        if judgement is None or self.done.is_set():
            return False  # not asked for, or the pass is over
        before = judgement.verdict
        judgement.add(observation)
        self._settled(judgement, before)
        if self.done.is_set():
            return False
        return judgement.wants_more(observation.vantage, all_rounds=self.all_rounds)

    def expect(self, vantages: Sequence[str], quorum: Quorum | None = None) -> None:
        for judgement in self.judgements.values():
            judgement.expect(vantages, quorum)

    def give_up(self, vantage: str | None, why: str) -> None:
        at = datetime.now(UTC)
        for judgement in self.judgements.values():
            if self.done.is_set():
                return
            before = judgement.verdict
            judgement.give_up(vantage, why, at)
            self._settled(judgement, before)

    def _settled(self, judgement: ServerJudgement, before: Verdict) -> None:
        on_decided = self.verifier.on_decided
        if judgement.verdict.certain and judgement.verdict is not before and on_decided is not None:
            on_decided(judgement)
        if self.verifier.certain(self.judgements, has_control=self.has_control):
            self.done.set()
