"""The report of a `probe verify`: what `--json` prints (one object) and what the summary and JUnit are made from.
Field names are a contract, as the result model's: add fields, never rename them.

Per server: its verdict and, when it failed, the reason and stage (the failed path that failed earliest in stage
order), how the verdict came about (`summary`), the rounds of the deciding pass with their failed paths, and the
evidence files (pcaps and result JSON) of its failed paths.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from probe.results import Reason, StageName
from probe.verify.baseline import GroupStats
from probe.verify.judge import DEFINITE, FailedPath, Outcome, Round, Rules, ServerJudgement, Verdict
from probe.verify.session import SessionResult

SCHEMA_VERSION = 1
Overall = Literal["verified", "failed", "inconclusive"]
OVERALL: dict[Verdict, Overall] = {
    Verdict.passed: "verified",
    Verdict.failed: "failed",
    Verdict.inconclusive: "inconclusive",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathReport(_Model):
    family: str
    port: int
    stage: StageName | None
    reason: Reason | None
    detail: str | None
    evidence: str | None


class RoundReport(_Model):
    vantage: str
    round: int
    started_at: datetime
    outcome: Outcome
    definite: bool  # failed with an answer loss cannot make (ICMP error, wrong egress, wrong reply)
    reason: Reason | None
    stage: StageName | None
    paths: int
    failed_paths: list[PathReport]
    unjudged_paths: list[PathReport]
    control_ok: bool | None  # this vantage point's own reach, checked when the round failed
    detail: str | None


class ServerReport(_Model):
    server: str
    group: Literal["verified", "control"]
    location: str | None
    verdict: Verdict  # passed, failed, inconclusive, or unfinished (the run stopped at another's failure)
    reason: Reason | None
    stage: StageName | None
    summary: str
    vantage_points: list[str]
    decided_at: datetime | None
    rounds: list[RoundReport]  # of the deciding pass
    failed_paths: list[PathReport]  # distinct, over the deciding rounds
    evidence: list[str]
    passes: int  # passes that reached a verdict on it (a soak has many)
    passes_failed: int
    passes_inconclusive: int
    last_ok_at: datetime | None
    failed_at: datetime | None


class RulesReport(_Model):
    rounds: int
    fail_rounds: int
    pass_rounds: int
    definite_reasons: list[Reason]


class SoakReport(_Model):
    duration_seconds: float
    every_seconds: float
    passes: int
    ended_early: bool  # stopped at a failure before the window ended
    unjudged_passes: list[datetime]  # start times of passes that could not judge (the first 20)
    unjudged_count: int


class GroupReport(_Model):
    servers: list[str]
    rounds: int
    paths: int
    passed_paths: int
    success_ratio: float | None
    median_rtt_seconds: float | None  # forward stage round trip on passed paths
    rtt_samples: int  # round trips measured (the median is taken over a uniform sample of at most 50,000)


class BaselineReport(_Model):
    verdict: Verdict  # passed, failed or inconclusive
    detail: str
    canary: GroupReport
    control: GroupReport
    success_drop: float | None
    rtt_increase_seconds: float | None
    max_success_drop: float
    max_rtt_increase_seconds: float


class VerifyReport(_Model):
    schema_version: int = SCHEMA_VERSION
    verdict: Overall
    exit_code: int
    summary: str
    mode: str
    vantage_points: list[str]
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    rules: RulesReport
    servers: list[ServerReport]
    soak: SoakReport | None
    baseline: BaselineReport | None
    interrupted: bool = False  # stopped by SIGINT/SIGTERM before its end: never a pass


def _path(path: FailedPath) -> PathReport:
    return PathReport(
        family=path.family,
        port=path.port,
        stage=path.stage,
        reason=path.reason,
        detail=path.detail,
        evidence=path.evidence,
    )


def _round(r: Round) -> RoundReport:
    return RoundReport(
        vantage=r.vantage,
        round=r.number,
        started_at=r.started_at,
        outcome=r.outcome,
        definite=r.definite,
        reason=r.reason,
        stage=r.stage,
        paths=r.paths,
        failed_paths=[_path(p) for p in r.failed],
        unjudged_paths=[_path(p) for p in r.unjudged],
        control_ok=r.control_ok,
        detail=r.detail,
    )


def server_report(judgement: ServerJudgement, outcome: SessionResult, locations: dict[str, str | None]) -> ServerReport:
    history = outcome.histories.get(judgement.server)
    return ServerReport(
        server=judgement.server,
        group=judgement.group,
        location=locations.get(judgement.server),
        verdict=judgement.verdict,
        reason=judgement.reason,
        stage=judgement.stage,
        summary=judgement.summary(),
        vantage_points=judgement.vantages,
        decided_at=judgement.decided_at,
        rounds=[_round(r) for r in judgement.rounds],
        failed_paths=[_path(p) for p in judgement.failed_paths()],
        evidence=judgement.evidence(),
        passes=history.passes if history else 0,
        passes_failed=history.failed if history else 0,
        passes_inconclusive=history.inconclusive if history else 0,
        last_ok_at=history.last_ok_at if history else None,
        failed_at=history.failed_at if history else None,
    )


def _group(stats: GroupStats, servers: list[str]) -> GroupReport:
    median = stats.median_rtt
    return GroupReport(
        servers=servers,
        rounds=stats.rounds,
        paths=stats.paths,
        passed_paths=stats.passed,
        success_ratio=None if stats.success_ratio is None else round(stats.success_ratio, 6),
        median_rtt_seconds=None if median is None else round(median, 6),
        rtt_samples=stats.seen,
    )


def build_report(
    outcome: SessionResult,
    *,
    rules: Rules,
    mode: str,
    vantage_points: list[str],
    locations: dict[str, str | None],
    summary: str,
    max_rtt_increase: float | None = None,
    max_success_drop: float | None = None,
) -> VerifyReport:
    servers = [server_report(j, outcome, locations) for j in outcome.last.judgements.values()]
    soak = None
    if outcome.soak is not None:
        soak = SoakReport(
            duration_seconds=outcome.soak.duration,
            every_seconds=outcome.soak.every,
            passes=outcome.passes,
            ended_early=outcome.ended_early,
            unjudged_passes=outcome.unjudged_passes,
            unjudged_count=outcome.unjudged_count,
        )
    baseline = None
    if outcome.canary_stats is not None and outcome.control_stats is not None:
        comparison = outcome.comparison
        verified = [s.server for s in servers if s.group == "verified"]
        baseline = BaselineReport(
            verdict=Verdict.inconclusive if comparison is None else comparison.verdict,
            detail="not compared: a deployed server failed" if comparison is None else comparison.detail,
            canary=_group(outcome.canary_stats, verified),
            control=_group(outcome.control_stats, outcome.control_group),
            success_drop=None if comparison is None else comparison.success_drop,
            rtt_increase_seconds=None if comparison is None else comparison.rtt_increase,
            max_success_drop=max_success_drop or 0.0,
            max_rtt_increase_seconds=max_rtt_increase or 0.0,
        )
    return VerifyReport(
        verdict=OVERALL[outcome.verdict],
        exit_code=outcome.exit_code,
        interrupted=outcome.interrupted,
        summary=summary,
        mode=mode,
        vantage_points=vantage_points,
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        duration_seconds=round((outcome.finished_at - outcome.started_at).total_seconds(), 6),
        rules=RulesReport(
            rounds=rules.rounds,
            fail_rounds=rules.fail_rounds,
            pass_rounds=rules.pass_rounds,
            definite_reasons=sorted(DEFINITE),
        ),
        servers=servers,
        soak=soak,
        baseline=baseline,
    )
