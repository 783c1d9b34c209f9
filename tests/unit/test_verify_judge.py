"""The judging rules of `probe verify`, pure: rounds classified, verdicts certain as early as they can be and no
earlier, vantage points combined by the aggregator's quorum, the baseline comparison, and the option parsers."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from probe.aggregator.health import quorum_size as aggregator_quorum_size
from probe.aggregator.testing import make_inventory, make_path, make_result
from probe.errors import ConfigError
from probe.results import Reason, StageName
from probe.verify import baseline
from probe.verify.baseline import GroupStats, Thresholds, choose_control, compare
from probe.verify.judge import (
    Observation,
    Outcome,
    Rules,
    ServerJudgement,
    Verdict,
    classify,
    combine,
    quorum_size,
    vantage_verdict,
)
from probe.verify.select import in_location, parse_duration, parse_ratio, read_servers_file, select_servers

T0 = 1_800_000_000.0
PORTS = (51820, 53, 4000)


def observe(fail: Any = None, *, vantage: str = "a", number: int = 1, control_ok: bool | None = None) -> Observation:
    result = make_result("se-got-wg-001", vantage, taken_at=T0 + number, ports=PORTS, fail=fail)
    return Observation(vantage=vantage, round=number, result=result, control_ok=control_ok)


def with_paths(*paths: Any, control_ok: bool | None = None) -> Observation:
    result = make_result("se-got-wg-001", "a", taken_at=T0, paths=paths)
    return Observation(vantage="a", round=1, result=result, control_ok=control_ok)


def test_rounds_are_classified_by_whose_fault_a_failure_is() -> None:
    healthy = classify(observe())
    assert healthy.outcome is Outcome.passed and healthy.paths == 6 and len(healthy.forward_rtts) == 6

    nat = classify(observe(StageName.forward, control_ok=True))
    assert (nat.outcome, nat.definite, nat.stage, nat.reason) == (
        Outcome.failed,
        False,
        StageName.forward,
        Reason.forward_timeout,
    )
    assert len(nat.failed) == 6 and nat.forward_rtts == ()

    # One extended port closed: an ICMP answer, which loss cannot make.
    ports = classify(
        with_paths(make_path(51820), make_path(4000, fail=StageName.handshake, reason=Reason.port_unreachable))
    )
    assert ports.outcome is Outcome.failed and ports.definite and ports.stage is StageName.handshake
    assert [str(p) for p in ports.failed] == ["ipv4 :4000 handshake port_unreachable"]

    # The earliest failing stage names the round, whatever the order of the paths.
    mixed = classify(observe({53: StageName.mtu, 4000: StageName.tunnel}))
    assert (mixed.stage, mixed.reason) == (StageName.tunnel, Reason.tunnel_timeout)

    # This vantage point's own reach failed: its failures say nothing of the relay.
    blind = classify(observe(StageName.forward, control_ok=False))
    assert blind.outcome is Outcome.unjudged and blind.reason is None and "own reach" in (blind.detail or "")

    # Could not send at all, and a bug of ours: not the relay's.
    for reason in (Reason.socket_error, Reason.internal_error):
        cut = classify(with_paths(make_path(51820), make_path(4000, fail=StageName.handshake, reason=reason)))
        assert cut.outcome is Outcome.unjudged and reason.value in (cut.detail or "")
    # ...but a relay failure beside them still counts.
    both = classify(
        with_paths(
            make_path(4000, fail=StageName.handshake, reason=Reason.socket_error),
            make_path(53, fail=StageName.forward),
        )
    )
    assert both.outcome is Outcome.failed and both.reason is Reason.forward_timeout


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ("", Verdict.unfinished),
        ("p", Verdict.unfinished),
        ("pp", Verdict.passed),  # certain: one more failure could not make two
        ("f", Verdict.unfinished),  # loss is not an outage: one failed round is not a verdict
        ("fp", Verdict.unfinished),
        ("fpp", Verdict.passed),
        ("ff", Verdict.failed),
        ("pff", Verdict.failed),
        ("D", Verdict.failed),  # a definite answer is a verdict at once
        ("uu", Verdict.inconclusive),  # one round left cannot make two of anything
        ("ufp", Verdict.inconclusive),
        ("u", Verdict.unfinished),
        ("upp", Verdict.passed),
    ],
)
def test_a_verdict_is_certain_as_soon_as_it_can_be_and_no_sooner(outcomes: str, expected: Verdict) -> None:
    rounds = []
    for number, kind in enumerate(outcomes, start=1):
        fail = {"p": None, "f": StageName.forward, "u": StageName.forward}.get(kind)
        if kind == "D":
            obs = with_paths(make_path(4000, fail=StageName.handshake, reason=Reason.port_unreachable))
        else:
            obs = observe(fail, number=number, control_ok=kind != "u")
        rounds.append(classify(obs))
    assert vantage_verdict(rounds, Rules()) is expected


def test_rules_are_configurable_and_checked() -> None:
    strict = Rules(rounds=5, fail_rounds=1)
    assert strict.pass_rounds == 5
    assert vantage_verdict([classify(observe(StageName.forward))], strict) is Verdict.failed
    with pytest.raises(ValueError, match="fail_rounds"):
        Rules(rounds=2, fail_rounds=3)


def test_a_judgement_asks_for_rounds_only_while_they_can_change_the_verdict() -> None:
    judgement = ServerJudgement("se-got-wg-001", Rules())
    judgement.add(observe(number=1))
    assert judgement.wants_more("a") and judgement.decided_at is None
    judgement.add(observe(number=2))
    assert judgement.verdict is Verdict.passed and not judgement.wants_more("a")
    assert judgement.decided_at is not None and judgement.decided_at.timestamp() == T0 + 2
    assert judgement.wants_more("a", all_rounds=True)  # the baseline wants the third sample
    judgement.add(observe(number=3))
    assert not judgement.wants_more("a", all_rounds=True)

    failing = ServerJudgement("se-got-wg-001", Rules())
    failing.add(observe(StageName.forward, number=1, control_ok=True))
    failing.add(observe(StageName.forward, number=2, control_ok=True))
    assert failing.verdict is Verdict.failed and not failing.wants_more("a", all_rounds=True)
    assert (failing.stage, failing.reason) == (StageName.forward, Reason.forward_timeout)
    assert "2 failed rounds" in failing.summary() and "6 of 6 paths" in failing.summary()


def test_vantage_points_combine_by_the_aggregators_quorum() -> None:
    v = Verdict
    assert combine([v.failed]) is v.failed
    assert combine([v.passed]) is v.passed
    assert combine([v.inconclusive]) is v.inconclusive
    assert combine([v.failed, v.failed, v.passed]) is v.failed
    assert combine([v.failed, v.passed]) is v.inconclusive  # they disagree without a quorum: never a pass
    assert combine([v.failed, v.inconclusive]) is v.failed  # the one that could see decides
    assert combine([v.failed, v.failed, v.unfinished]) is v.failed  # already a majority of all three
    assert combine([v.failed, v.unfinished, v.unfinished]) is v.unfinished
    assert combine([v.passed, v.passed], quorum=1) is v.passed
    assert combine([v.passed, v.failed], quorum=1) is v.failed
    for quorum in ("majority", 1, 2, 3):
        for eligible in range(6):
            assert quorum_size(quorum, eligible) == aggregator_quorum_size(quorum, eligible)

    judgement = ServerJudgement("se-got-wg-001", Rules())
    for agent in ("a", "b", "c"):
        for number in (1, 2):
            fail = StageName.forward if agent != "c" else None
            judgement.add(observe(fail, vantage=agent, number=number, control_ok=True))
    assert judgement.verdict is Verdict.failed and judgement.vantages == ["a", "b", "c"]


def test_with_the_agents_asked_a_verdict_needs_a_quorum_of_them() -> None:
    v = Verdict
    # Two asked (a majority is both): one agent's pass is not yet a pass, nor its failure a failure.
    assert combine([v.passed, v.unfinished], asked=2) is v.unfinished
    assert combine([v.failed, v.unfinished], asked=2) is v.unfinished
    assert combine([v.passed, v.passed], asked=2) is v.passed
    assert combine([v.failed, v.failed], asked=2) is v.failed
    # One of them could not judge: too few left for a quorum of those asked, so never a pass, nor a failure.
    assert combine([v.passed, v.inconclusive], asked=2) is v.inconclusive
    assert combine([v.failed, v.inconclusive], asked=2) is v.inconclusive
    assert combine([v.failed, v.inconclusive]) is v.failed  # without `asked`: the direct mode's rule, unchanged
    # Three asked: two failing are a quorum whatever the third says; an absolute quorum counts as written.
    assert combine([v.failed, v.failed, v.unfinished], asked=3) is v.failed
    assert combine([v.passed, v.passed, v.inconclusive], asked=3) is v.passed
    assert combine([v.passed, v.failed], quorum=1, asked=2) is v.failed
    assert combine([v.passed, v.passed], quorum=3, asked=2) is v.inconclusive


def test_agents_asked_count_before_they_answer_and_silence_is_given_up_never_passed() -> None:
    at = datetime.fromtimestamp(T0 + 10, UTC)
    judgement = ServerJudgement("se-got-wg-001", Rules())
    judgement.expect(["a", "b"], quorum="majority")
    assert judgement.vantages == ["a", "b"] and str(judgement.verdict) == "unfinished"
    for number in (1, 2):
        judgement.add(observe(vantage="a", number=number))
    assert str(judgement.verdict) == "unfinished"  # a's two good rounds; b has not answered yet
    judgement.give_up("b", "went offline before answering", at)
    assert judgement.verdict is Verdict.inconclusive and judgement.decided_at == at
    assert "b: went offline before answering" in judgement.summary()

    answered = ServerJudgement("se-got-wg-001", Rules())
    answered.expect(["a", "b"])
    for agent in ("a", "b"):
        for number in (1, 2):
            answered.add(observe(StageName.forward, vantage=agent, number=number, control_ok=True))
    assert answered.verdict is Verdict.failed and answered.vantages == ["a", "b"]
    answered.give_up(None, "no answer within 30 s", at)
    assert answered.verdict is Verdict.failed  # what is certain stays certain

    nobody = ServerJudgement("se-got-wg-001", Rules())
    nobody.give_up(None, "the aggregator asked no agent: none online", at)
    assert nobody.verdict is Verdict.inconclusive and nobody.summary().endswith("none online")

    late = ServerJudgement("se-got-wg-001", Rules())
    late.expect(["a", "b"])
    late.add(observe(vantage="a", number=1))
    late.add(observe(StageName.forward, vantage="b", number=1, control_ok=True))
    late.give_up(None, "no answer within 2 s", at)
    assert late.verdict is Verdict.inconclusive
    assert "a, b: no answer within 2 s" in late.summary()

    split = ServerJudgement("se-got-wg-001", Rules())
    split.expect(["a", "b"])
    for number in (1, 2):
        split.add(observe(vantage="a", number=number))
        split.add(observe(StageName.forward, vantage="b", number=number, control_ok=True))
    assert split.verdict is Verdict.inconclusive
    assert "failed from b but passed from a: no quorum" in split.summary()


def stats(passed: int, paths: int, rtt_ms: float) -> GroupStats:
    return GroupStats(paths=paths, passed=passed, rounds=1, rtts=[rtt_ms / 1000] * max(passed, 0))


def test_the_baseline_fails_a_slower_or_less_successful_canary_and_only_that() -> None:
    limits = Thresholds(max_rtt_increase=0.020, max_success_drop=0.05)
    assert compare(stats(100, 100, 11), stats(100, 100, 10), limits).verdict is Verdict.passed
    slower = compare(stats(100, 100, 110), stats(100, 100, 10), limits)
    assert slower.verdict is Verdict.failed and "median RTT 100.0 ms higher" in slower.detail
    assert compare(stats(94, 100, 10), stats(100, 100, 10), limits).verdict is Verdict.failed
    assert compare(stats(96, 100, 10), stats(100, 100, 10), limits).verdict is Verdict.passed
    # A canary better than its control is fine; no sample on one side is inconclusive, never a pass.
    assert compare(stats(100, 100, 5), stats(90, 100, 40), limits).verdict is Verdict.passed
    assert compare(stats(0, 0, 0), stats(100, 100, 10), limits).verdict is Verdict.inconclusive
    assert compare(stats(0, 10, 0), stats(100, 100, 10), limits).verdict is Verdict.inconclusive


def test_unjudged_rounds_carry_no_baseline_sample() -> None:
    group = GroupStats()
    group.add([classify(observe()), classify(observe(StageName.forward, control_ok=False))])
    assert (group.rounds, group.paths, group.passed, len(group.rtts)) == (1, 6, 6, 6)


def test_the_control_group_is_bounded_and_nearest_first() -> None:
    names = [f"se-got-wg-00{n}" for n in range(1, 6)] + ["se-sto-wg-001", "se-mma-wg-002", "de-fra-wg-001"]
    inventory = make_inventory(names)
    canary = [inventory.require("se-got-wg-001")]
    chosen = [r.name for r in choose_control(inventory.relays, canary, 6)]
    assert len(chosen) == 6 and "se-got-wg-001" not in chosen
    assert set(chosen[:4]) == {"se-got-wg-002", "se-got-wg-003", "se-got-wg-004", "se-got-wg-005"}
    assert set(chosen[4:]) == {"se-sto-wg-001", "se-mma-wg-002"}  # same country before the rest
    assert choose_control(inventory.relays, canary, 6) == choose_control(inventory.relays, canary, 6)
    assert [r.name for r in choose_control(inventory.relays, canary, 9)][-1] == "de-fra-wg-001"


def test_durations_shares_locations_and_servers_files(tmp_path: Path) -> None:
    assert parse_duration("90s", what="--soak") == 90
    assert parse_duration("10m", what="--soak") == 600
    assert parse_duration("1h30m", what="--soak") == 5400
    assert parse_duration("250ms", what="--x") == 0.25
    assert parse_duration("2", what="--x") == 2
    for bad in ("", "10 minutes", "-5s", "0s", "1x", "s", "nan", "inf"):
        with pytest.raises(ConfigError, match="--soak"):
            parse_duration(bad, what="--soak")
    assert parse_ratio("0.05", what="--r") == 0.05 and parse_ratio("5%", what="--r") == 0.05
    for bad in ("1.5", "-0.1", "five", "150%"):
        with pytest.raises(ConfigError, match="--r"):
            parse_ratio(bad, what="--r")

    inventory = make_inventory(["se-got-wg-001", "se-got-wg-002", "se-sto-wg-003", "segot-wg-004"])
    relay = inventory.require("se-got-wg-001")
    assert in_location(relay, "se-got") and in_location(relay, "se") and not in_location(relay, "s")

    listing = tmp_path / "servers.txt"
    listing.write_text("# canary\nse-got-wg-002  # the first\n\n  se-sto-wg-003\n")
    assert read_servers_file(listing) == ["se-got-wg-002", "se-sto-wg-003"]
    chosen = select_servers(inventory, ["se-sto-wg-003"], ["se-got"], [listing])
    assert [r.name for r in chosen] == ["se-sto-wg-003", "se-got-wg-002", "se-got-wg-001"]

    with pytest.raises(ConfigError, match=r"'se-got-wg-01' \(did you mean se-got-wg-001.*'nowhere-1'"):
        select_servers(inventory, ["se-got-wg-01", "nowhere-1"], [], [])
    with pytest.raises(ConfigError, match="did you mean se-got"):
        select_servers(inventory, [], ["se-gt"], [])
    with pytest.raises(ConfigError, match="name the servers"):
        select_servers(inventory, [], [], [])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no server"):
        read_servers_file(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="is a directory"):
        read_servers_file(tmp_path)


def test_a_definite_failure_after_a_certain_pass_still_fails_the_server() -> None:
    # Under the baseline every round is taken, also past a certain pass: a definite answer then still counts.
    judgement = ServerJudgement("se-got-wg-001", Rules())
    judgement.add(observe(number=1))
    judgement.add(observe(number=2))
    passed_at = judgement.decided_at
    assert str(judgement.verdict) == "passed" and judgement.wants_more("a", all_rounds=True)
    judgement.add(with_paths(make_path(4000, fail=StageName.handshake, reason=Reason.port_unreachable)))
    assert judgement.verdict is Verdict.failed and judgement.reason is Reason.port_unreachable
    assert judgement.decided_at is not None and judgement.decided_at != passed_at


def test_a_long_soak_keeps_a_bounded_uniform_sample_of_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baseline, "MAX_SAMPLES", 200)
    group = GroupStats()
    template = classify(observe())
    # 2,000 rounds of 6 round trips each, 1 ms to 12 ms: the median of the whole is 6.5 ms.
    for n in range(2000):
        group.add([replace(template, forward_rtts=tuple((1 + (n * 6 + k) % 12) / 1000 for k in range(6)))])
    assert group.seen == 12_000 and len(group.rtts) == 200
    assert group.median_rtt is not None and 0.005 <= group.median_rtt <= 0.008
    assert group.success_ratio == 1.0 and group.paths == 12_000
