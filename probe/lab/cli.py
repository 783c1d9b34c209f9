"""`probe lab ...`: build, inspect, break, heal and tear down the namespace fleet."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from probe.lab import DEFAULT_IDENTITIES, DEFAULT_PREFIX

if TYPE_CHECKING:
    from probe.cli import Commands

DEFAULT_DIR = Path("lab")
FAULT_KINDS = "nat forward drop ports egress down loss:PCT delay:MS mtu v6nat"


def _count(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def register(commands: Commands) -> None:
    lab = commands.add_parser(
        "lab",
        help="a fleet of real WireGuard relays in network namespaces, with injectable faults",
        description="A fleet of real WireGuard relays in network namespaces, with injectable faults (needs root).",
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, dest="lab_dir", help="lab directory (default ./lab)"
        )
        return parser

    up = add("up", "build the lab (replacing a stale one) and show it")
    up.add_argument("--servers", type=_count, default=3, help="number of relays (default 3)")
    up.add_argument("--fault", action="append", metavar="NAME:KIND[:ARG]", help="fault at start-up (repeatable)")
    up.add_argument("--agents", type=_count, default=1, help="number of vantage points (default 1)")
    up.add_argument("--identities", type=_count, default=DEFAULT_IDENTITIES, help="keys per agent")
    up.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"names of its namespaces and interfaces, 2-4 lowercase letters or digits (default {DEFAULT_PREFIX}): "
        "two labs side by side need two prefixes and two --dir",
    )
    up.set_defaults(handler=lab_up)

    down = add("down", "remove everything the lab made: processes (by PID), namespaces, sockets")
    down.add_argument("--prefix", help="remove a lab by its prefix when its state file is lost")
    down.set_defaults(handler=lab_down)

    status = add("status", "relays, faults and the health of the lab's processes (exit 1 if unhealthy)")
    status.set_defaults(handler=lab_status)

    brk = add("break", "inject a fault into a running relay")
    brk.add_argument("name", help="relay name, as se-got-wg-001")
    brk.add_argument("kind", help=f"fault: {FAULT_KINDS}")
    brk.set_defaults(handler=lab_break)

    heal = add("heal", "remove a relay's faults (all, or one kind)")
    heal.add_argument("name", help="relay name")
    heal.add_argument("kind", nargs="?", help="only this fault kind (default: all)")
    heal.set_defaults(handler=lab_heal)

    run = add("exec", "run a command inside an agent's namespace (the prober's side of the lab)")
    run.add_argument("--agent", type=_count, default=1, help="which vantage point (1-based)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="command to run (after --)")
    run.set_defaults(handler=lab_exec)


def lab_up(args: argparse.Namespace) -> int:
    from probe.lab.faults import parse_relay_fault
    from probe.lab.fleet import up

    faults = [parse_relay_fault(item) for item in args.fault or []]
    up(args.lab_dir, args.servers, agents=args.agents, identities=args.identities, faults=faults, prefix=args.prefix)
    _show(args.lab_dir)
    print(f"\nAgent config: {args.lab_dir / 'agent.toml'}   Relay list: {args.lab_dir / 'relays.json'}")
    print(f"Run a command as the agent: probe lab exec --dir {args.lab_dir} -- CMD ...")
    return 0


def lab_down(args: argparse.Namespace) -> int:
    from probe.lab.fleet import down, preflight

    preflight()
    for line in down(args.lab_dir, prefix=args.prefix):
        print(f"removed {line}" if not line.startswith("nothing") else line)
    return 0


def lab_status(args: argparse.Namespace) -> int:
    return 0 if _show(args.lab_dir) else 1


def lab_break(args: argparse.Namespace) -> int:
    from probe.lab.faults import Fault
    from probe.lab.fleet import break_relay

    state = break_relay(args.lab_dir, args.name, Fault.parse(args.kind))
    print(f"{args.name}: faults now {', '.join(state.relays[args.name].faults) or 'none'}")
    return 0


def lab_heal(args: argparse.Namespace) -> int:
    from probe.lab.faults import Fault
    from probe.lab.fleet import heal_relay

    state = heal_relay(args.lab_dir, args.name, Fault.parse(args.kind).kind if args.kind else None)
    print(f"{args.name}: faults now {', '.join(state.relays[args.name].faults) or 'none'}")
    return 0


def lab_exec(args: argparse.Namespace) -> int:
    from probe.errors import ConfigError
    from probe.lab.state import load_state

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigError("probe lab exec needs a command: probe lab exec [--agent N] -- CMD ...")
    plan = load_state(args.lab_dir).plan()
    if not 1 <= args.agent <= len(plan.agents):
        raise ConfigError(f"--agent must be 1..{len(plan.agents)}")
    ns = plan.agents[args.agent - 1].netns
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


def _show(lab_dir: Path) -> bool:
    from probe.lab.status import lab_status as read_status
    from probe.term import Style, table

    style = Style()
    status = read_status(lab_dir)
    rows = []
    for relay in status.relays:
        wg = f"pid {relay.wg_pid}" if relay.wg_running else "not running"
        if relay.delay_running is not None:
            wg += ", delay holder " + ("up" if relay.delay_running else "DOWN")
        ok = style.green("yes") if relay.healthy else style.red("NO")
        rows.append([relay.name, relay.ipv4, relay.ipv6, ", ".join(relay.faults) or "-", wg, ok])
    columns = ("relay", "public IPv4", "public IPv6", "faults", "wireguard-go", "ok")
    print(table(columns, rows, title=f"wgprobe lab in {lab_dir} (prefix {status.prefix})"))
    refl = f"pid {status.reflector_pid}" if status.reflector_running else style.red("not running")
    print(f"reflector: {refl}   agents: {', '.join(status.agents)}")
    return status.healthy
