"""`probe lab` as a user runs it: up, status, break, heal, exec, down, through the real CLI in a subprocess, on a
small lab of its own (prefix wgu) so it can be built and removed independently of the shared test lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.lab import netns
from probe.lab.fleet import WG_SOCKET_DIR
from probe.lab.processes import is_running

pytestmark = pytest.mark.lab
PREFIX = os.environ.get("WGPROBE_TEST_LAB_CLI_PREFIX", "wgu")


def probe(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "probe", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


def leftovers() -> list[str]:
    found = [ns for ns in netns.list_netns() if ns.startswith(f"{PREFIX}-")]
    if WG_SOCKET_DIR.is_dir():
        found += [s.name for s in WG_SOCKET_DIR.iterdir() if s.name.startswith(PREFIX)]
    return found


def test_lab_lifecycle_through_the_cli(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    d = ["--dir", str(lab_dir)]
    up = probe("lab", "up", "--servers", "2", "--fault", "se-got-wg-002:nat", "--agents", "2", "--prefix", PREFIX, *d)
    try:
        assert "se-got-wg-001" in up.stdout and "se-got-wg-002" in up.stdout
        state = json.loads((lab_dir / "lab-state.json").read_text())
        pids = [state["reflector_pid"]] + [r["wg_pid"] for r in state["relays"].values()]
        assert all(is_running(pid, "") for pid in pids)
        assert (lab_dir / "agent.toml").exists() and (lab_dir / "agent-2.toml").exists()
        assert (lab_dir / "keys" / "lab-agent-1.key").stat().st_mode & 0o777 == 0o600

        before = leftovers()
        elsewhere = probe("lab", "down", "--dir", str(tmp_path / "not-a-lab"))
        assert elsewhere.stdout.startswith("nothing to remove")
        assert leftovers() == before, "down in a directory without a lab must not touch another lab"

        status = probe("lab", "status", *d)
        assert "nat" in status.stdout and "reflector: pid" in status.stdout

        probe("lab", "break", "se-got-wg-001", "loss:30", *d)
        assert "loss:30" in probe("lab", "status", *d).stdout
        probe("lab", "heal", "se-got-wg-001", *d)

        out = probe("lab", "exec", *d, "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert "198.18.0.11/15" in out, "exec runs in the first agent's namespace"
        out = probe("lab", "exec", "--agent", "2", *d, "--", "ip", "-o", "-4", "addr", "show", "eth0").stdout
        assert "198.18.0.12/15" in out

        bad = probe("lab", "break", "se-got-wg-009", "nat", *d, check=False)
        assert bad.returncode == 2 and "no relay 'se-got-wg-009'" in bad.stderr
        bad = probe("lab", "break", "se-got-wg-001", "explode", *d, check=False)
        assert bad.returncode == 2 and "unknown fault kind 'explode'" in bad.stderr

        # `up` over a running lab replaces it: no duplicate namespaces or processes survive.
        probe("lab", "up", "--servers", "1", "--prefix", PREFIX, *d)
        assert not any(is_running(pid, "") for pid in pids)
        assert sorted(leftovers()) == sorted(
            [
                f"{PREFIX}-inet",
                f"{PREFIX}-outside",
                f"{PREFIX}-agent-1",
                f"{PREFIX}-r-se-got-wg-001",
                f"{PREFIX}r001.sock",
            ]
        )
    finally:
        down = probe("lab", "down", *d, check=False)
    assert down.returncode == 0, down.stderr
    assert "removed namespace" in down.stdout
    assert leftovers() == [], "down must leave nothing behind"
    assert probe("lab", "down", *d).stdout.strip().startswith("nothing to remove"), "and nothing of anyone else's"


def test_lab_refuses_a_fault_for_a_relay_it_does_not_have(tmp_path: Path) -> None:
    bad = probe(
        "lab",
        "up",
        "--servers",
        "1",
        "--fault",
        "se-got-wg-007:nat",
        "--prefix",
        PREFIX,
        "--dir",
        str(tmp_path),
        check=False,
    )
    assert bad.returncode == 2
    assert "no relay 'se-got-wg-007'" in bad.stderr
    assert leftovers() == []
