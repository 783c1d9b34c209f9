"""Judging a verification: observations in, one verdict per server out. Pure: no I/O, no clock, no probing.

Theory of operation. A source (probe/verify/source.py) hands in observations: one server's result from one vantage
point in one round, every path of the server (main port and one port of every entry range, both families). Each
round is classified on its own (`classify`):

- `passed`: every path passed every stage;
- `failed`: a path failed for the relay's reason while the vantage point's own reach held (its control check, or
  no check was needed). A round is *definite* when a failed path got a definite answer: an ICMP error
  (`port_unreachable`, `*_unreachable`, `mtu_too_big`), a wrong egress address or a wrong reply. Loss cannot
  make those; it can only make timeouts;
- `unjudged`: nothing can be said of the relay: the vantage point could not send (`socket_error`), wgprobe hit a
  bug (`internal_error`), or a path failed while the vantage point's control check failed too.

Per vantage point, over at most `rounds` rounds (default 3), a server

- fails at the first definite round, or when `fail_rounds` rounds failed (default 2: one lost-packet accident is
  not an outage; a stage already passes on one good answer of several, so a round fails only when no answer came);
- passes when `rounds - fail_rounds + 1` rounds passed (default 2: then fail_rounds failures can no longer come);
- is inconclusive when neither can happen any more (unjudged rounds used up the rounds, or 1 failed, 1 passed and
  1 unjudged).

Each verdict is final the moment it is certain, so a failing server is reported after its second failed round (or
its first definite one) and a healthy one after its second good round, not after the last.

Across vantage points (the aggregator mode: several agents), the aggregator's quorum rule: the server fails when a
quorum of the vantage points that reached a verdict (passed or failed) failed it, passes when every one of them
passed it, and is inconclusive otherwise (no vantage point could judge, or they disagree without a quorum).
Direct mode has one vantage point, so its verdict is the server's.

When the vantage points are asked (the aggregator mode: `expect`), a verdict also needs a quorum of those asked to
have reached one: until then an agent that has not answered is an unfinished vote, so the first agent's two good
rounds do not pass a server the others have yet to see. An agent that will not answer (gone offline, or the
verification's time is up: `give_up`) turns its unfinished vote into an inconclusive one; when too few are left to
make a quorum of those asked, the server is inconclusive, never passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from probe.results import NOT_THE_RELAYS, PathResult, Reason, ServerResult, StageName

# Answers that say "no" outright. Loss can only remove answers, so it never produces one of these.
DEFINITE: frozenset[Reason] = frozenset(
    {
        Reason.port_unreachable,
        Reason.tunnel_unreachable,
        Reason.forward_unreachable,
        Reason.egress_unreachable,
        Reason.egress_mismatch,
        Reason.mtu_too_big,
        Reason.reply_invalid,
    }
)

Quorum = int | Literal["majority"]


def quorum_size(quorum: Quorum, eligible: int) -> int:
    """Failing votes that fail a server; the aggregator's rule (probe/aggregator/health.py, which a test compares:
    importing it here would load the whole aggregator into every `probe verify`)."""
    return eligible // 2 + 1 if quorum == "majority" else quorum


class Outcome(StrEnum):
    passed = "passed"
    failed = "failed"
    unjudged = "unjudged"


class Verdict(StrEnum):
    passed = "passed"
    failed = "failed"
    inconclusive = "inconclusive"
    unfinished = "unfinished"  # not certain yet; in a report: the run stopped before it was

    @property
    def certain(self) -> bool:
        return self is not Verdict.unfinished


@dataclass(frozen=True, slots=True)
class Rules:
    rounds: int = 3
    fail_rounds: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.fail_rounds <= self.rounds:
            raise ValueError(f"fail_rounds must be 1..rounds ({self.rounds}), got {self.fail_rounds}")

    @property
    def pass_rounds(self) -> int:
        """Passed rounds that make a pass certain: after them, `fail_rounds` failures can no longer come."""
        return self.rounds - self.fail_rounds + 1

    def describe(self) -> str:
        return (
            f"at most {self.rounds} rounds; fails on {self.fail_rounds} failed rounds or one definite answer, "
            f"passes on {self.pass_rounds} good rounds"
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """One server's result from one vantage point in one round."""

    vantage: str  # the agent that probed (direct mode: this host's agent name)
    round: int  # 1-based, per server and vantage point, within one verification pass
    result: ServerResult
    # The vantage point's own reach (through no relay) around the time of the result; None: not checked (a passed
    # round needs no check: a path that went out through the relay's NAT and back proves the relay forwards).
    control_ok: bool | None = None
    control_detail: str | None = None


@dataclass(frozen=True, slots=True)
class FailedPath:
    family: str
    port: int
    stage: StageName | None
    reason: Reason | None
    detail: str | None = None
    evidence: str | None = None

    def __str__(self) -> str:
        where = f"{self.family} :{self.port}"
        return f"{where} {self.stage} {self.reason}" if self.stage else f"{where} {self.reason}"

    @classmethod
    def of(cls, path: PathResult) -> FailedPath:
        failed = path.failed_stage
        return cls(
            family=path.family,
            port=path.port,
            stage=failed.name if failed else None,
            reason=path.reason,
            detail=failed.detail if failed else None,
            evidence=path.evidence,
        )


@dataclass(frozen=True, slots=True)
class Round:
    """One classified round."""

    vantage: str
    number: int
    started_at: datetime
    outcome: Outcome
    definite: bool
    reason: Reason | None  # that of the failed path that failed at the earliest stage
    stage: StageName | None
    paths: int
    failed: tuple[FailedPath, ...]  # paths failed for the relay's reasons
    unjudged: tuple[FailedPath, ...]  # paths failed for reasons not the relay's
    control_ok: bool | None
    detail: str | None  # why a round is unjudged
    evidence: tuple[str, ...]
    forward_rtts: tuple[float, ...]  # the forward stage's round trip on each passed path (for the baseline)

    @property
    def passed_paths(self) -> int:
        return self.paths - len(self.failed) - len(self.unjudged)


def classify(observation: Observation) -> Round:
    result = observation.result
    failed: list[FailedPath] = []
    unjudged: list[FailedPath] = []
    rtts: list[float] = []
    for path in result.paths:
        if path.ok:
            rtts.extend(stage.seconds for stage in path.stages if stage.name is StageName.forward and stage.ok)
        elif path.reason is None or path.reason in NOT_THE_RELAYS:
            unjudged.append(FailedPath.of(path))
        else:
            failed.append(FailedPath.of(path))
    worst = _earliest(failed)
    detail = None
    if failed and observation.control_ok is False:
        outcome = Outcome.unjudged
        detail = "this vantage point's own reach failed too" + (
            f" ({observation.control_detail})" if observation.control_detail else ""
        )
    elif failed:
        outcome = Outcome.failed
    elif unjudged:
        outcome = Outcome.unjudged
        reasons = sorted({str(p.reason) for p in unjudged})
        detail = f"{len(unjudged)} of {len(result.paths)} paths not judged ({', '.join(reasons)})"
        first = next((p.detail for p in unjudged if p.detail), None)
        detail += f": {first}" if first else ""
    elif not result.paths:
        outcome, detail = Outcome.unjudged, "no path probed"
    else:
        outcome = Outcome.passed
    evidence = [p.evidence for p in (*failed, *unjudged) if p.evidence]
    if result.evidence:
        evidence.append(result.evidence)
    return Round(
        vantage=observation.vantage,
        number=observation.round,
        started_at=result.started_at,
        outcome=outcome,
        definite=outcome is Outcome.failed and any(p.reason in DEFINITE for p in failed),
        reason=worst.reason if worst and outcome is Outcome.failed else None,
        stage=worst.stage if worst and outcome is Outcome.failed else None,
        paths=len(result.paths),
        failed=tuple(failed),
        unjudged=tuple(unjudged),
        control_ok=observation.control_ok,
        detail=detail,
        evidence=tuple(evidence),
        forward_rtts=tuple(rtts),
    )


def _earliest(paths: Iterable[FailedPath]) -> FailedPath | None:
    """The path that failed at the earliest stage (the first such on a tie), as a server's reason is chosen."""
    return min(paths, key=lambda p: p.stage.rank if p.stage else len(StageName), default=None)


def vantage_verdict(rounds: Sequence[Round], rules: Rules) -> Verdict:
    """One vantage point's verdict on one server from its rounds so far (see the module's rules)."""
    failed = sum(1 for r in rounds if r.outcome is Outcome.failed)
    passed = sum(1 for r in rounds if r.outcome is Outcome.passed)
    if any(r.definite for r in rounds) or failed >= rules.fail_rounds:
        return Verdict.failed
    if passed >= rules.pass_rounds:
        return Verdict.passed
    left = max(0, rules.rounds - len(rounds))
    if failed + left < rules.fail_rounds and passed + left < rules.pass_rounds:
        return Verdict.inconclusive
    return Verdict.unfinished


def combine(verdicts: Iterable[Verdict], quorum: Quorum = "majority", *, asked: int | None = None) -> Verdict:
    """The server's verdict from its vantage points' verdicts (the aggregator's quorum rule). With `asked` (the
    number of vantage points asked), a pass or a failure also needs a quorum of those asked to have judged."""
    votes = list(verdicts)
    failing = votes.count(Verdict.failed)
    eligible = failing + votes.count(Verdict.passed)
    needed = quorum_size(quorum, asked) if asked else 0
    # Certain before the rest are done: the failing votes already make a quorum of every vote that could come.
    if votes and failing >= max(needed, quorum_size(quorum, len(votes) - votes.count(Verdict.inconclusive))):
        return Verdict.failed
    if Verdict.unfinished in votes or not votes:
        return Verdict.unfinished
    if eligible == 0 or eligible < needed:
        return Verdict.inconclusive
    if failing >= quorum_size(quorum, eligible):
        return Verdict.failed
    return Verdict.passed if failing == 0 else Verdict.inconclusive


@dataclass
class ServerJudgement:
    """Everything seen of one server in one verification pass, and its verdict."""

    server: str
    rules: Rules
    group: Literal["verified", "control"] = "verified"
    quorum: Quorum = "majority"
    rounds: list[Round] = field(default_factory=list)
    decided_at: datetime | None = None  # when the verdict became certain (the time of the deciding result)
    # Computed once per round booked: a pass asks every judgement for its verdict at every result that comes in.
    verdict: Verdict = field(default=Verdict.unfinished, init=False)
    expected: tuple[str, ...] = ()  # the vantage points asked (aggregator mode); none: whoever answers counts
    gone: dict[str, str] = field(default_factory=dict)  # vantage point -> why no more rounds will come from it
    closed: str | None = None  # why no more rounds will come from anyone (the pass's time is up)

    def add(self, observation: Observation) -> Round:
        """Book a round. A certain verdict can still turn to failed when rounds go on past it (the baseline takes
        every round): a definite answer is a failure whenever it comes. `decided_at` follows the verdict."""
        classified = classify(observation)
        self.rounds.append(classified)
        self._judge(observation.result.started_at)
        return classified

    def expect(self, vantages: Sequence[str], quorum: Quorum | None = None) -> None:
        """The vantage points asked, and the quorum to judge them by: each is an unfinished vote until it answers."""
        self.expected = tuple(dict.fromkeys(vantages))
        if quorum is not None:
            self.quorum = quorum
        self.verdict = self._verdict()

    def give_up(self, vantage: str | None, why: str, at: datetime) -> None:
        """No more rounds will come from `vantage` (None: from anyone): what it has not decided is inconclusive."""
        if vantage is None:
            self.closed = self.closed or why
        else:
            self.gone.setdefault(vantage, why)
        self._judge(at)

    def _judge(self, at: datetime) -> None:
        before = self.verdict
        self.verdict = self._verdict()
        if self.verdict.certain and self.verdict is not before:
            self.decided_at = at

    def _verdict(self) -> Verdict:
        votes = []
        for vantage in self.vantages:
            vote = vantage_verdict(self.of(vantage), self.rules)
            if vote is Verdict.unfinished and (self.closed is not None or vantage in self.gone):
                vote = Verdict.inconclusive
            votes.append(vote)
        if not votes and self.closed is not None:
            return Verdict.inconclusive
        return combine(votes, self.quorum, asked=len(self.vantages) if self.expected else None)

    def of(self, vantage: str) -> list[Round]:
        return [r for r in self.rounds if r.vantage == vantage]

    @property
    def vantages(self) -> list[str]:
        """The vantage points asked, then any other that answered, each once."""
        return list(dict.fromkeys([*self.expected, *(r.vantage for r in self.rounds)]))

    def wants_more(self, vantage: str, *, all_rounds: bool = False) -> bool:
        """Whether `vantage` should probe this server another round. `all_rounds`: until the rounds are used up,
        even when passing is certain (the baseline comparison wants every sample); never past a failure."""
        rounds = self.of(vantage)
        verdict = vantage_verdict(rounds, self.rules)
        if len(rounds) >= self.rules.rounds or verdict is Verdict.failed:
            return False
        return all_rounds or verdict is Verdict.unfinished

    def deciding(self) -> list[Round]:
        """The rounds the verdict rests on: failed ones for a failure, else all."""
        if self.verdict is Verdict.failed:
            return [r for r in self.rounds if r.outcome is Outcome.failed]
        return list(self.rounds)

    @property
    def reason(self) -> Reason | None:
        worst = self._worst()
        return worst.reason if worst else None

    @property
    def stage(self) -> StageName | None:
        worst = self._worst()
        return worst.stage if worst else None

    def _worst(self) -> FailedPath | None:
        if self.verdict is not Verdict.failed:
            return None
        return _earliest(p for r in self.deciding() for p in r.failed)

    def failed_paths(self) -> list[FailedPath]:
        """Distinct failed paths over the deciding rounds, by (family, port, stage, reason)."""
        seen: dict[tuple[str, int, str, str], FailedPath] = {}
        for r in self.deciding():
            for p in r.failed:
                seen.setdefault((p.family, p.port, str(p.stage), str(p.reason)), p)
        return list(seen.values())

    def evidence(self) -> list[str]:
        return list(dict.fromkeys(e for r in self.rounds for e in r.evidence))

    def summary(self) -> str:
        """One line: how the verdict came about."""
        counts = {o: sum(1 for r in self.rounds if r.outcome is o) for o in Outcome}
        rounds = f"{len(self.rounds)} round(s): {counts[Outcome.passed]} passed, {counts[Outcome.failed]} failed"
        if counts[Outcome.unjudged]:
            rounds += f", {counts[Outcome.unjudged]} not judged"
        verdict = self.verdict
        if verdict is Verdict.failed:
            definite = next((r for r in self.rounds if r.definite), None)
            paths = max((len(r.failed) for r in self.deciding()), default=0)
            total = max((r.paths for r in self.deciding()), default=0)
            how = "a definite answer" if definite else f"{counts[Outcome.failed]} failed rounds"
            return f"{self.stage}: {self.reason} on {paths} of {total} paths ({how}; {rounds})"
        if verdict is Verdict.inconclusive:
            return f"could not judge ({rounds})" + (f": {why}" if (why := self._why_not()) else "")
        return rounds

    def _why_not(self) -> str | None:
        """Why an inconclusive verdict is one: the vantage points that did not answer, or that disagree without a
        quorum, else the last round's why."""
        votes = {v: vantage_verdict(self.of(v), self.rules) for v in self.vantages}
        silent = [v for v, vote in votes.items() if vote is Verdict.unfinished]
        why = [f"{v}: {self.gone[v]}" for v in silent if v in self.gone]
        rest = [v for v in silent if v not in self.gone]
        if self.closed is not None and not votes:
            why.append(self.closed)
        elif self.closed is not None and rest:
            why.append(f"{', '.join(rest)}: {self.closed}")
        failed = [v for v, vote in votes.items() if vote is Verdict.failed]
        passed = [v for v, vote in votes.items() if vote is Verdict.passed]
        if failed and passed:
            why.append(f"failed from {', '.join(failed)} but passed from {', '.join(passed)}: no quorum")
        if why:
            return "; ".join(why)
        return next((r.detail for r in reversed(self.rounds) if r.detail), None)
