"""deploy/rollout.py, the example staged rollout: the working-hours guard, the stages, and stop-on-failure with a
fake deploy command that only records what it was asked, and the real `probe verify` against a simulated fleet."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, time
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest

from tests.unit.test_verify_cli import Sim, healed, sim_fleet

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "rollout.py"
FAKE_DEPLOY = """\
import json, os, sys
with open(sys.argv[1], "a") as log:
    log.write(json.dumps(sys.argv[2:]) + "\\n")
sys.exit(int(os.environ.get("FAKE_DEPLOY_EXIT", "0")))
"""
MONDAY_MORNING = "2026-12-07T10:00"  # inside the default window (mon-thu 08:00-13:00 Stockholm)
SATURDAY = "2026-12-05T10:00"


@pytest.fixture(scope="module")
def rollout() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rollout", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rollout"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with sim_fleet(tmp_path_factory.mktemp("sim")) as sim:
        yield sim


@pytest.fixture
def sim(sim_process: Sim) -> Iterator[Sim]:
    yield sim_process
    healed(sim_process)


class Setup:
    def __init__(self, tmp_path: Path, config: Path | None, *, canary_soak: str = "none", batch_size: int = 2) -> None:
        self.log = tmp_path / "deploys.log"
        fake = tmp_path / "fake_deploy.py"
        fake.write_text(FAKE_DEPLOY)
        (tmp_path / "servers.txt").write_text("".join(f"se-got-wg-00{n}\n" for n in range(1, 6)))
        self.config = tmp_path / "rollout.toml"
        self.config.write_text(
            "[rollout]\n"
            'servers_file = "servers.txt"\ncanary = 2\n'
            f"batch_size = {batch_size}\n"
            f"deploy_command = {json.dumps([sys.executable, str(fake), str(self.log)])}\n"
            "[verify]\n"
            f"probe = {json.dumps([sys.executable, '-m', 'probe'])}\n"
            + (f"config = {json.dumps(str(config))}\n" if config else "")
            + f'canary_soak = "{canary_soak}"\nsoak_every = "0.3s"\nbaseline = false\n'
        )

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )

    def deploys(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def test_the_window_is_working_hours_in_stockholm(rollout: ModuleType) -> None:
    window = rollout.Window()
    zone = ZoneInfo("Europe/Stockholm")

    def at(text: str) -> bool:
        return bool(window.allows(datetime.fromisoformat(text).replace(tzinfo=zone)))

    assert at("2026-12-07T08:00") and at("2026-12-07T13:00") and at("2026-12-10T12:59")  # Monday, Thursday
    assert not at("2026-12-07T13:01") and not at("2026-12-07T07:59")
    assert not at("2026-12-11T10:00") and not at("2026-12-05T10:00")  # Friday (a 24 h soak ends on Saturday), Saturday
    # The clock is read in the window's zone: 11:30 UTC is 12:30 in Stockholm in winter, 13:30 in summer.
    assert window.allows(datetime(2026, 12, 7, 11, 30, tzinfo=UTC))
    assert not window.allows(datetime(2026, 6, 8, 11, 30, tzinfo=UTC))
    custom = rollout.load_window({"days": ["Friday"], "start": "09:30", "latest_start": "10:00", "timezone": "UTC"})
    assert custom.days == ("fri",) and custom.start == time(9, 30)
    for bad in ({"days": ["someday"]}, {"start": "noon"}, {"timezone": "Mars/Olympus"}):
        with pytest.raises(rollout.RolloutError):
            rollout.load_window(bad)


def test_the_stages_are_the_canary_then_batches_each_verified(rollout: ModuleType) -> None:
    plan = rollout.Plan(
        servers=tuple(f"r{n}" for n in range(1, 8)),
        canary=("r1", "r2"),
        batch_size=2,
        deploy_command=("deploy",),
        config="verify.toml",
        batch_soak="10m",
    )
    assert plan.stages() == [("r1", "r2"), ("r3", "r4"), ("r5", "r6"), ("r7",)]
    canary = plan.verify_command(0, ("r1", "r2"))
    assert canary[:4] == ["probe", "verify", "r1", "r2"]
    assert canary[canary.index("--soak") + 1] == "24h" and "--baseline" in canary
    batch = plan.verify_command(1, ("r3", "r4"))
    assert batch[batch.index("--soak") + 1] == "10m" and "--baseline" not in batch
    once = rollout.Plan(servers=("a", "b"), canary=("a",), batch_size=5, deploy_command=("d",), canary_soak="none")
    assert "--soak" not in once.verify_command(0, ("a",))


def test_the_guard_refuses_to_start_outside_the_window_unless_forced(tmp_path: Path) -> None:
    setup = Setup(tmp_path, None)
    refused = setup.run("--now", SATURDAY)
    assert refused.returncode == 2 and "outside the rollout window" in refused.stderr and "--force" in refused.stderr
    assert setup.deploys() == []  # nothing was deployed
    # Forced, it starts: here the deploy command fails at once, which stops the rollout before any verification.
    forced = setup.run("--now", SATURDAY, "--force", env={"FAKE_DEPLOY_EXIT": "7"})
    assert forced.returncode == 4, forced.stdout + forced.stderr
    assert setup.deploys() == [["se-got-wg-001", "se-got-wg-002"]]
    assert "forced" in forced.stdout and "deploy command exited 7" in forced.stdout
    plan = setup.run("--now", SATURDAY, "--dry-run")
    assert plan.returncode == 0 and "closed at Sat" in plan.stdout and len(setup.deploys()) == 1


def test_a_rollout_without_a_deploy_command_is_refused(tmp_path: Path) -> None:
    setup = Setup(tmp_path, None)
    setup.config.write_text(setup.config.read_text().replace("deploy_command", "# deploy_command"))
    done = setup.run("--now", MONDAY_MORNING)
    assert done.returncode == 2 and "no deploy command" in done.stderr


def test_the_rollout_stops_at_the_first_batch_that_fails_verification(sim: Sim, tmp_path: Path) -> None:
    sim.fault("se-got-wg-004", "nat")
    setup = Setup(tmp_path, sim.config, canary_soak="1s")
    done = setup.run("--now", MONDAY_MORNING)
    assert done.returncode == 1, done.stdout + done.stderr
    # The canary deployed, verified and soaked; the batch with the broken relay deployed and stopped there.
    assert setup.deploys() == [["se-got-wg-001", "se-got-wg-002"], ["se-got-wg-003", "se-got-wg-004"]]
    assert "stage 0: verified" in done.stdout and "soak pass 2" in done.stdout
    assert "STOPPED at stage 1: a server failed verification" in done.stdout
    assert "FAILED se-got-wg-004 at forward" in done.stdout
    assert "not deployed: 1 server(s); once fixed, resume with --from-batch 1" in done.stdout


def test_a_healthy_rollout_goes_through_every_stage_and_resumes_where_asked(sim: Sim, tmp_path: Path) -> None:
    setup = Setup(tmp_path, sim.config, batch_size=3)
    done = setup.run("--now", MONDAY_MORNING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.deploys() == [["se-got-wg-001", "se-got-wg-002"], ["se-got-wg-003", "se-got-wg-004", "se-got-wg-005"]]
    assert "done: 5 server(s) deployed and verified in 2 stage(s)" in done.stdout
    resumed = setup.run("--now", MONDAY_MORNING, "--from-batch", "1")
    assert resumed.returncode == 0 and setup.deploys()[2:] == [["se-got-wg-003", "se-got-wg-004", "se-got-wg-005"]]
