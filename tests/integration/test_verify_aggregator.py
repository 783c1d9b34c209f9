"""`probe verify --aggregator` end to end, every piece a real process: a simulated fleet (`probe sim up --agents 2`,
se-got-wg-002's NAT broken), a real mosquitto with password file and ACL, two `probe agent`s on a 60 s schedule and
a `probe aggregator`. A verification is answered on command within seconds, not at the agents' next round: healthy
servers exit 0, the NAT-broken one exits 1 naming its stage and both agents; with the agents stopped it is
inconclusive (3). A malformed command, and one naming a relay outside the inventory, are counted and ignored by the
agent, which goes on answering good ones."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from probe.messages import RESULTS_FILTER, Command, ResultMessage, command_topic
from probe.mqtt import connect
from tests.integration.broker import AGGREGATOR_USER, Mosquitto, free_port

pytestmark = pytest.mark.integration
AGENTS = ("sim-agent", "sim-agent-2")  # the names `probe sim up --agents 2` gives; broker users alike (ACL %u)
INTERVAL = 60  # the agents' schedule: a verification must not wait for it
HANG_GUARD = 50  # seconds a `probe verify` may take at most here: less than one interval


def probe_process(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "probe", *args], **kw)  # type: ignore[call-overload,no-any-return]


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - a loopback URL made by the test
        body: bytes = answer.read()
    return body.decode()


@dataclass
class Service:
    directory: Path
    broker: Mosquitto
    aggregator_url: str
    agent_ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "probe", "verify", "--aggregator", self.aggregator_url, *args],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            check=False,
        )

    def agents(self) -> dict[str, str]:
        listed = json.loads(http_get(f"{self.aggregator_url}/api/v1/agents"))
        return {agent["name"]: agent["state"] for agent in listed["agents"]}

    def agent_metric(self, agent: str, name: str) -> float:
        text = http_get(f"http://127.0.0.1:{self.agent_ports[agent]}/metrics")
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not in {agent}'s metrics"
        return float(match.group(1))

    def logs(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def agent_config(directory: Path, broker: Mosquitto, agent: str, index: int, http_port: int) -> Path:
    credentials = broker.users.get(agent) or broker.add_user(agent)
    base = directory / ("agent.toml" if index == 1 else f"agent-{index}.toml")
    config = directory / f"{agent}-mqtt.toml"
    config.write_text(
        base.read_text()
        + f"\n[schedule]\ninterval_seconds = {INTERVAL}\n"
        + "[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
        + f'[mqtt]\nurl = "{broker.url}"\nusername = "{agent}"\npassword_file = "{credentials.password_file}"\n'
        + f'[spool]\npath = "{directory / (agent + "-spool.sqlite")}"\n'
        + f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
    )
    return config


def aggregator_config(directory: Path, broker: Mosquitto, http_port: int) -> Path:
    credentials = broker.users[AGGREGATOR_USER]
    config = directory / "aggregator.toml"
    config.write_text(
        '[aggregator]\nname = "agg-test"\n'
        + f'[mqtt]\nurl = "{broker.url}"\nusername = "{AGGREGATOR_USER}"\n'
        + f'password_file = "{credentials.password_file}"\n'
        + f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
        + f'[inventory]\nsource = "{directory / "relays.json"}"\n'
        + f"[health]\ninterval_seconds = {INTERVAL}\n"
    )
    return config


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    """`probe sim up` with three relays and two vantage points, se-got-wg-002's NAT broken; stopped by PID."""
    directory = tmp_path / "sim"
    proc = probe_process(
        "sim", "up", "--relays", "3", "--agents", "2", "--dir", str(directory), "--fault", "se-got-wg-002:nat",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    while not seen.startswith(b"ready") and b"\nready" not in seen:
        line = proc.stdout.readline()
        assert line, f"probe sim up ended before it was ready: {seen!r}"
        seen += line
    try:
        yield directory
    finally:
        stop(proc)
        proc.stdout.close()


@pytest.fixture
def service(fleet: Path, broker: Mosquitto) -> Iterator[Service]:
    """Two agents and an aggregator, as processes, their logs in files; every one stopped by PID afterwards."""
    ports = {agent: free_port() for agent in AGENTS}
    service = Service(fleet, broker, f"http://127.0.0.1:{free_port()}", ports)
    aggregator_port = int(service.aggregator_url.rsplit(":", 1)[1])
    commands = {
        "aggregator": ["aggregator", "--config", str(aggregator_config(fleet, broker, aggregator_port))],
        **{
            agent: ["agent", "--config", str(agent_config(fleet, broker, agent, n, ports[agent]))]
            for n, agent in enumerate(AGENTS, start=1)
        },
    }
    try:
        for name, args in commands.items():
            with (fleet / f"{name}.log").open("wb") as log:
                service.processes[name] = probe_process(*args, "--log-format", "json", stdout=log, stderr=log)
        yield service
    finally:
        for proc in service.processes.values():
            stop(proc)


def until(condition: object, what: str, service: Service, timeout: float = 30.0) -> None:
    """Poll `condition` (a callable); fail naming `what`, with the services' logs, if it never holds (hang guard)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name}\n{service.logs(name)[-2000:]}" for name in service.processes)
            raise AssertionError(f"never happened within {timeout:g} s: {what}\n{logs}")
        time.sleep(0.1)


def all_agents_ok(service: Service) -> None:
    until(lambda: service.agents() == dict.fromkeys(AGENTS, "ok"), "both agents online at the aggregator", service)


def test_a_verification_is_answered_on_command_healthy_passes_and_a_broken_nat_fails(service: Service) -> None:
    all_agents_ok(service)
    began = datetime.now(UTC)
    done = service.verify("se-got-wg-001", "se-got-wg-003", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr, service.logs("aggregator")[-3000:])
    report = json.loads(done.stdout)
    assert report["mode"] == "aggregator" and report["verdict"] == "verified"
    assert sorted(report["vantage_points"]) == sorted(AGENTS)
    for server in report["servers"]:
        rounds = server["rounds"]
        assert server["verdict"] == "passed" and sorted(server["vantage_points"]) == sorted(AGENTS), server
        # Two good rounds from each agent, each on every path (main port and every range, both families), every
        # one taken after the verification began: on command, not from the 60 s schedule. One failed round beside
        # them is the rules' "one lost-packet accident" (probe/verify/judge.py): on a loaded machine the simulated
        # fleet, one Python process, can answer a path after its stage timeout (seen 1 run in 5 beside other suites).
        good = [r for r in rounds if r["outcome"] == "passed"]
        assert sorted(r["vantage"] for r in good) == sorted(AGENTS * 2), rounds
        for agent in AGENTS:
            assert sum(r["vantage"] == agent for r in rounds) <= 3, rounds
        assert all(r["outcome"] in ("passed", "failed") and r["paths"] == 12 for r in rounds), rounds
        assert all(datetime.fromisoformat(r["started_at"]) >= began for r in rounds), (began, rounds)
    print(f"healthy: {report['duration_seconds']:.2f} s for 2 servers x 2 agents x 2 rounds")

    done = service.verify("se-got-wg-0001")  # the aggregator's inventory has no such relay: nothing is asked
    assert done.returncode == 2 and "did you mean se-got-wg-001" in done.stderr, done.stderr

    junit = service.directory / "verify.xml"
    done = service.verify("se-got-wg-002", "--junit", str(junit))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "FAILED se-got-wg-002 at forward: forward_timeout" in done.stdout, done.stdout
    assert f"se-got-wg-002 failed from {', '.join(AGENTS)}" in done.stdout, done.stdout
    root = ET.parse(junit).getroot()  # noqa: S314 - our own output, the thing under test
    failure = root.find(".//testcase[@name='se-got-wg-002']/failure")
    assert failure is not None and "forward" in (failure.get("message") or "")


def test_with_every_agent_offline_a_verification_is_inconclusive(service: Service) -> None:
    all_agents_ok(service)
    for agent in AGENTS:
        assert stop(service.processes[agent]) == 0
    until(lambda: set(service.agents().values()) == {"offline"}, "both agents offline", service)
    done = service.verify("se-got-wg-001", "--json")
    assert done.returncode == 3, (done.stdout, done.stderr)
    report = json.loads(done.stdout)
    assert report["verdict"] == "inconclusive" and report["servers"][0]["verdict"] == "inconclusive"
    assert "no agent is online" in report["servers"][0]["summary"]


@pytest.mark.asyncio
async def test_a_malformed_command_or_one_for_relays_elsewhere_is_counted_and_ignored(service: Service) -> None:
    await asyncio.to_thread(all_agents_ok, service)
    agent = AGENTS[0]
    counted = 'wgprobe_agent_commands_total{outcome="%s"}'

    def command(*servers: str) -> bytes:
        made = Command(request_id=uuid.uuid4().hex, servers=servers, issued_at=datetime.now(UTC))
        return made.model_dump_json().encode()

    async with connect(service.broker.section(AGGREGATOR_USER), "test-commander") as connection:
        await connection.subscribe([RESULTS_FILTER])
        topic = command_topic(agent)
        await connection.publish(topic, b'{"request_id": "x", "servers": "all"', timeout=10)  # not even JSON
        await connection.publish(topic, command("no-such-relay"), timeout=10)
        good = command("se-got-wg-001", "elsewhere-wg-999")
        await connection.publish(topic, good, timeout=10)

        request_id = Command.model_validate_json(good).request_id
        tagged: list[ResultMessage] = []

        async def answered() -> bool:
            while (message := await connection.receive(timeout=0.05)) is not None:
                result = ResultMessage.model_validate_json(message.payload)
                if result.request_id is not None:
                    tagged.append(result)
            return bool(tagged)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await answered():
            assert loop.time() < deadline, service.logs(agent)[-3000:]
    # The good command is answered for the relay the agent has, on every path, and for nothing else.
    assert [(r.server, r.agent, r.request_id, len(r.paths)) for r in tagged] == [
        ("se-got-wg-001", agent, request_id, 12)
    ]
    assert service.agent_metric(agent, counted % "malformed") == 1
    assert service.agent_metric(agent, counted % "no_known_server") == 1
    assert service.agent_metric(agent, counted % "accepted") == 1
    assert service.processes[agent].poll() is None  # still running
    events = [json.loads(line) for line in service.logs(agent).splitlines() if line.startswith("{")]
    unknown = [e for e in events if e.get("event") == "command_unknown_relays"]
    assert unknown and "elsewhere-wg-999" in unknown[0]["relays"]
    # And a verification through the aggregator still works.
    done = await asyncio.to_thread(service.verify, "se-got-wg-003")
    assert done.returncode == 0, (done.stdout, done.stderr)
