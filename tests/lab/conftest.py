"""Lab fixtures: one real lab (wireguard-go relays in namespaces) per test session, under its own prefix so it never
touches a lab a developer has running, and torn down at the end whatever happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from probe.lab import fleet
from probe.lab.topology import LabPlan, RelayPlan

# Another prefix lets a second checkout run the lab tests at the same time on one machine (namespaces and
# wireguard-go sockets are named by the prefix).
TEST_PREFIX = os.environ.get("WGPROBE_TEST_LAB_PREFIX", "wgt")
TEST_SERVERS = 4


@dataclass
class Lab:
    lab_dir: Path
    plan: LabPlan
    public_keys: dict[str, str]

    def relay(self, index: int) -> RelayPlan:
        return self.plan.relays[index - 1]


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces); run the suite as root")
    lab_dir = tmp_path_factory.mktemp("lab")
    state = fleet.up(lab_dir, TEST_SERVERS, agents=2, prefix=TEST_PREFIX)
    try:
        doc = json.loads((lab_dir / "relays.json").read_text())
        keys = {r["hostname"]: r["public_key"] for r in doc["wireguard"]["relays"]}
        yield Lab(lab_dir, state.plan(), keys)
    finally:
        fleet.down(lab_dir, prefix=TEST_PREFIX, quiet=True)


@pytest.fixture
def healed(lab: Lab) -> Iterator[Lab]:
    """The lab with every relay healed after the test, so fault tests do not leak into each other."""
    yield lab
    for relay in lab.plan.relays:
        fleet.set_faults(lab.lab_dir, relay.name, [])


class Capture:
    """tcpdump on the outside host's link: what the internet saw."""

    def __init__(self, netns: str, bpf: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "tcpdump",
                "-n",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-w",
                str(path),
                bpf,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on eth0 ..." once the capture is armed
        assert "listening" in line, line

    def stop(self) -> list[str]:
        time.sleep(0.2)  # let in-flight packets land before stopping
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=10)
        out = subprocess.run(["tcpdump", "-n", "-r", str(self.path)], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()


@pytest.fixture
def capture(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Capture]]:
    started: list[Capture] = []

    def start(bpf: str = "icmp or icmp6 or udp port 7777") -> Capture:
        cap = Capture(lab.plan.outside_netns, bpf, tmp_path / f"cap{len(started)}.pcap")
        started.append(cap)
        return cap

    yield start
    for cap in started:
        if cap.proc.poll() is None:
            cap.proc.kill()
            cap.proc.communicate()
