"""`probe verify --aggregator`'s source against a real aggregator app on a loopback socket, whose agents are played
by its command hook (each answers a command with results tagged by its request id, as an agent would, or not at
all): the judging across agents by the aggregator's quorum, rounds asked of just the agents that want them,
silence and agents going away judged inconclusive (never passed), no agent online, the aggregator unreachable, a
soak; and `probe serve` with a real agent answering `probe verify --aggregator` as processes. Real agents over a
real broker are in tests/integration/test_verify_aggregator.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from probe.addresses import Endpoint
from probe.aggregator.config import HealthSection, Quorum
from probe.aggregator.http import make_app
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import make_inventory, make_result, make_status, payload
from probe.aggregator.verifications import Tagged, Verifications
from probe.cli import run
from probe.errors import ConfigError, UnavailableError
from probe.http import serving
from probe.messages import Command, result_topic, status_topic
from probe.results import StageName
from probe.verify.aggregator import AggregatorSource, fetch_inventory
from probe.verify.baseline import Thresholds
from probe.verify.judge import Verdict
from probe.verify.report import VerifyReport
from probe.verify.run import Options, execute
from probe.verify.session import Soak
from tests.integration.broker import free_port

LOOPBACK = Endpoint.parse("127.0.0.1:0", allow_port_zero=True)
RELAYS = ("se-got-wg-001", "se-got-wg-002")
A, B = "agent-a", "agent-b"
HANG_GUARD = 60.0


@dataclass
class Agents:
    """The agents, played: each answers every command it gets as `behaviour` says ("pass", "fail": forward on
    every path, "silent": never, "vanish": says offline instead of answering)."""

    sink: Tagged
    behaviour: dict[str, str]
    commands: dict[str, list[Command]] = field(default_factory=dict)

    def online(self) -> None:
        for agent in self.behaviour:
            status = make_status(agent, at=time.time())
            self.sink.ingest_status(payload(status), status_topic(agent))

    async def send(self, agent: str, data: bytes) -> None:
        command = Command.model_validate_json(data)
        self.commands.setdefault(agent, []).append(command)
        asyncio.get_running_loop().call_later(0.01, self._answer, agent, command)

    def _answer(self, agent: str, command: Command) -> None:
        behaviour = self.behaviour[agent]
        if behaviour == "vanish":
            status = make_status(agent, at=time.time(), online=False)
            self.sink.ingest_status(payload(status), status_topic(agent))
            return
        if behaviour == "silent":
            return
        fail = StageName.forward if behaviour == "fail" else None
        for server in command.servers:
            result = make_result(server, agent, taken_at=time.time(), ports=(51820, 4000), fail=fail)
            tagged = result.model_copy(update={"request_id": command.request_id, "control_ok": True})
            assert self.sink.ingest_result(payload(tagged), result_topic(agent, server)).accepted


@asynccontextmanager
async def aggregator(behaviour: dict[str, str], quorum: Quorum = "majority") -> AsyncIterator[tuple[str, Agents]]:
    store = ResultStore(make_inventory(RELAYS), now=time.time, health=HealthSection(quorum=quorum))
    registry = Verifications(now=time.time)
    agents = Agents(Tagged(store, registry), behaviour)
    agents.online()
    app = make_app(store, metrics_update_seconds=None, verifications=registry, send=agents.send)
    async with serving(app, LOOPBACK) as bound:
        yield f"http://{bound}", agents


async def verify(
    base: str, servers: Sequence[str] = RELAYS, *, timeout: float = 10.0, soak: Soak | None = None
) -> tuple[VerifyReport, str]:
    inventory = await fetch_inventory(base)
    source = AggregatorSource(base, timeout=timeout, poll=0.02)
    out = io.StringIO()
    options = Options(timeout=timeout, soak=soak)
    relays = [inventory.require(name) for name in servers]
    report = await asyncio.wait_for(
        execute(None, inventory, relays, [], options, source=source, out=out, err=io.StringIO()), HANG_GUARD
    )
    return report, out.getvalue()


def summaries(report: VerifyReport) -> dict[str, tuple[Verdict, str]]:
    return {s.server: (s.verdict, s.summary) for s in report.servers}


@pytest.mark.asyncio
async def test_two_agents_that_pass_verify_in_two_rounds_each() -> None:
    async with aggregator({A: "pass", B: "pass"}) as (base, agents):
        report, out = await verify(base)
    assert report.exit_code == 0 and report.mode == "aggregator" and report.vantage_points == [A, B]
    for server in report.servers:
        assert server.verdict is Verdict.passed and server.vantage_points == [A, B]
        assert sorted((r.vantage, r.round) for r in server.rounds) == [(A, 1), (A, 2), (B, 1), (B, 2)]
    assert {agent: len(sent) for agent, sent in agents.commands.items()} == {A: 2, B: 2}
    assert "via the aggregator at http://127.0.0.1:" in out and f"{A}, {B}" in out


@pytest.mark.asyncio
async def test_a_failure_needs_a_quorum_of_the_agents_and_the_quorum_is_the_aggregators() -> None:
    async with aggregator({A: "fail", B: "fail"}) as (base, _):
        report, out = await verify(base, RELAYS[:1])
    assert report.exit_code == 1 and report.servers[0].stage is StageName.forward
    assert f"from {A}, {B}" in out
    async with aggregator({A: "fail", B: "pass"}) as (base, _):
        report, _ = await verify(base, RELAYS[:1])
    verdict, summary = summaries(report)[RELAYS[0]]
    assert report.exit_code == 3 and verdict is Verdict.inconclusive  # they disagree: never a pass
    assert f"failed from {A} but passed from {B}: no quorum" in summary
    async with aggregator({A: "fail", B: "pass"}, quorum=1) as (base, _):
        report, _ = await verify(base, RELAYS[:1])
    assert report.exit_code == 1  # the aggregator's quorum of one agent


@pytest.mark.asyncio
async def test_an_agent_that_does_not_answer_makes_the_verification_inconclusive_never_passed() -> None:
    async with aggregator({A: "pass", B: "silent"}) as (base, agents):
        report, _ = await verify(base, timeout=1.0)
    assert report.exit_code == 3
    for verdict, summary in summaries(report).values():
        assert verdict is Verdict.inconclusive and f"{B}: no answer within 1 s" in summary
    # Only the agent still owing answers was asked again; the one whose verdict was certain was not.
    assert len(agents.commands[A]) == 2 and len(agents.commands[B]) == 1
    assert agents.commands[B][0].servers == RELAYS


@pytest.mark.asyncio
async def test_an_agent_going_offline_is_given_up_at_once_not_waited_for() -> None:
    async with aggregator({A: "pass", B: "vanish"}) as (base, _):
        report, _ = await verify(base, timeout=HANG_GUARD / 2)
    assert report.exit_code == 3
    for verdict, summary in summaries(report).values():
        assert verdict is Verdict.inconclusive and f"{B}: went offline before answering" in summary


@pytest.mark.asyncio
async def test_without_an_agent_online_nothing_is_asked_and_the_verification_is_inconclusive() -> None:
    async with aggregator({A: "vanish"}) as (base, agents):
        agents.sink.ingest_status(payload(make_status(A, at=time.time(), online=False)), status_topic(A))
        report, out = await verify(base)
    assert report.exit_code == 3 and report.verdict == "inconclusive" and agents.commands == {}
    assert all("no agent is online with a good control check" in s.summary for s in report.servers)
    assert "INCONCLUSIVE" in out


@pytest.mark.asyncio
async def test_the_canary_comparison_takes_every_round_from_every_agent() -> None:
    async with aggregator({A: "pass", B: "pass"}) as (base, agents):
        inventory = await fetch_inventory(base)
        canary, control = [inventory.require(RELAYS[0])], [inventory.require(RELAYS[1])]
        source = AggregatorSource(base, timeout=10, poll=0.02)
        options = Options(timeout=10, thresholds=Thresholds())
        report = await asyncio.wait_for(
            execute(None, inventory, canary, control, options, source=source, out=io.StringIO()), HANG_GUARD
        )
    assert report.exit_code == 0 and report.baseline is not None and report.baseline.verdict is Verdict.passed
    assert report.baseline.canary.rounds == report.baseline.control.rounds == 6  # 3 rounds x 2 agents each
    assert {agent: len(sent) for agent, sent in agents.commands.items()} == {A: 3, B: 3}


@pytest.mark.asyncio
async def test_a_soak_asks_again_every_pass() -> None:
    async with aggregator({A: "pass"}) as (base, agents):
        report, _ = await verify(base, RELAYS[:1], soak=Soak(duration=0.4, every=0.2))
    assert report.exit_code == 0 and report.soak is not None and report.soak.passes >= 2
    assert len({c.request_id for c in agents.commands[A]}) == 2 * report.soak.passes


@pytest.mark.asyncio
async def test_an_aggregator_that_cannot_be_reached_is_unavailable_and_the_command_exits_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(UnavailableError, match="cannot be reached"):
        await fetch_inventory(base)
    code = await asyncio.to_thread(run, ["verify", RELAYS[0], "--aggregator", base])
    assert code == 3 and "cannot be reached" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_an_endless_answer_is_cut_off_and_a_redirect_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import web

    import probe.verify.aggregator as client

    monkeypatch.setattr(client, "MAX_ANSWER", 1 << 20)
    followed: list[str] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:  # a server that never stops answering: read whole, it took 4 GB of memory
                await response.write(b"x" * 65536)
        return response

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere/api/v1/inventory")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/endless/api/v1/inventory", endless)
    app.router.add_get("/moved/api/v1/inventory", moved)
    app.router.add_get("/elsewhere/api/v1/inventory", elsewhere)
    async with serving(app, LOOPBACK) as bound:
        with pytest.raises(ConfigError, match="answered more than 1 MiB"):
            await asyncio.wait_for(fetch_inventory(f"http://{bound}/endless"), HANG_GUARD)
        with pytest.raises(ConfigError, match="HTTP 302"):
            await fetch_inventory(f"http://{bound}/moved")
    assert followed == []


async def until_agent_ok(base: str) -> None:
    """Until the service listens and its agent is online with a good control check (a hang guard, no claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base}/api/v1/agents") as response:
                    agents = (await response.json())["agents"]
                    if any(agent["state"] == "ok" for agent in agents):
                        return
            except aiohttp.ClientError:
                pass  # not listening yet
            assert loop.time() < deadline, "the service never had an agent online"
            await asyncio.sleep(0.1)


@asynccontextmanager
async def probe_serve(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[str]:
    """`probe sim up` with two relays (se-got-wg-002's NAT broken) and `probe serve` on it, as processes; yields
    the service's base URL once its agent is online with a good control check. Both stopped by PID."""
    sim_dir = tmp_path / "sim"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probe", "sim", "up", "--relays", "2", "--dir", str(sim_dir),
        "--fault", "se-got-wg-002:nat", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    serve = None
    try:
        assert sim.stdout is not None
        while not (await asyncio.wait_for(sim.stdout.readline(), HANG_GUARD)).startswith(b"ready"):
            pass
        port = free_port()
        config = sim_dir / "serve.toml"
        config.write_text(
            (sim_dir / "agent.toml").read_text()
            + "\n[schedule]\ninterval_seconds = 60\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\n"
            + f'[http]\nlisten = "127.0.0.1:{port}"\n'
        )
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "probe", "serve", "--config", str(config),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        await until_agent_ok(base)
        yield base
    finally:
        for proc in (serve, sim):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.asyncio
async def test_probe_serve_answers_probe_verify_aggregator(tmp_path: Path) -> None:
    """The embedded default: `probe serve` (agent and aggregator in one process, no broker) takes the command."""
    env = {**os.environ, "NO_COLOR": "1"}
    async with probe_serve(tmp_path, env) as base:

        async def verify_process(*args: str) -> tuple[int, dict[str, object]]:
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "probe", "verify", "--aggregator", base, "--json", *args,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            )  # fmt: skip
            out, err = await asyncio.wait_for(done.communicate(), HANG_GUARD)
            assert out, err.decode()
            return done.returncode or 0, json.loads(out)

        code, report = await verify_process("se-got-wg-001")
        assert code == 0 and report["vantage_points"] == ["sim-agent"], report
        code, report = await verify_process("se-got-wg-002")
        assert code == 1, report
        assert report["servers"][0]["stage"] == "forward"  # type: ignore[index]


@pytest.mark.asyncio
async def test_probe_serve_mounts_the_agents_own_endpoints_under_agent(tmp_path: Path) -> None:
    """`probe serve`'s agent answers at /agent/metrics and /agent/probe?target=NAME, as `probe agent` does at /metrics
    and /probe: its own series (not the aggregator's), and a probe now of an inventory name, never of another."""
    async with probe_serve(tmp_path, {**os.environ, "NO_COLOR": "1"}) as base, aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, str]:
            async with http.get(base + path, timeout=aiohttp.ClientTimeout(total=HANG_GUARD)) as response:
                return response.status, await response.text()

        status, own = await get("/agent/metrics")
        assert status == 200, own
        assert 'wgprobe_agent_info{agent="sim-agent",' in own and "wgprobe_agent_relays 2.0" in own
        assert "wgprobe_server_up" not in own  # the aggregator's series stay at /metrics
        status, aggregated = await get("/metrics")
        assert status == 200 and "wgprobe_server_up" in aggregated and "wgprobe_agent_relays" not in aggregated
        status, healthy = await get("/agent/probe?target=se-got-wg-001")
        assert status == 200 and "probe_success 1.0" in healthy, healthy
        status, broken = await get("/agent/probe?target=se-got-wg-002")
        assert status == 200 and "probe_success 0.0" in broken, broken
        status, unknown = await get("/agent/probe?target=se-got-wg-009")
        assert status == 400 and "unknown target 'se-got-wg-009'" in unknown, unknown
        assert "probe_success" not in unknown
