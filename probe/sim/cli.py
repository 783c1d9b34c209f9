"""`probe sim ...`: run a simulated relay fleet on loopback (no root) and change its faults live.

`register(commands)` adds the commands to the `probe` parser; `python -m probe.sim ...` runs them on their own.
Handlers import what they need when they run and return the exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # argparse's subparsers action, as probe.cli calls it
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

from probe.sim import DEFAULT_IDENTITIES

DEFAULT_DIR = Path("sim")
FAULT_KINDS = (
    "nat forward drop ports egress down loss:PCT delay:MS mtu v6nat | garbage forge_handshake corrupt forge_payload "
    "forge_source icmp_unreachable icmp_foreign mtu_icmp reflector_closed silent vanish cookie cookie_only"
)


def _count(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def register(commands: Commands) -> None:
    sim = commands.add_parser(
        "sim",
        help="a simulated fleet of WireGuard relays on loopback, no root, with injectable faults",
        description="A simulated fleet of WireGuard relays on loopback, no root: real handshakes and crypto, "
        "a simulated NAT and outside, the lab's faults and a hostile relay's lies, changed live.",
    )
    sub = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        parser.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, dest="fleet_dir", help="fleet directory (default ./sim)"
        )
        return parser

    up = add("up", "run the fleet in the foreground until SIGTERM/SIGINT; write keys, relay list, agent configs")
    up.add_argument("--relays", type=_count, default=3, help="number of relays (default 3)")
    up.add_argument("--fault", action="append", metavar="NAME:KIND[:ARG]", help="fault at start-up (repeatable)")
    up.add_argument("--agents", type=_count, default=1, help="number of vantage points (agent configs)")
    up.add_argument("--identities", type=_count, default=DEFAULT_IDENTITIES, help="keys per agent")
    up.add_argument(
        "--ipv6",
        choices=("mapped", "loopback", "none"),
        default="mapped",
        help="IPv6 entry: mapped (::ffff:127.B.x.y, default), loopback (::1, ports per relay), none",
    )
    up.add_argument("--block", type=int, help="use 127.B.0.0/16 (default: a free one)")
    up.add_argument("--main-port", type=int, default=51820, help="main WireGuard port of every relay")
    up.add_argument("--port-ranges", help='extended ports, as "5300,4000-4001" ("" for none)')
    up.set_defaults(handler=sim_up)

    brk = add("break", "inject a fault into a relay of the running fleet; the next datagram sees it")
    brk.add_argument("name", help="relay name, as se-got-wg-001")
    brk.add_argument("kind", help=f"fault: {FAULT_KINDS}")
    brk.set_defaults(handler=sim_break)

    heal = add("heal", "remove a relay's faults (all, or one kind)")
    heal.add_argument("name", help="relay name")
    heal.add_argument("kind", nargs="?", help="only this fault kind (default: all)")
    heal.set_defaults(handler=sim_heal)

    outside = add("outside", "take the outside hosts (forward target, reflector) down or up for every relay")
    outside.add_argument("state", choices=("down", "up"))
    outside.set_defaults(handler=sim_outside)

    status = add("status", "the running fleet: relays, ports, faulted relays, counters (exit 2 if none runs)")
    status.add_argument("--relay", help="one relay in detail")
    status.add_argument("--json", action="store_true", dest="json_out", help="machine-readable output")
    status.set_defaults(handler=sim_status)


def sim_up(args: argparse.Namespace) -> int:
    from probe.sim.faults import parse_relay_fault
    from probe.sim.plan import DEFAULT_PORT_RANGES, V6Mode, parse_port_ranges
    from probe.sim.serve import UpOptions, run

    options = UpOptions(
        directory=args.fleet_dir,
        relays=args.relays,
        faults=[parse_relay_fault(item) for item in args.fault or []],
        agents=args.agents,
        identities=args.identities,
        v6=V6Mode(args.ipv6),
        block=args.block,
        main_port=args.main_port,
        port_ranges=DEFAULT_PORT_RANGES if args.port_ranges is None else parse_port_ranges(args.port_ranges),
    )
    run(options)
    return 0


def sim_break(args: argparse.Namespace) -> int:
    from probe.sim.control import request
    from probe.sim.faults import SimFault

    SimFault.parse(args.kind)  # a typo is a usage error here, before the fleet is asked
    _faults_line(request(args.fleet_dir, {"op": "break", "relay": args.name, "fault": args.kind}))
    return 0


def sim_heal(args: argparse.Namespace) -> int:
    from probe.sim.control import request

    payload: dict[str, Any] = {"op": "heal", "relay": args.name}
    if args.kind:
        payload["kind"] = args.kind
    _faults_line(request(args.fleet_dir, payload))
    return 0


def sim_outside(args: argparse.Namespace) -> int:
    from probe.sim.control import request

    answer = request(args.fleet_dir, {"op": "outside", "up": args.state == "up"})
    print(f"outside hosts: {printable(answer.get('outside'))}")
    return 0


def sim_status(args: argparse.Namespace) -> int:
    import json

    from probe.sim.control import request

    payload: dict[str, Any] = {"op": "status"} if args.relay is None else {"op": "status", "relay": args.relay}
    answer = request(args.fleet_dir, payload)
    answer.pop("ok", None)
    if args.json_out:
        print(json.dumps(answer))
        return 0
    for key, value in answer.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, shown in value.items():
                print(f"  {printable(inner)}: {printable(shown)}")
        else:
            print(f"{key}: {printable(value)}")
    return 0


def _faults_line(answer: dict[str, Any]) -> None:
    faults = answer.get("faults") or []
    print(f"{printable(answer.get('relay'))}: faults now {printable(', '.join(map(str, faults)) or 'none')}")


def printable(value: object) -> str:
    """What the fleet sent, shown as text: never a terminal control sequence."""
    text = value if isinstance(value, str) else (" ".join(map(str, value)) if isinstance(value, list) else str(value))
    return "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in text)
