"""`probe agent` as a real process: a simulated fleet (`probe sim up`, a process too), a real mosquitto with password
file and ACL, and a subscriber reading what the broker got. Every relay's results arrive on their topics with the
right verdicts, a fault injected live shows in the next round, SIGHUP follows the inventory, SIGTERM exits 0 with
the status offline, and SIGKILL leaves the last will saying so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from probe import __version__
from probe.messages import RESULTS_FILTER, STATUS_FILTER, AgentStatus, ResultMessage
from probe.mqtt import connect
from tests.integration.broker import AGGREGATOR_USER, Mosquitto, free_port
from tests.integration.mqtt_support import wait_until

pytestmark = pytest.mark.integration
AGENT = "sim-agent"  # the name `probe sim up` gives its first agent; the broker user must be the same (ACL %u)


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


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    """`probe sim up` with three relays, se-got-wg-002 with its NAT broken; stopped by PID."""
    directory = tmp_path / "sim"
    proc = probe_process(
        "sim",
        "up",
        "--relays",
        "3",
        "--dir",
        str(directory),
        "--fault",
        "se-got-wg-002:nat",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
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


def agent_config(
    fleet: Path, broker: Mosquitto, http_port: int | None = None, *, refresh_seconds: float | None = None
) -> Path:
    credentials = broker.users.get(AGENT) or broker.add_user(AGENT)
    config = fleet / "agent-mqtt.toml"
    base = (fleet / "agent.toml").read_text()
    if refresh_seconds is not None:  # in the [inventory] table `probe sim up` wrote
        source = 'source = "relays.json"\n'
        assert source in base
        base = base.replace(source, f"{source}refresh_seconds = {refresh_seconds}\n")
    config.write_text(
        base
        + "\n[schedule]\ninterval_seconds = 2\n"
        + "[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
        + f'[mqtt]\nurl = "{broker.url}"\nusername = "{AGENT}"\npassword_file = "{credentials.password_file}"\n'
        + f'[spool]\npath = "{fleet / "spool.sqlite"}"\n'
        + f'[http]\nlisten = "127.0.0.1:{http_port or free_port()}"\n'
    )
    return config


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - a loopback URL made by the test
        body: bytes = answer.read()
    return body.decode()


@dataclass
class Seen:
    results: list[ResultMessage] = field(default_factory=list)
    statuses: list[AgentStatus] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)
    cleared: list[str] = field(default_factory=list)  # topics of empty payloads: retained results deleted

    def of(self, relay: str) -> list[ResultMessage]:
        return [r for r in self.results if r.server == relay]


@contextlib.asynccontextmanager
async def watching(broker: Mosquitto) -> AsyncIterator[Seen]:
    """Everything the broker delivers on the results and status topics, as the aggregator would see it."""
    seen = Seen()
    async with connect(broker.section(AGGREGATOR_USER), "test-watcher") as connection:
        await connection.subscribe([RESULTS_FILTER, STATUS_FILTER])

        async def pump() -> None:
            while True:
                message = await connection.receive()
                if message is None:
                    continue
                seen.topics.add(message.topic)
                if not message.payload:
                    seen.cleared.append(message.topic)
                elif "/results/" in message.topic:
                    seen.results.append(ResultMessage.model_validate_json(message.payload))
                else:
                    seen.statuses.append(AgentStatus.model_validate_json(message.payload))

        task = asyncio.create_task(pump())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.asyncio
async def test_results_arrive_with_their_verdicts_a_live_fault_shows_and_sigterm_ends_in_order(
    fleet: Path, broker: Mosquitto
) -> None:
    port = free_port()
    config = agent_config(fleet, broker, port)
    async with watching(broker) as seen:
        agent = probe_process("agent", "--config", str(config), "--log-format", "json", stderr=subprocess.PIPE)
        try:
            await wait_until(lambda: all(len(seen.of(f"se-got-wg-00{n}")) >= 2 for n in (1, 2, 3)), "two rounds")
            # The agent's own endpoints: its metrics, and a relay probed now through it, blackbox-style.
            own = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
            assert "wgprobe_agent_probes_total" in own and "wgprobe_agent_broker_connected 1.0" in own
            scraped = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/probe?target=se-got-wg-002")
            assert "probe_success 0.0" in scraped
            scraped = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/probe?target=se-got-wg-001")
            assert "probe_success 1.0" in scraped
            assert all(r.ok and r.control_ok for r in seen.of("se-got-wg-001"))
            assert {r.reason for r in seen.of("se-got-wg-002")} == {"forward_timeout"}
            assert f"wgprobe/v1/results/{AGENT}/se-got-wg-003" in seen.topics
            assert seen.statuses and seen.statuses[-1].online and seen.statuses[-1].inventory_size == 3
            # The status says which round was last done, how long it took, and how old the inventory is. The
            # agent's first round is only the slots left when it started: wait for a status after a whole one.
            first = min(r.round for r in seen.results)
            await wait_until(lambda: (seen.statuses[-1].round or 0) > first, "a status after a whole round")
            status = seen.statuses[-1]
            assert status.version == __version__ and status.interval_seconds == 2.0
            assert status.round_seconds is not None and status.round_seconds > 0.0
            assert status.round is not None and status.round < max(r.round for r in seen.results)
            await wait_until(
                lambda: all(any(r.round == status.round for r in seen.of(f"se-got-wg-00{n}")) for n in (1, 2, 3)),
                "every relay's result of the status's round",
            )
            assert status.started_at is not None and status.updated_at is not None
            running_for = (status.updated_at - status.started_at).total_seconds()
            assert status.inventory_age_seconds == pytest.approx(running_for, abs=0.5)  # loaded at the start

            subprocess.run(
                [sys.executable, "-m", "probe", "sim", "break", "se-got-wg-003", "nat", "--dir", str(fleet)],
                check=True,
                capture_output=True,
            )
            count = len(seen.of("se-got-wg-003"))
            await wait_until(lambda: len(seen.of("se-got-wg-003")) >= count + 2, "rounds after the break")
            assert seen.of("se-got-wg-003")[-1].reason == "forward_timeout"

            relays = fleet / "relays.json"
            whole = json.loads(relays.read_text())
            doc = json.loads(json.dumps(whole))
            doc["wireguard"]["relays"] = doc["wireguard"]["relays"][:2]
            relays.write_text(json.dumps(doc))
            agent.send_signal(signal.SIGHUP)
            await wait_until(lambda: seen.statuses[-1].inventory_size == 2, "the inventory reloaded on SIGHUP")
            # The removed relay's retained result is deleted on the broker (an empty retained publish).
            removed_topic = f"wgprobe/v1/results/{AGENT}/se-got-wg-003"
            await wait_until(lambda: seen.cleared == [removed_topic], "the removed relay's result cleared")
            status = seen.statuses[-1]
            assert status.started_at is not None and status.updated_at is not None
            assert status.inventory_age_seconds is not None  # reloaded just now: well after the start
            assert status.inventory_age_seconds < (status.updated_at - status.started_at).total_seconds() - 1.0

            # And a relay added: probed from its next slot on (not only the one in flight when it was removed).
            relays.write_text(json.dumps(whole))
            removed_at = len(seen.of("se-got-wg-003"))
            agent.send_signal(signal.SIGHUP)
            await wait_until(lambda: seen.statuses[-1].inventory_size == 3, "the added relay taken on SIGHUP")
            await wait_until(lambda: len(seen.of("se-got-wg-003")) >= removed_at + 3, "the added relay probed")
            assert seen.of("se-got-wg-003")[-1].reason == "forward_timeout"  # still broken: the sim's, not ours
        except AssertionError as exc:
            stop(agent)
            assert agent.stderr is not None
            raise AssertionError(f"{exc}\n{agent.stderr.read().decode()[-3000:]}") from None
        finally:
            code = stop(agent)
            assert agent.stderr is not None
            log = agent.stderr.read().decode() if not agent.stderr.closed else ""
            agent.stderr.close()
        assert code == 0, log
        await wait_until(lambda: not seen.statuses[-1].online, "the offline status of an orderly stop")
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "agent_started" in events and "agent_stopped" in events and "inventory_changed" in events
    assert broker.users[AGENT].password_file.read_text().strip() not in log  # no secret in the log


def write_atomically(path: Path, doc: object) -> None:
    """The whole file or the old one, never half: the agent may read it at any moment here."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(doc))
    os.replace(part, path)


@pytest.mark.asyncio
async def test_the_inventory_is_reloaded_every_refresh_seconds_without_a_signal(fleet: Path, broker: Mosquitto) -> None:
    config = agent_config(fleet, broker, refresh_seconds=1)
    relays = fleet / "relays.json"
    whole = json.loads(relays.read_text())
    fewer = json.loads(json.dumps(whole))
    fewer["wireguard"]["relays"] = fewer["wireguard"]["relays"][:2]
    async with watching(broker) as seen:
        agent = probe_process("agent", "--config", str(config), "--log-format", "json", stderr=subprocess.PIPE)
        try:
            await wait_until(lambda: len(seen.of("se-got-wg-003")) >= 1, "se-got-wg-003 probed")
            write_atomically(relays, fewer)
            await wait_until(lambda: seen.statuses[-1].inventory_size == 2, "the removal taken by the refresh")
            write_atomically(relays, whole)
            count = len(seen.of("se-got-wg-003"))
            await wait_until(lambda: seen.statuses[-1].inventory_size == 3, "the addition taken by the refresh")
            await wait_until(lambda: len(seen.of("se-got-wg-003")) >= count + 2, "the added relay probed")
        finally:
            code = stop(agent)
            assert agent.stderr is not None
            log = agent.stderr.read().decode()
            agent.stderr.close()
            if sys.exc_info()[0] is AssertionError:
                print(log[-3000:])  # shown with the failure: what the agent said meanwhile
        assert code == 0, log
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert events.count("inventory_changed") == 2 and "inventory_reloaded" not in events  # no SIGHUP was sent


@pytest.mark.asyncio
async def test_a_relay_removed_while_the_agent_was_stopped_is_cleared_at_its_next_start(
    fleet: Path, broker: Mosquitto
) -> None:
    config = agent_config(fleet, broker)
    relays = fleet / "relays.json"
    fewer = json.loads(relays.read_text())
    fewer["wireguard"]["relays"] = fewer["wireguard"]["relays"][:2]
    removed_topic = f"wgprobe/v1/results/{AGENT}/se-got-wg-003"
    async with watching(broker) as seen:
        first = probe_process("agent", "--config", str(config), stderr=subprocess.DEVNULL)
        try:
            await wait_until(lambda: len(seen.of("se-got-wg-003")) >= 1, "se-got-wg-003 probed")
        finally:
            assert stop(first) == 0
        write_atomically(relays, fewer)  # while no agent runs
        second = probe_process("agent", "--config", str(config), "--log-format", "json", stderr=subprocess.PIPE)
        try:
            await wait_until(lambda: seen.cleared == [removed_topic], "se-got-wg-003's retained result cleared")
        finally:
            code = stop(second)
            assert second.stderr is not None
            log = second.stderr.read().decode()
            second.stderr.close()
        assert code == 0, log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    cleared = [entry for entry in entries if entry["event"] == "results_cleared"]
    assert [(entry["relays"], entry["names"]) for entry in cleared] == [(1, "se-got-wg-003")]


@pytest.mark.asyncio
async def test_sigkill_leaves_the_last_will_saying_offline(fleet: Path, broker: Mosquitto) -> None:
    config = agent_config(fleet, broker)
    async with watching(broker) as seen:
        agent = probe_process("agent", "--config", str(config), stderr=subprocess.DEVNULL)
        try:
            await wait_until(lambda: any(s.online for s in seen.statuses), "the agent online")
        finally:
            stop(agent, signal.SIGKILL)
        await wait_until(lambda: not seen.statuses[-1].online, "the last will: offline")


def test_a_missing_mqtt_table_or_a_readable_password_file_is_refused_before_anything_runs(fleet: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "probe", "agent", "--config", str(fleet / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "[mqtt] is required" in done.stderr
    secret = fleet / "loose.password"
    secret.write_text("hunter2\n")
    os.chmod(secret, 0o644)
    config = fleet / "agent-loose.toml"
    config.write_text(
        (fleet / "agent.toml").read_text()
        + f'\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\nusername = "{AGENT}"\npassword_file = "{secret}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "probe", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "chmod 600" in done.stderr and "hunter2" not in done.stderr
