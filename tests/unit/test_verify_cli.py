"""`probe verify` as a pipeline runs it: a process against a `probe sim up` process (loopback, no root). Exit codes
0/1/2/3, one JSON object on stdout, JUnit XML that parses as JUnit, unknown servers named with suggestions."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from probe.cli import run
from probe.sim.control import request
from probe.wireguard import PrivateKey

# Short timeouts keep failing paths quick; loopback round trips are well under a millisecond.
FAST = "\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
TIMEOUT = 120  # seconds: a hang guard per command


@dataclass
class Sim:
    directory: Path
    config: Path

    def fault(self, relay: str, fault: str) -> None:
        request(self.directory, {"op": "break", "relay": relay, "fault": fault})


def read_until(stream: IO[str], prefix: str) -> bool:
    """Read lines until one starts with `prefix`: True when it came, False when the stream ended first."""
    return any(line.startswith(prefix) for line in stream)


@contextmanager
def sim_fleet(directory: Path, relays: int = 5) -> Iterator[Sim]:
    """`probe sim up` as a process, with a config of short timeouts beside its own; stopped by its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "probe", "sim", "up", "--dir", str(directory), "--relays", str(relays)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if not read_until(proc.stdout, "ready"):
            pytest.fail(f"probe sim up ended: {proc.stderr.read() if proc.stderr else ''}")
        config = directory / "agent-fast.toml"
        config.write_text((directory / "agent.toml").read_text() + FAST)
        yield Sim(directory, config)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def healed(sim: Sim) -> Sim:
    """The fleet with every fault healed and the outside hosts up."""
    request(sim.directory, {"op": "outside", "up": True})
    for n in range(1, 6):
        request(sim.directory, {"op": "heal", "relay": f"se-got-wg-00{n}"})
    return sim


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with sim_fleet(tmp_path_factory.mktemp("sim")) as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Sim) -> Iterator[Sim]:
    yield sim_process
    healed(sim_process)


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "probe", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env
    )


def check_junit(path: Path) -> dict[str, ET.Element]:
    """Parse a JUnit file and check it is JUnit as CI systems read it; the testcases by name."""
    root = ET.parse(path).getroot()  # noqa: S314 - our own output, the thing under test
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    counted = {"failures": "failure", "errors": "error", "skipped": "skipped"}
    assert int(suite.get("tests", "-1")) == len(cases) == int(root.get("tests", "-1"))
    for attribute, child in counted.items():
        total = sum(1 for case in cases if case.find(child) is not None)
        assert int(suite.get(attribute, "-1")) == total == int(root.get(attribute, "-1")), attribute
    for case in cases:
        assert case.get("name") and case.get("classname")
        assert float(case.get("time", "x")) >= 0
        assert len([c for c in case if c.tag in counted.values()]) <= 1
    float(suite.get("time", "x"))
    return {case.get("name", ""): case for case in cases}


def test_a_healthy_location_is_verified_and_exits_0(sim: Sim, tmp_path: Path) -> None:
    junit = tmp_path / "verify.xml"
    done = probe("verify", "--location", "se-got", "--config", str(sim.config), "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED: 5 server(s) passed every path" in done.stdout
    cases = check_junit(junit)
    assert sorted(cases) == [f"se-got-wg-00{n}" for n in range(1, 6)]
    assert all(len(case) == 0 for case in cases.values())  # a passed testcase is empty


def test_a_nat_server_exits_1_named_with_its_stage_in_json_and_junit(sim: Sim, tmp_path: Path) -> None:
    sim.fault("se-got-wg-003", "nat")
    servers = tmp_path / "servers.txt"
    servers.write_text("# the canary\nse-got-wg-001\nse-got-wg-003  # kernel 4.15\n")
    junit = tmp_path / "verify.xml"
    done = probe("verify", "--servers-file", str(servers), "--config", str(sim.config), "--json", "--junit", str(junit))
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)  # one object, nothing else on stdout
    assert (report["verdict"], report["exit_code"], report["mode"]) == ("failed", 1, "direct")
    assert report["vantage_points"] == ["sim-agent"]
    by_name = {s["server"]: s for s in report["servers"]}
    failed = by_name["se-got-wg-003"]
    assert (failed["verdict"], failed["stage"], failed["reason"]) == ("failed", "forward", "forward_timeout")
    assert len(failed["rounds"]) == 2 and failed["evidence"]
    assert all(path["stage"] == "forward" for r in failed["rounds"] for path in r["failed_paths"])
    assert "FAILED se-got-wg-003 at forward" in done.stderr  # said as soon as certain, beside the JSON
    cases = check_junit(junit)
    failure = cases["se-got-wg-003"].find("failure")
    assert failure is not None and failure.get("message") == "forward: forward_timeout"
    assert "ipv4 :51820" in (failure.text or "") and "ipv6" in (failure.text or "")


def test_an_extended_port_fault_fails_and_a_failure_stops_the_run(sim: Sim, tmp_path: Path) -> None:
    sim.fault("se-got-wg-002", "ports")
    junit = tmp_path / "verify.xml"
    done = probe("verify", "--location", "se", "--config", str(sim.config), "--junit", str(junit))
    assert done.returncode == 1, done.stderr
    assert "FAILED: 1 of 5 server(s) failed: se-got-wg-002 (handshake: port_unreachable)" in done.stdout
    cases = check_junit(junit)
    assert cases["se-got-wg-002"].find("failure") is not None
    # Servers not judged when the run stopped at the failure are skipped, never passed.
    for name, case in cases.items():
        assert name == "se-got-wg-002" or len(case) == 0 or case.find("skipped") is not None


def test_usage_errors_exit_2_and_name_the_problem(sim: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In this process (each is refused before anything is probed): the same parser and error boundary as `probe`.
    config = str(sim.config)
    listing = tmp_path / "servers.txt"
    listing.write_text("se-got-wg-001\nse-got-wg-0003\n")
    for args, words in (
        (
            ["se-got-wg-01", "sx-got-wg-002", "--config", config],
            ["'se-got-wg-01' (did you mean se-got-wg-001", "sx-got"],
        ),
        (["--servers-file", str(listing), "--config", config], ["'se-got-wg-0003'", "did you mean se-got-wg-003"]),
        (["--location", "de-fra", "--config", config], ["--location", "de-fra"]),
        (["--config", config], ["name the servers"]),
        (["se-got-wg-001", "--config", config, "--aggregator", "http://127.0.0.1:9"], ["--config is for"]),
        (["se-got-wg-001", "--aggregator", "ftp://127.0.0.1:9"], ["--aggregator", "http://HOST:PORT"]),
        (["se-got-wg-001", "--aggregator", "http://u:p@127.0.0.1:9"], ["no credentials"]),
        (["se-got-wg-001", "--aggregator", "http://127.0.0.1:99999"], ["not a URL"]),
        (["se-got-wg-001", "--aggregator", "http://127.0.0.1:9", "--timeout", "soon"], ["--timeout"]),
        (["se-got-wg-001", "--config", config, "--timeout", "10s"], ["--timeout", "--aggregator"]),
        (["se-got-wg-001", "--config", config, "--every", "10s"], ["--soak"]),
        (["se-got-wg-001", "--config", config, "--soak", "soon"], ["--soak", "not a duration"]),
        (["se-got-wg-001", "--config", config, "--rounds", "2", "--fail-rounds", "3"], ["--fail-rounds"]),
        (["se-got-wg-001", "--config", config, "--baseline", "control", "--max-success-drop", "2"], ["between 0"]),
        (["se-got-wg-001", "--config", config, "--junit", str(tmp_path / "no" / "such" / "dir.xml")], ["--junit"]),
        (["se-got-wg-001", "--config", config, "--rounds", "0"], ["--rounds"]),
        # Bounded, so a typo cannot verify for ever; infinity is named as such, not as "not longer than 0".
        (["se-got-wg-001", "--config", config, "--rounds", "99999999999999999999"], ["--rounds", "1 to 100"]),
        (["se-got-wg-001", "--config", config, "--soak", "99999999999h"], ["--soak", "longer than the 7d"]),
        (["se-got-wg-001", "--config", config, "--soak", "1e309"], ["--soak", "not a finite duration"]),
        (["se-got-wg-001", "--config", config, "--soak", "5s", "--every", "10s"], ["--every", "longer than the 5s"]),
        # The canary thresholds are refused without the comparison they judge, not silently ignored.
        (["se-got-wg-001", "--config", config, "--max-success-drop", "nan"], ["--baseline control"]),
        (["se-got-wg-001", "--config", config, "--max-rtt-increase", "5ms"], ["--baseline control"]),
        (["se-got-wg-001", "--config", config, "--baseline", "control", "--max-success-drop", "nan"], ["between 0"]),
        # JUnit never replaces what is not a regular file (as root, renaming over /dev/full destroyed the device).
        (["se-got-wg-001", "--config", config, "--junit", str(tmp_path)], ["--junit", "is a directory"]),
    ):
        code: int | str | None
        try:
            code = run(["verify", *args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2, (args, out, err)
        assert all(word in err for word in words), (args, err)
        assert "Traceback" not in err and "verifying" not in out  # refused before probing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_soak_reports_what_it_saw_and_never_passes(sim: Sim, tmp_path: Path, signum: int) -> None:
    # A CI job cancelled (SIGTERM) or Ctrl-C: the report, the JSON and the JUnit file of the passes so far, exit 3.
    junit = tmp_path / "verify.xml"
    args = ["se-got-wg-001", "--config", str(sim.config), "--soak", "10m", "--every", "1s", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "probe", "verify", *args, "--junit", str(junit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert read_until(proc.stderr, "soak pass 2"), "the soak ended before its second pass"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["verdict"] == "inconclusive"
    assert report["summary"].startswith("INCONCLUSIVE: interrupted")
    assert report["soak"]["passes"] >= 2
    assert check_junit(junit)["se-got-wg-001"] is not None


def test_a_password_in_the_aggregator_url_is_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["verify", "se-got-wg-001", "--aggregator", "http://user:hunter2@127.0.0.1:9/"])
    err = capsys.readouterr().err
    assert code == 2 and "no credentials" in err
    assert "hunter2" not in err and "user" not in err


def test_junit_goes_through_a_symlink_and_into_a_fifo_without_replacing_either(sim: Sim, tmp_path: Path) -> None:
    target = tmp_path / "target.xml"
    target.write_text("old")
    link = tmp_path / "link.xml"
    link.symlink_to(target)
    done = probe("verify", "se-got-wg-001", "--config", str(sim.config), "--junit", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and check_junit(target)["se-got-wg-001"] is not None

    fifo = tmp_path / "junit.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    done = probe("verify", "se-got-wg-001", "--config", str(sim.config), "--junit", str(fifo))
    data, _ = reader.communicate(timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still the FIFO, not a file renamed over it
    assert ET.fromstring(data).tag == "testsuites"  # noqa: S314 - our own output


def test_a_junit_file_that_cannot_be_written_keeps_the_verdicts_exit(sim: Sim) -> None:
    # /dev/full takes the open and refuses the write (ENOSPC): after the verdict, which must still decide the exit.
    done = probe("verify", "se-got-wg-001", "--config", str(sim.config), "--json", "--junit", "/dev/full")
    assert done.returncode == 2 and "--junit /dev/full: cannot write" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # the device is still a device
    sim.fault("se-got-wg-002", "nat")
    done = probe("verify", "se-got-wg-002", "--config", str(sim.config), "--junit", "/dev/full")
    assert done.returncode == 1 and "FAILED" in done.stdout and "cannot write" in done.stderr


def test_an_agent_whose_own_network_is_down_exits_3(sim: Sim) -> None:
    request(sim.directory, {"op": "outside", "up": False})
    done = probe("verify", "se-got-wg-001", "se-got-wg-002", "--config", str(sim.config), "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "inconclusive"
    assert {s["verdict"] for s in report["servers"]} == {"inconclusive"}


def test_probe_server_and_sweep_do_not_blame_the_relays_when_this_host_cannot_reach_the_outside(sim: Sim) -> None:
    # The same rule as the agent's and verify's: a failure seen while the control check fails is exit 3, not 1.
    request(sim.directory, {"op": "outside", "up": False})
    for command in (["server", "se-got-wg-001"], ["sweep"]):
        done = probe(*command, "--config", str(sim.config))
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        assert "could not judge: this host's own check of the outside failed" in done.stderr
    # With the outside back, a relay's own fault is the relay's again (the control check holds).
    healed(sim)
    sim.fault("se-got-wg-002", "nat")
    done = probe("server", "se-got-wg-002", "--config", str(sim.config), "--json")
    assert done.returncode == 1, done.stderr
    assert "could not judge" not in done.stderr


def test_a_host_that_cannot_send_at_all_exits_3(tmp_path: Path) -> None:
    # A UDP socket may not send to the broadcast address without SO_BROADCAST: connect() fails locally, as when this
    # host's own network is down (socket_error). Nothing leaves the machine; no control check is needed for it.
    key = tmp_path / "agent.key"
    key.write_text(PrivateKey.generate().to_base64() + "\n")
    key.chmod(0o600)
    public = base64.b64encode(PrivateKey.generate().public_key().raw).decode()
    (tmp_path / "fleet.toml").write_text(
        f'[[relays]]\nname = "xx-one-wg-001"\npublic_key = "{public}"\nipv4 = "255.255.255.255"\nmain_port = 51820\n'
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nname = "test-agent"\n[[identities]]\nprivate_key_file = "agent.key"\nipv4 = "10.64.0.2"\n'
        '[inventory]\nsource = "fleet.toml"\n[checks]\nforward_target = "127.0.0.1"\n'
        "[probe]\ntimeout = 0.2\nhandshake_timeout = 0.1\nhandshake_attempts = 1\n"
    )
    done = probe("verify", "xx-one-wg-001", "--config", str(config))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "socket_error" in done.stdout and "INCONCLUSIVE" in done.stdout


def test_the_help_documents_the_exit_codes() -> None:
    done = probe("verify", "--help")
    assert done.returncode == 0
    for line in ("0  verified", "1  a server failed", "2  usage or config error", "3  inconclusive"):
        assert line in done.stdout
