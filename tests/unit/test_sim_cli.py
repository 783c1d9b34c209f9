"""`probe sim up` as a real process, probed by `probe server` and `probe sweep` as real processes, changed live by
`probe sim break/heal`, and stopped by its PID with SIGTERM: exit 0, nothing left behind but keys and configs."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from probe.inventory import Relay
from probe.sim.control import handle
from probe.sim.fleet import SimFleet

FAST = "\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
START_GUARD = 60.0  # seconds: a hang guard only; a fleet of a few relays is up in well under a second


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    directory: Path
    banner: list[str]

    @property
    def config(self) -> Path:
        return self.directory / "agent-fast.toml"


def probe_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`probe ARGS...`; `probe sim ...` runs as `python -m probe.sim ...`, the same handlers on their own."""
    command = ["-m", "probe.sim", *args[1:]] if args[:1] == ("sim",) else ["-m", "probe", *args]
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120, check=False)


def start(directory: Path, *args: str) -> Running:
    """`probe sim up` in the background, returned once it printed its `ready` line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "probe.sim", "up", "--dir", str(directory), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + START_GUARD
    while b"\nready" not in b"\n" + seen:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if readable else b""
        if not chunk:
            raise AssertionError(f"probe sim up did not become ready: {seen!r} {stop(proc)}")
        seen += chunk
    return Running(proc, directory, seen.decode().splitlines())


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """SIGTERM by PID; (exit code, rest of stdout, stderr)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Running]:
    directory = tmp_path / "sim"
    running = start(directory, "--relays", "3", "--fault", "se-got-wg-002:nat", "--identities", "4")
    try:
        running.config.write_text((directory / "agent.toml").read_text() + FAST)
        yield running
    finally:
        code, _, err = stop(running.proc)
        assert code == 0, err


def server(running: Running, name: str, *args: str) -> tuple[int, dict[str, object]]:
    done = probe_cli("server", name, "--config", str(running.config), "--json", *args)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_server_and_sweep_against_a_running_sim_with_live_faults(sim: Running) -> None:
    assert any("3 relays se-got-wg-001..se-got-wg-003" in line for line in sim.banner), sim.banner
    code, doc = server(sim, "se-got-wg-001")
    assert (code, doc["ok"], len(doc["paths"])) == (0, True, 12), doc  # type: ignore[arg-type]
    code, doc = server(sim, "se-got-wg-002", "--port", "51820")
    assert (code, doc["reason"]) == (1, "forward_timeout")

    swept = probe_cli("sweep", "--config", str(sim.config), "--json")
    assert swept.returncode == 1, swept.stderr
    results = {doc["server"]: doc for doc in map(json.loads, swept.stdout.splitlines())}
    assert {name: doc["reason"] for name, doc in results.items()} == {
        "se-got-wg-001": None,
        "se-got-wg-002": "forward_timeout",
        "se-got-wg-003": None,
    }

    broke = probe_cli("sim", "break", "se-got-wg-001", "ports", "--dir", str(sim.directory))
    assert broke.returncode == 0 and "se-got-wg-001: faults now ports" in broke.stdout, broke.stderr
    code, doc = server(sim, "se-got-wg-001", "--port", "4000")
    assert (code, doc["reason"]) == (1, "port_unreachable")
    assert server(sim, "se-got-wg-001", "--port", "51820")[0] == 0

    status = probe_cli("sim", "status", "--dir", str(sim.directory), "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["faults"] == {"se-got-wg-001": ["ports"], "se-got-wg-002": ["nat"]}
    assert state["relays"] == 3 and state["totals"]["handshakes"] > 0

    healed = probe_cli("sim", "heal", "se-got-wg-002", "--dir", str(sim.directory))
    assert healed.returncode == 0 and "faults now none" in healed.stdout
    assert probe_cli("sim", "heal", "se-got-wg-001", "ports", "--dir", str(sim.directory)).returncode == 0
    swept = probe_cli("sweep", "--config", str(sim.config), "--json")
    assert swept.returncode == 0, swept.stdout


def test_a_sweep_of_many_rounds_keeps_no_result_past_its_handling(
    sim: Running, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `probe sweep --rounds N` kept every result to the end: tens of kB each, gigabytes for a long sweep of a big
    # fleet. It keeps a tally now; a result lives while it is printed and counted. In process, to watch them.
    from probe import cli, cli_probe
    from probe.results import ServerResult
    from probe.runner import Prober

    made: list[weakref.ref[ServerResult]] = []
    alive_at_each_probe: list[int] = []
    real = Prober.probe_relay

    async def probe_relay(self: Prober, relay: Relay, **kw: Any) -> ServerResult:
        gc.collect()
        alive_at_each_probe.append(sum(ref() is not None for ref in made))
        result = await real(self, relay, **kw)
        made.append(weakref.ref(result))
        return result

    monkeypatch.setattr(Prober, "probe_relay", probe_relay)
    monkeypatch.setattr(cli_probe, "_lock_keys", lambda config: None)  # a lock taken in process outlives the test
    code = cli.run(["sweep", "--config", str(sim.config), "--rounds", "4", "--json"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(printed) == len(made) == 12  # se-got-wg-002's NAT is broken
    assert {doc["server"] for doc in printed if not doc["ok"]} == {"se-got-wg-002"}
    assert max(alive_at_each_probe) == 0, alive_at_each_probe  # every earlier round's before: up to 9


def test_control_errors_are_usage_errors(sim: Running) -> None:
    unknown = probe_cli("sim", "break", "se-got-wg-009", "nat", "--dir", str(sim.directory))
    assert unknown.returncode == 2 and "se-got-wg-001..se-got-wg-003" in unknown.stderr
    bogus = probe_cli("sim", "break", "se-got-wg-001", "bogus", "--dir", str(sim.directory))
    assert bogus.returncode == 2 and "unknown fault kind" in bogus.stderr
    twice = probe_cli("sim", "up", "--dir", str(sim.directory))
    assert twice.returncode == 2 and "already running" in twice.stderr
    detail = probe_cli("sim", "status", "--dir", str(sim.directory), "--relay", "se-got-wg-002")
    assert detail.returncode == 0 and "faults: nat" in detail.stdout
    sideways = probe_cli("sim", "outside", "sideways", "--dir", str(sim.directory))
    assert sideways.returncode == 2 and "invalid choice: 'sideways'" in sideways.stderr
    down = probe_cli("sim", "outside", "down", "--dir", str(sim.directory))
    assert down.returncode == 0 and "outside hosts: down" in down.stdout
    code, doc = server(sim, "se-got-wg-001", "--port", "51820", "--family", "ipv4")
    # The path fails where the outside is missing, and the control check says this host cannot reach it either:
    # could not judge (3), not the relay's failure (1).
    assert (code, doc["reason"]) == (3, "forward_timeout")
    assert probe_cli("sim", "outside", "up", "--dir", str(sim.directory)).returncode == 0
    assert server(sim, "se-got-wg-001", "--port", "51820")[0] == 0


def test_sigterm_stops_the_sim_cleanly_and_leaves_keys_and_configs(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory-name-long-enough-that-the-control-socket-path-passes-a-unix-address-limit"
    running = start(directory, "--relays", "2", "--ipv6", "none", "--agents", "2", "--identities", "1")
    try:
        assert len(str(directory / "sim.sock")) > 108 and (directory / "sim.sock").exists()
        state = json.loads((directory / "sim.json").read_text())
        assert state["pid"] == running.proc.pid
        assert (directory / "sim.sock").stat().st_mode & 0o777 == 0o600
        assert probe_cli("sim", "status", "--dir", str(directory)).returncode == 0
    finally:
        code, out, err = stop(running.proc)
    assert code == 0 and "stopped:" in out, err
    assert not (directory / "sim.sock").exists() and not (directory / "sim.json").exists()
    assert sorted(p.name for p in directory.iterdir()) == [
        "agent-2.toml",
        "agent.toml",
        "keys",
        "relays.json",
        "relays.seed",
    ]
    assert {p.stat().st_mode & 0o777 for p in (directory / "keys").iterdir()} == {0o600}
    relays = json.loads((directory / "relays.json").read_text())["wireguard"]["relays"]
    assert [r["ipv6_addr_in"] for r in relays] == [None, None]
    gone = probe_cli("sim", "status", "--dir", str(directory))
    assert gone.returncode == 2 and "no simulated fleet is running" in gone.stderr


def test_a_restarted_sim_keeps_its_relay_and_agent_keys(tmp_path: Path) -> None:
    directory = tmp_path / "sim"
    keys = []
    for _ in range(2):
        running = start(directory, "--relays", "2", "--identities", "1")
        try:
            doc = json.loads((directory / "relays.json").read_text())
            agent_key = (directory / "keys" / "sim-agent-1.key").read_text()
            keys.append(([r["public_key"] for r in doc["wireguard"]["relays"]], agent_key))
        finally:
            assert stop(running.proc)[0] == 0
    assert keys[0] == keys[1]


def test_bad_up_options_are_usage_errors(tmp_path: Path) -> None:
    for args, error in [
        (["--relays", "0"], "--relays"),
        (["--ipv6", "both"], "--ipv6"),
        (["--fault", "se-got-wg-001:bogus"], "unknown fault kind"),
        (["--fault", "se-got-wg-007:nat"], "no relay 'se-got-wg-007'"),
        (["--main-port", "80"], "1024-65535"),
    ]:
        done = probe_cli("sim", "up", "--dir", str(tmp_path / "sim"), *args)
        assert done.returncode == 2 and error in done.stderr, (args, done.stderr)


@pytest.mark.asyncio
async def test_the_control_channel_refuses_malformed_requests_without_changing_anything(tmp_path: Path) -> None:
    async with SimFleet(2, clients=[], port_ranges=()) as fleet:
        for line, error in [
            (b"not json", "not a JSON request"),
            (b"[1, 2]", "a request is a JSON object"),
            (b'{"op": "explode", "relay": "se-got-wg-001"}', "op must be"),
            (b'{"op": "break"}', "break needs a relay"),
            (b'{"op": "break", "relay": "se-got-wg-001"}', "break needs a fault"),
            (b'{"op": "break", "relay": "se-got-wg-001", "fault": "loss:900"}', "1..100"),
            (b'{"op": "heal", "relay": "se-got-wg-001", "kind": "nope"}', "unknown fault kind"),
            (b'{"op": "status", "relay": 7}', "relay must be a string"),
        ]:
            response, change = handle(fleet, line)
            assert (response["ok"], change) == (False, None) and error in response["error"], (line, response)
        assert fleet.status()["faults"] == {}
        response, change = handle(fleet, b'{"op": "break", "relay": "se-got-wg-002", "fault": "delay:40"}')
        assert response == {"ok": True, "relay": "se-got-wg-002", "faults": ["delay:40"]}
        assert change == "se-got-wg-002: faults now delay:40"
        response, _ = handle(fleet, b'{"op": "heal", "relay": "se-got-wg-002", "kind": "delay"}')
        assert response["faults"] == [] and fleet.relay("se-got-wg-002").faults.delay == 0.0
