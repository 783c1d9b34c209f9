"""`probe sim ...`: run a simulated relay fleet on loopback (no root) and change its faults live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from probe.lab.topology import DEFAULT_IDENTITIES

sim_app = typer.Typer(
    help="A simulated fleet of WireGuard relays on loopback, no root: real handshakes and crypto, simulated NAT, "
    "injectable faults."
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="Fleet directory (keys, relays.json, agent.toml, control socket).")
]
DEFAULT_DIR = Path("sim")
FAULT_HELP = (
    "nat forward drop ports egress down loss:PCT delay:MS mtu v6nat | garbage forge_handshake corrupt forge_payload "
    "forge_source icmp_unreachable icmp_foreign mtu_icmp reflector_closed silent vanish cookie cookie_only"
)


@sim_app.command("up")
def sim_up(
    relays: Annotated[int, typer.Option("--relays", help="Number of relays.")] = 3,
    fault: Annotated[
        list[str] | None, typer.Option("--fault", help="NAME:KIND[:ARG] fault at start-up (repeatable).")
    ] = None,
    agents: Annotated[int, typer.Option("--agents", help="Number of vantage points (agent configs).")] = 1,
    identities: Annotated[
        int, typer.Option("--identities", help="Keys per agent accepted by every relay.")
    ] = DEFAULT_IDENTITIES,
    ipv6: Annotated[
        str,
        typer.Option("--ipv6", help="IPv6 entry: mapped (::ffff:127.B.x.y), loopback (::1), none."),
    ] = "mapped",
    block: Annotated[int | None, typer.Option("--block", help="Use 127.B.0.0/16 (default: a free one).")] = None,
    main_port: Annotated[int, typer.Option("--main-port", help="Main WireGuard port of every relay.")] = 51820,
    port_ranges: Annotated[
        str | None, typer.Option("--port-ranges", help='Extended ports, as "5300,4000-4001" ("" for none).')
    ] = None,
    fleet_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Run the fleet in the foreground until SIGTERM/SIGINT; write keys, relay list and agent configs into --dir."""
    from probe.errors import ConfigError
    from probe.sim.faults import parse_relay_fault
    from probe.sim.plan import DEFAULT_PORT_RANGES, V6Mode, parse_port_ranges
    from probe.sim.serve import UpOptions, run

    try:
        v6 = V6Mode(ipv6)
    except ValueError:
        raise ConfigError(f"--ipv6 must be mapped, loopback or none, got {ipv6[:20]!r}") from None
    options = UpOptions(
        directory=fleet_dir,
        relays=relays,
        faults=[parse_relay_fault(item) for item in fault or []],
        agents=agents,
        identities=identities,
        v6=v6,
        block=block,
        main_port=main_port,
        port_ranges=DEFAULT_PORT_RANGES if port_ranges is None else parse_port_ranges(port_ranges),
    )
    run(options)


@sim_app.command("break")
def sim_break(
    name: Annotated[str, typer.Argument(help="Relay name, as se-got-wg-001.")],
    kind: Annotated[str, typer.Argument(help=f"Fault: {FAULT_HELP}")],
    fleet_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Inject a fault into a relay of the running fleet; the next datagram sees it."""
    from probe.sim.control import request
    from probe.sim.faults import SimFault

    SimFault.parse(kind)  # a typo is a usage error here, before the fleet is asked
    answer = request(fleet_dir, {"op": "break", "relay": name, "fault": kind})
    _faults_line(answer)


@sim_app.command("heal")
def sim_heal(
    name: Annotated[str, typer.Argument(help="Relay name.")],
    kind: Annotated[str | None, typer.Argument(help="Only this fault kind (default: all).")] = None,
    fleet_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Remove a relay's faults (all, or one kind)."""
    from probe.sim.control import request

    payload: dict[str, Any] = {"op": "heal", "relay": name}
    if kind:
        payload["kind"] = kind
    _faults_line(request(fleet_dir, payload))


@sim_app.command("outside")
def sim_outside(
    state: Annotated[str, typer.Argument(help="down or up")],
    fleet_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Take the outside hosts (forward target, reflector) down or up for every relay and for direct reach alike:
    an agent's own network outage, which only its control check can tell from a fleet-wide fault."""
    from probe.errors import ConfigError
    from probe.sim.control import request

    if state not in ("down", "up"):
        raise ConfigError(f"outside takes down or up, got {state[:20]!r}")
    answer = request(fleet_dir, {"op": "outside", "up": state == "up"})
    typer.echo(f"outside hosts: {_printable(answer.get('outside'))}")


@sim_app.command("status")
def sim_status(
    relay: Annotated[str | None, typer.Option("--relay", help="One relay in detail.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    fleet_dir: DirOption = DEFAULT_DIR,
) -> None:
    """The running fleet: relays, ports, faulted relays, counters. Exit 2 when no fleet runs in --dir."""
    import json

    from probe.sim.control import request

    payload: dict[str, Any] = {"op": "status"} if relay is None else {"op": "status", "relay": relay}
    answer = request(fleet_dir, payload)
    answer.pop("ok", None)
    if json_out:
        typer.echo(json.dumps(answer))
        return
    for key, value in answer.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for inner, shown in value.items():
                typer.echo(f"  {_printable(inner)}: {_printable(shown)}")
        else:
            typer.echo(f"{key}: {_printable(value)}")


def _faults_line(answer: dict[str, Any]) -> None:
    faults = answer.get("faults") or []
    typer.echo(f"{_printable(answer.get('relay'))}: faults now {_printable(', '.join(map(str, faults)) or 'none')}")


def _printable(value: object) -> str:
    """What the fleet sent, shown as text: never a terminal control sequence."""
    text = value if isinstance(value, str) else (" ".join(map(str, value)) if isinstance(value, list) else str(value))
    return "".join(ch if ch.isprintable() else "?" for ch in text)
