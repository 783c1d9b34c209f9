"""`probe verify` in-process against a simulated fleet on loopback (real handshakes, real sockets, no root): healthy
servers verified on every path, a NAT fault and a closed extended port failed at the right stage as soon as that is
certain, a fault in the middle of a soak caught, the canary comparison, and an agent whose own network is down
that cannot judge. The command's exit codes, JSON and JUnit are in test_verify_cli.py."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from probe.inventory import Relay
from probe.results import Reason, StageName
from probe.sim.faults import SimFault
from probe.sim.testing import SimSetup, agent_fleet
from probe.verify.baseline import Thresholds
from probe.verify.direct import DirectSource
from probe.verify.judge import Observation, Verdict
from probe.verify.report import ServerReport, VerifyReport
from probe.verify.run import Options, execute
from probe.verify.session import Soak
from probe.verify.source import Accept

HANG_GUARD = 60.0  # seconds; far above what any verification here takes


@dataclass
class Recording:
    """The direct source, with every observation kept for the test to look at."""

    inner: DirectSource
    seen: list[Observation] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.inner.mode

    def vantage_points(self) -> list[str]:
        return self.inner.vantage_points()

    def describe(self) -> str:
        return self.inner.describe()

    async def run(self, relays: Sequence[Relay], accept: Accept) -> None:
        def keep(observation: Observation) -> bool:
            self.seen.append(observation)
            return accept(observation)

        await self.inner.run(relays, keep)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Run:
    report: VerifyReport
    out: str
    err: str
    seen: list[Observation]

    def server(self, name: str) -> ServerReport:
        return next(s for s in self.report.servers if s.server == name)


async def verify(
    sim: SimSetup, names: Sequence[str], options: Options | None = None, control: Sequence[str] = ()
) -> Run:
    config, inventory = sim.config(), sim.inventory()
    source = Recording(DirectSource(config, inventory))
    out, err = io.StringIO(), io.StringIO()
    report = await asyncio.wait_for(
        execute(
            config,
            inventory,
            [inventory.require(name) for name in names],
            [inventory.require(name) for name in control],
            options or Options(),
            source=source,
            out=out,
            err=err,
        ),
        HANG_GUARD,
    )
    return Run(report, out.getvalue(), err.getvalue(), source.seen)


NAMES = ("se-got-wg-001", "se-got-wg-002", "se-got-wg-003")


@pytest.mark.asyncio
async def test_healthy_servers_are_verified_on_every_range_and_both_families(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=3) as sim:
        run = await verify(sim, NAMES)
        inventory = sim.inventory()
    assert run.report.exit_code == 0 and run.report.verdict == "verified", run.out
    assert all(s.verdict is Verdict.passed for s in run.report.servers)
    assert "VERIFIED: 3 server(s)" in run.out
    # Two good rounds make a pass certain: the third is never probed. (On a loaded machine a round can miss the
    # test's 0.3 s handshake timeout; then, and only then, a third round decides: the rule, not the timing, is
    # what is tested.)
    for server in run.report.servers:
        first_two_good = all(r.outcome == "passed" for r in server.rounds[:2])
        assert len(server.rounds) == (2 if first_two_good else 3), server.rounds
    for observation in run.seen:
        relay = inventory.require(observation.result.server)
        for family in ("ipv4", "ipv6"):
            ports = {p.port for p in observation.result.paths if p.family == family}
            assert relay.main_port in ports
            # Every entry range, in every round: not only a rotation's share of them.
            assert all(any(low <= port <= high for port in ports) for low, high in relay.port_ranges)
    # Successive rounds walk other ports of the ranges.
    first, second, *_ = (o for o in run.seen if o.result.server == "se-got-wg-001")
    assert {p.port for p in first.result.paths} != {p.port for p in second.result.paths}


@pytest.mark.asyncio
async def test_a_nat_fault_fails_its_server_at_the_forward_stage_after_two_rounds(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=3, faults=[("se-got-wg-002", SimFault.parse("nat"))]) as sim:
        run = await verify(sim, NAMES)
    assert run.report.exit_code == 1 and run.report.verdict == "failed"
    failed = run.server("se-got-wg-002")
    assert (failed.verdict, failed.stage, failed.reason) == (Verdict.failed, StageName.forward, Reason.forward_timeout)
    assert len(failed.rounds) == 2  # certain after two failed rounds, not after the last
    assert all(r.control_ok for r in failed.rounds)  # this host's own reach was checked before blaming the relay
    assert failed.evidence and any(item.endswith(".pcap") for item in failed.evidence)
    assert {(p.family, p.stage) for p in failed.failed_paths} == {("ipv4", "forward"), ("ipv6", "forward")}
    assert "FAILED se-got-wg-002 at forward: forward_timeout" in run.out and "from sim-agent (this host)" in run.out
    assert "FAILED: 1 of 3 server(s) failed: se-got-wg-002 (forward: forward_timeout)" in run.out


@pytest.mark.asyncio
async def test_a_server_failing_only_on_extended_ports_fails_at_once(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=2, faults=[("se-got-wg-001", SimFault.parse("ports"))]) as sim:
        run = await verify(sim, ["se-got-wg-001"])
        main_port = sim.inventory().require("se-got-wg-001").main_port
    assert run.report.exit_code == 1
    failed = run.server("se-got-wg-001")
    assert (failed.stage, failed.reason) == (StageName.handshake, Reason.port_unreachable)
    assert len(failed.rounds) == 1 and failed.rounds[0].definite  # an ICMP answer: no second round needed
    ports = {p.port for p in failed.failed_paths}
    assert ports and main_port not in ports  # the main port works; every failed path is an extended one
    assert len(failed.failed_paths) == failed.rounds[0].paths - 2  # all but the main port on the two families


@pytest.mark.asyncio
async def test_keep_going_judges_every_server_after_a_failure(tmp_path: Path) -> None:
    faults = [("se-got-wg-001", SimFault.parse("ports")), ("se-got-wg-003", SimFault.parse("nat"))]
    async with agent_fleet(tmp_path / "sim", relays=3, faults=faults) as sim:
        stopped = await verify(sim, NAMES)
        complete = await verify(sim, NAMES, Options(keep_going=True))
    # By default the run ends at the first certain failure (the rollout stops there), the rest unfinished.
    assert stopped.server("se-got-wg-001").verdict is Verdict.failed
    assert stopped.server("se-got-wg-003").verdict is Verdict.unfinished
    verdicts = {s.server: s.verdict for s in complete.report.servers}
    assert verdicts == {"se-got-wg-001": "failed", "se-got-wg-002": "passed", "se-got-wg-003": "failed"}
    assert "2 of 3 server(s) failed" in complete.report.summary


@pytest.mark.asyncio
async def test_a_soak_fails_at_the_first_server_that_goes_down_and_says_when(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=2) as sim:
        out = io.StringIO()
        config, inventory = sim.config(), sim.inventory()
        options = Options(soak=Soak(duration=HANG_GUARD, every=0.2))
        verified = [inventory.require(name) for name in ("se-got-wg-001", "se-got-wg-002")]
        task = asyncio.create_task(execute(config, inventory, verified, [], options, out=out, err=io.StringIO()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG_GUARD
        while "soak pass 3 " not in out.getvalue():
            assert loop.time() < deadline and not task.done(), out.getvalue()
            await asyncio.sleep(0.05)
        broke_at = datetime.now(UTC)
        sim.fleet.break_relay("se-got-wg-002", SimFault.parse("nat"))
        report = await asyncio.wait_for(task, HANG_GUARD)
    assert report.exit_code == 1 and report.soak is not None
    assert report.soak.ended_early and report.soak.passes >= 4
    down = next(s for s in report.servers if s.server == "se-got-wg-002")
    assert down.verdict is Verdict.failed and down.stage is StageName.forward
    assert down.failed_at is not None and down.last_ok_at is not None
    assert down.last_ok_at < broke_at <= down.failed_at
    assert "se-got-wg-002 went down during the soak" in out.getvalue()


@pytest.mark.asyncio
async def test_the_canary_comparison_fails_a_delayed_canary_and_passes_a_healthy_one(tmp_path: Path) -> None:
    canary, control = ["se-got-wg-001", "se-got-wg-002"], ["se-got-wg-003", "se-got-wg-004"]
    options = Options(thresholds=Thresholds(), soak=Soak(duration=0.5, every=0.5))
    delayed = [(name, SimFault.parse("delay:50")) for name in canary]
    async with agent_fleet(tmp_path / "sim", relays=4, faults=delayed) as sim:
        slow = await verify(sim, canary, options, control)
        for name in canary:
            sim.fleet.heal_relay(name)
        healthy = await verify(sim, canary, options, control)
    assert slow.report.exit_code == 1 and slow.report.baseline is not None
    assert all(s.verdict is Verdict.passed for s in slow.report.servers)  # each server on its own is fine
    assert slow.report.baseline.verdict is Verdict.failed and "median RTT" in slow.report.baseline.detail
    increase = slow.report.baseline.rtt_increase_seconds
    assert increase is not None and increase > 0.080  # a NAT round trip enters the delayed relay twice
    assert slow.report.baseline.control.servers == control
    assert healthy.report.exit_code == 0, healthy.out
    assert healthy.report.baseline is not None and healthy.report.baseline.verdict is Verdict.passed
    assert healthy.report.baseline.canary.rounds == 2 * 3 * 2  # every round of every pass: 2 servers, 3, 2 passes


@pytest.mark.asyncio
async def test_an_agent_whose_own_network_is_down_cannot_judge(tmp_path: Path) -> None:
    async with agent_fleet(tmp_path / "sim", relays=2) as sim:
        sim.fleet.set_outside(up=False)  # the forward target and reflector gone for every relay and for us
        run = await verify(sim, ["se-got-wg-001", "se-got-wg-002"])
    assert run.report.exit_code == 3 and run.report.verdict == "inconclusive"
    for server in run.report.servers:
        assert server.verdict is Verdict.inconclusive and server.reason is None
        assert all(r.outcome == "unjudged" and r.control_ok is False for r in server.rounds)
    assert "INCONCLUSIVE" in run.out and "own reach failed" in run.out
