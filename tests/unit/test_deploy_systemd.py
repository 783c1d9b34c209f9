"""deploy/systemd: the units pass `systemd-analyze verify` and its offline security review, carry the hardening and
the signals the services rely on, and the code runs under the memory protection the units ask for."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents.agent import STOP_GRACE

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
AGENT, AGGREGATOR = UNITS / "wgprobe-agent.service", UNITS / "wgprobe-aggregator.service"
PROBE = Path(sys.executable).with_name("probe")
MAX_EXPOSURE = 2.0  # systemd-analyze security: "OK" starts below 4.0; ours are far below
OUTBOX_FLUSH_ALLOWANCE = 10.0  # the outbox's own flush deadline is smaller; the stop timeout must cover both


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is needed (Debian: systemd)"
    return found


def directives(unit: Path) -> dict[str, list[str]]:
    """Every Key=value of a unit file, keys repeated as systemd allows."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed(unit: Path, directory: Path, text: str | None = None) -> Path:
    """A copy of the unit whose ExecStart points at this checkout's `probe` (verify checks that it exists)."""
    copy = directory / unit.name
    copy.write_text((text or unit.read_text()).replace("/opt/wgprobe/bin/probe", str(PROBE)))
    return copy


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=units[0].parent,
    )


def test_systemd_analyze_verifies_both_units(tmp_path: Path) -> None:
    assert PROBE.exists()
    done = verify(installed(AGENT, tmp_path), installed(AGGREGATOR, tmp_path))
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("ProtectSystem=strict", "ProtectSystem=stirct", "stirct"),  # a bad value, silently ignored by systemd
        ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "NoNewPrivilege"),  # an unknown key, likewise
    ],
)
def test_verify_would_catch_a_broken_unit(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    text = AGENT.read_text()
    assert old in text
    done = verify(installed(AGENT, tmp_path, text.replace(old, new)))
    assert complaint in done.stdout + done.stderr


@pytest.mark.parametrize("unit", [AGENT, AGGREGATOR], ids=lambda unit: unit.stem)
def test_the_offline_security_review_rates_the_units_ok(tmp_path: Path, unit: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(installed(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found[1]) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("unit", [AGENT, AGGREGATOR], ids=lambda unit: unit.stem)
def test_the_units_run_unprivileged_and_read_only(unit: Path) -> None:
    d = directives(unit)
    assert d["DynamicUser"] == ["yes"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert d["ReadOnlyPaths"] == ["/etc/wgprobe"]
    assert d["MemoryDenyWriteExecute"] == ["yes"]
    assert "AF_NETLINK" not in d["RestrictAddressFamilies"][0]  # no netns: systemd's NetworkNamespacePath= does that
    assert d["KillSignal"] == ["SIGTERM"]
    assert float(d["TimeoutStopSec"][0]) > STOP_GRACE + OUTBOX_FLUSH_ALLOWANCE
    assert float(d["RestartSec"][0]) > 0 and d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["2"]  # a config error is not fixed by restarting
    for credential in d["LoadCredential"]:
        assert credential.split(":", 1)[1].startswith("/etc/wgprobe/")
    start = d["ExecStart"][0].split()
    assert start[0] == "/opt/wgprobe/bin/probe" and start[1] == unit.stem.removeprefix("wgprobe-")


def test_the_agent_unit_reloads_on_sighup_and_writes_only_its_state() -> None:
    d = directives(AGENT)
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["StateDirectory"] == ["wgprobe-agent"]
    assert d["ReadWritePaths"] == ["/var/lib/wgprobe-agent"]
    assert "--log-format json" in d["ExecStart"][0]
    assert {c.split(":", 1)[0] for c in d["LoadCredential"]} == {"keys", "mqtt.password"}
    # The paths the header tells operators to write in agent.toml are where systemd puts them.
    header = AGENT.read_text()
    assert "/run/credentials/wgprobe-agent.service/mqtt.password" in header
    assert '[spool] path = "/var/lib/wgprobe-agent/' in header


def test_the_aggregator_unit_keeps_no_state() -> None:
    d = directives(AGGREGATOR)
    assert "StateDirectory" not in d and "ReadWritePaths" not in d
    assert "ExecReload" not in d  # SIGHUP's default action would end a process that does not handle it


def test_the_code_runs_where_write_and_execute_memory_is_refused() -> None:
    """MemoryDenyWriteExecute=yes in both units: a real agent against the simulated fleet, and the aggregator's
    metrics, under the kernel's equivalent (prctl PR_SET_MDWE, which refuses any mapping gaining execute)."""
    script = (
        "import ctypes, sys, pytest\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.prctl(65, 1, 0, 0, 0) == 0, ('PR_SET_MDWE', ctypes.get_errno())\n"
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    sys.exit('write+execute memory was not refused')\n"
        "except PermissionError:\n"
        "    pass\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))\n"
    )
    tests = [
        "tests/unit/test_agent.py::test_every_relay_every_round_with_its_verdict_and_a_live_fault_in_the_next_round",
        "tests/unit/test_aggregator_metrics.py",
        "tests/unit/test_wg_cookie.py",  # PyNaCl's XChaCha20-Poly1305
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *tests], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
