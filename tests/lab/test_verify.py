"""`probe verify` against the real lab (wireguard-go relays in namespaces, nftables NAT, the agent in its own
namespace): healthy relays verified, a NAT fault and a closed extended port range failed at their stage, a fault
injected in the middle of a soak caught, and the canary comparison with a relay delayed by the NFQUEUE holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from probe.lab import fleet
from probe.lab.faults import Fault

from .conftest import Lab

pytestmark = pytest.mark.lab
FAST = "\n[probe]\ntimeout = 0.5\nhandshake_timeout = 0.3\nhandshake_attempts = 2\n"
TIMEOUT = 180  # seconds: a hang guard per command


@pytest.fixture(scope="module")
def config(lab: Lab) -> Path:
    path = lab.lab_dir / "agent-verify.toml"
    path.write_text((lab.lab_dir / "agent.toml").read_text() + FAST)
    return path


def breaks(lab: Lab, index: int, *faults: str) -> None:
    fleet.set_faults(lab.lab_dir, lab.relay(index).name, [Fault.parse(f) for f in faults])


def verify(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "probe", "verify", "--config", str(config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def server(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["servers"] if s["server"] == name)


def test_healthy_relays_are_verified(healed: Lab, config: Path) -> None:
    code, report, _ = verify(config, "--location", "se-got")
    assert code == 0 and report["verdict"] == "verified", report["summary"]
    assert len(report["servers"]) == 4 and {s["verdict"] for s in report["servers"]} == {"passed"}
    assert report["vantage_points"] == ["lab-agent"]


def test_a_nat_relay_fails_at_the_forward_stage(healed: Lab, config: Path) -> None:
    breaks(healed, 2, "nat")
    names = [relay.name for relay in healed.plan.relays]
    code, report, err = verify(config, *names, "--keep-going")
    assert code == 1
    failed = server(report, names[1])
    assert (failed["verdict"], failed["stage"], failed["reason"]) == ("failed", "forward", "forward_timeout")
    assert all(server(report, name)["verdict"] == "passed" for name in names if name != names[1])
    assert f"FAILED {names[1]} at forward: forward_timeout" in err and "lab-agent (this host)" in err


def test_a_relay_with_its_extended_ports_closed_fails(healed: Lab, config: Path) -> None:
    breaks(healed, 3, "ports")
    name = healed.relay(3).name
    code, report, _ = verify(config, name)
    assert code == 1
    failed = server(report, name)
    assert (failed["stage"], failed["reason"]) == ("handshake", "port_unreachable")
    ports = {path["port"] for path in failed["failed_paths"]}
    assert ports and 51820 not in ports  # the main port works: only the extended ranges fail


def test_a_soak_catches_a_fault_injected_in_the_middle(healed: Lab, config: Path) -> None:
    name = healed.relay(1).name
    proc = subprocess.Popen(
        [sys.executable, "-m", "probe", "verify", name, "--config", str(config), "--soak", "2m", "--every", "0.5s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("soak pass 2 "):
                break
        breaks(healed, 1, "nat")
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert f"{name} went down during the soak" in out and "FAILED" in out


def test_the_canary_comparison_fails_a_delayed_canary_and_passes_a_healthy_one(healed: Lab, config: Path) -> None:
    canary = healed.relay(1).name
    breaks(healed, 1, "delay:50")
    code, report, _ = verify(config, canary, "--baseline", "control", "--soak", "1s", "--every", "0.5s")
    assert code == 1, report["summary"]
    baseline = report["baseline"]
    assert baseline["verdict"] == "failed" and "median RTT" in baseline["detail"]
    assert baseline["rtt_increase_seconds"] > 0.080  # a round trip through the NAT enters the relay twice
    assert len(baseline["control"]["servers"]) == 3
    fleet.set_faults(healed.lab_dir, canary, [])
    code, report, _ = verify(config, canary, "--baseline", "control", "--soak", "1s", "--every", "0.5s")
    assert code == 0, report["summary"]
    assert report["baseline"]["verdict"] == "passed"
