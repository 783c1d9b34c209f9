#!/usr/bin/env python3
"""An example staged rollout to WireGuard relays, as the 2020-04-27 post-mortem asks for it: a canary subset first,
verified end to end and soaked (24 hours by default) against a control group of relays not deployed, then the rest
in batches, each verified before the next; it stops at the first failure. It starts only inside a window of working
hours (by default Monday to Thursday, 08:00 to 13:00 Stockholm time) unless forced.

    deploy/rollout.py --config rollout.toml [--deploy-command CMD] [--force] [--dry-run] [--from-batch N]

THE DEPLOY STEP IS YOURS. This script does not know how your relays get a change: it runs your deploy command once
per stage, with the stage's server names appended as arguments, and goes on only if it exits 0:

    CMD se-got-wg-001 se-got-wg-002        # e.g. a wrapper around ansible-playbook --limit, salt, fabric...

The command is taken from --deploy-command, else $WGPROBE_DEPLOY_COMMAND, else `deploy_command` in the config (a
string is split as a shell would, without running a shell). With none, the script refuses to run.

Each stage is judged by `probe verify` (exit 0 verified, 1 a server failed, 3 inconclusive: inconclusive never
passes). Exit codes of this script:
    0  rolled out: every stage deployed and verified
    1  stopped: a server failed verification (the stage's servers are deployed; later stages are not)
    2  usage or config error, or refused: outside the rollout window without --force
    3  stopped: verification was inconclusive (could not judge; nothing is known to be wrong, nothing verified)
    4  stopped: the deploy command failed

Stages: 0 is the canary, 1.. the batches. `--from-batch N` resumes at stage N (the earlier ones are not deployed
again). `--dry-run` prints the plan and whether the window allows a start. `--now YYYY-MM-DDTHH:MM` (in the
window's time zone) stands in for the clock, for rehearsing the guard. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_DEPLOY = 0, 1, 2, 3, 4
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEPLOY_ENV = "WGPROBE_DEPLOY_COMMAND"
NO_SOAK = frozenset({"", "0", "0s", "none", "off"})
# probe verify's exit codes (1 failed, 3 inconclusive) and what they make of the rollout; 2 and others: refused.
VERIFY_OUTCOMES = {
    EXIT_FAILED: ("a server failed verification", EXIT_FAILED),
    EXIT_INCONCLUSIVE: ("verification was inconclusive", EXIT_INCONCLUSIVE),
}


class RolloutError(Exception):
    """A usage or config error: exit 2 with the message."""


@dataclass(frozen=True)
class Window:
    """When a rollout may start: on these days, between start and latest_start, in this time zone."""

    timezone: str = "Europe/Stockholm"
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu")  # a 24 h canary soak then ends on a working day
    start: time = time(8, 0)
    latest_start: time = time(13, 0)  # the post-mortem: "deployments start at 13:00 or earlier"

    def allows(self, moment: datetime) -> bool:
        local = moment.astimezone(ZoneInfo(self.timezone))
        return DAYS[local.weekday()] in self.days and self.start <= local.time() <= self.latest_start

    def describe(self) -> str:
        return f"{','.join(self.days)} {self.start:%H:%M}-{self.latest_start:%H:%M} {self.timezone}"


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    canary: tuple[str, ...]
    batch_size: int
    deploy_command: tuple[str, ...]
    probe: tuple[str, ...] = ("probe",)
    config: str | None = None  # probe verify --config
    canary_soak: str = "24h"  # the post-mortem: at least 24 hours on a subset before the rest
    soak_every: str = "60s"
    batch_soak: str = "0s"  # "0s" or "none": each batch verified once, no soak
    baseline: bool = True
    verify_args: tuple[str, ...] = ()
    junit_dir: Path | None = None
    window: Window = field(default_factory=Window)

    def stages(self) -> list[tuple[str, ...]]:
        """Stage 0 the canary, then the rest in batches, in the order of the server list."""
        rest = [name for name in self.servers if name not in self.canary]
        batches = [tuple(rest[i : i + self.batch_size]) for i in range(0, len(rest), self.batch_size)]
        return [self.canary, *batches]

    def verify_command(self, stage: int, servers: Sequence[str]) -> list[str]:
        soak = self.canary_soak if stage == 0 else self.batch_soak
        command = [*self.probe, "verify", *servers]
        if self.config:
            command += ["--config", self.config]
        if soak.strip().lower() not in NO_SOAK:
            command += ["--soak", soak, "--every", self.soak_every]
            if stage == 0 and self.baseline:
                command += ["--baseline", "control"]
        if self.junit_dir is not None:
            command += ["--junit", str(self.junit_dir / f"verify-stage-{stage}.xml")]
        return command + list(self.verify_args)


def _time(text: Any, key: str) -> time:
    try:
        return time.fromisoformat(str(text))
    except ValueError:
        raise RolloutError(f"window.{key}: {text!r} is not a time of day (as 13:00)") from None


def load_window(table: dict[str, Any]) -> Window:
    days = tuple(str(day).lower()[:3] for day in table.get("days", Window.days))
    if not days or any(day not in DAYS for day in days):
        raise RolloutError(f"window.days: {table.get('days')!r}: use mon, tue, wed, thu, fri, sat, sun")
    window = Window(
        timezone=str(table.get("timezone", Window.timezone)),
        days=days,
        start=_time(table.get("start", "08:00"), "start"),
        latest_start=_time(table.get("latest_start", "13:00"), "latest_start"),
    )
    try:
        ZoneInfo(window.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise RolloutError(f"window.timezone: unknown time zone {window.timezone!r}") from None
    return window


def read_servers(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RolloutError(f"servers file {path}: {exc.strerror or exc}") from None
    names = [line.partition("#")[0].strip() for line in text.splitlines()]
    return list(dict.fromkeys(name for name in names if name))


def deploy_command(cli: str | None, configured: Any) -> tuple[str, ...]:
    chosen = cli or os.environ.get(DEPLOY_ENV) or configured
    if not chosen:
        raise RolloutError(
            f"no deploy command: give --deploy-command CMD, set ${DEPLOY_ENV}, or deploy_command in the config "
            "(your deploy tool; the stage's server names are appended as arguments)"
        )
    return _command(chosen)


def _command(value: Any) -> tuple[str, ...]:
    """A command as a list of arguments, or a string split as a shell would (no shell runs it)."""
    return tuple(shlex.split(value) if isinstance(value, str) else map(str, value))


def load_plan(path: Path, args: argparse.Namespace) -> Plan:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RolloutError(f"config {path}: {exc}") from None
    rollout, verify = doc.get("rollout", {}), doc.get("verify", {})
    base = path.parent
    servers_file = args.servers_file or (base / rollout["servers_file"] if "servers_file" in rollout else None)
    if servers_file is None:
        raise RolloutError("no servers: give --servers-file FILE or rollout.servers_file")
    servers = read_servers(Path(servers_file))
    canary_spec = rollout.get("canary", 2)
    canary = tuple(canary_spec) if isinstance(canary_spec, list) else tuple(servers[: int(canary_spec)])
    if not canary or any(name not in servers for name in canary):
        raise RolloutError("rollout.canary: a count of at least 1, or names from the servers file")
    batch_size = int(rollout.get("batch_size", 20))
    if batch_size < 1:
        raise RolloutError("rollout.batch_size: at least 1")
    config = verify.get("config")
    junit = verify.get("junit_dir")
    return Plan(
        servers=tuple(servers),
        canary=canary,
        batch_size=batch_size,
        deploy_command=deploy_command(args.deploy_command, rollout.get("deploy_command")),
        probe=_command(verify.get("probe", ["probe"])),
        config=str(base / config) if config else None,
        canary_soak=str(verify.get("canary_soak", "24h")),
        soak_every=str(verify.get("soak_every", "60s")),
        batch_soak=str(verify.get("batch_soak", "0s")),
        baseline=bool(verify.get("baseline", True)),
        verify_args=tuple(map(str, verify.get("extra_args", []))),
        junit_dir=base / junit if junit else None,
        window=load_window(doc.get("window", {})),
    )


def say(line: str) -> None:
    print(f"rollout: {line}", flush=True)


def run_stages(plan: Plan, first: int) -> int:
    stages = plan.stages()
    for number, servers in enumerate(stages):
        if number < first or not servers:
            continue
        label = "canary" if number == 0 else f"batch {number} of {len(stages) - 1}"
        say(f"stage {number} ({label}): deploying to {' '.join(servers)}")
        deployed = subprocess.run([*plan.deploy_command, *servers], check=False)
        if deployed.returncode != 0:
            say(f"STOPPED at stage {number}: the deploy command exited {deployed.returncode}; not verified")
            return _stopped(stages, number, EXIT_DEPLOY)
        command = plan.verify_command(number, servers)
        say(f"stage {number}: verifying: {shlex.join(command)}")
        verified = subprocess.run(command, check=False)
        if verified.returncode != 0:
            what, code = VERIFY_OUTCOMES.get(verified.returncode, ("probe verify refused to run", EXIT_USAGE))
            say(f"STOPPED at stage {number}: {what} (probe verify exited {verified.returncode})")
            return _stopped(stages, number, code)
        say(f"stage {number}: verified")
    count = sum(len(stage) for stage in stages[first:])
    say(f"done: {count} server(s) deployed and verified in {len(stages) - first} stage(s)")
    return EXIT_OK


def _stopped(stages: list[tuple[str, ...]], number: int, code: int) -> int:
    left = [name for stage in stages[number + 1 :] for name in stage]
    # Resuming repeats the stopped stage: its servers are deployed but not verified.
    say(f"not deployed: {len(left)} server(s); once fixed, resume with --from-batch {number}")
    return code


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Staged rollout: canary, verify, soak, then batches; stops at the first failure.",
        epilog="exit codes: 0 rolled out, 1 a server failed, 2 usage/config error or outside the window, "
        "3 inconclusive, 4 the deploy command failed",
    )
    parser.add_argument("--config", type=Path, required=True, help="rollout config (see rollout.example.toml)")
    parser.add_argument("--servers-file", type=Path, help="servers to deploy to, in order (overrides the config)")
    parser.add_argument("--deploy-command", help=f"your deploy tool (else ${DEPLOY_ENV}, else the config)")
    parser.add_argument("--force", action="store_true", help="start even outside the rollout window")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; deploy and verify nothing")
    parser.add_argument("--from-batch", type=int, default=0, metavar="N", help="resume at stage N (0: the canary)")
    parser.add_argument("--now", help="YYYY-MM-DDTHH:MM in the window's time zone, instead of the clock")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = load_plan(args.config, args)
        zone = ZoneInfo(plan.window.timezone)
        now = datetime.fromisoformat(args.now).replace(tzinfo=zone) if args.now else datetime.now(zone)
    except (RolloutError, ValueError) as exc:
        print(f"rollout: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.from_batch < len(plan.stages()):
        print(f"rollout: error: --from-batch: stages are 0..{len(plan.stages()) - 1}", file=sys.stderr)
        return EXIT_USAGE
    allowed = plan.window.allows(now)
    if args.dry_run:
        for number, servers in enumerate(plan.stages()):
            mark = "skip" if number < args.from_batch else "run "
            say(f"{mark} stage {number}: {shlex.join([*plan.deploy_command, *servers])}")
            say(f"     then: {shlex.join(plan.verify_command(number, servers))}")
        say(f"window {plan.window.describe()}: {'open' if allowed else 'closed'} at {now:%a %Y-%m-%d %H:%M}")
        return EXIT_OK
    if not allowed and not args.force:
        print(
            f"rollout: refused: {now:%a %Y-%m-%d %H:%M %Z} is outside the rollout window ({plan.window.describe()}); "
            "start in working hours, or --force",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not allowed:
        say(f"outside the window ({plan.window.describe()}), forced")
    return run_stages(plan, args.from_batch)


if __name__ == "__main__":
    sys.exit(main())
