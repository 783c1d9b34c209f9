"""`probe lab ...`: build, inspect, break, heal and tear down the namespace fleet."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from probe.lab.topology import DEFAULT_IDENTITIES, DEFAULT_PREFIX

lab_app = typer.Typer(help="A fleet of real WireGuard relays in network namespaces, with injectable faults.")

DirOption = Annotated[Path, typer.Option("--dir", help="Lab directory (state, keys, relays.json, agent.toml).")]
DEFAULT_DIR = Path("lab")


@lab_app.command("up")
def lab_up(
    servers: Annotated[int, typer.Option("--servers", help="Number of relays.")] = 3,
    fault: Annotated[
        list[str] | None, typer.Option("--fault", help="NAME:KIND[:ARG] fault at start-up (repeatable).")
    ] = None,
    agents: Annotated[int, typer.Option("--agents", help="Number of vantage points.")] = 1,
    identities: Annotated[
        int, typer.Option("--identities", help="Keys per agent registered on every relay.")
    ] = DEFAULT_IDENTITIES,
    lab_dir: DirOption = DEFAULT_DIR,
    prefix: Annotated[str, typer.Option("--prefix", hidden=True)] = DEFAULT_PREFIX,
) -> None:
    """Build the lab (replacing a stale one) and show it."""
    from probe.lab.faults import parse_relay_fault
    from probe.lab.fleet import up

    faults = [parse_relay_fault(item) for item in fault or []]
    up(lab_dir, servers, agents=agents, identities=identities, faults=faults, prefix=prefix)
    _show(lab_dir)
    typer.echo(f"\nAgent config: {lab_dir / 'agent.toml'}   Relay list: {lab_dir / 'relays.json'}")
    typer.echo(f"Run a command as the agent: probe lab exec --dir {lab_dir} -- CMD ...")


@lab_app.command("down")
def lab_down(
    lab_dir: DirOption = DEFAULT_DIR,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Remove a lab by its prefix when its state file is lost.")
    ] = None,
) -> None:
    """Remove everything the lab made: processes (by PID), namespaces, sockets."""
    from probe.lab.fleet import down, preflight

    preflight()
    for line in down(lab_dir, prefix=prefix):
        typer.echo(f"removed {line}" if not line.startswith("nothing") else line)


@lab_app.command("status")
def lab_status(lab_dir: DirOption = DEFAULT_DIR) -> None:
    """Relays, faults and the health of the lab's processes. Exit 1 if a lab process is not as it should be."""
    healthy = _show(lab_dir)
    raise typer.Exit(0 if healthy else 1)


@lab_app.command("break")
def lab_break(
    name: Annotated[str, typer.Argument(help="Relay name, as se-got-wg-001.")],
    kind: Annotated[str, typer.Argument(help="Fault: nat forward drop ports egress down loss:PCT delay:MS mtu v6nat")],
    lab_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Inject a fault into a running relay."""
    from probe.lab.faults import Fault
    from probe.lab.fleet import break_relay

    state = break_relay(lab_dir, name, Fault.parse(kind))
    typer.echo(f"{name}: faults now {', '.join(state.relays[name].faults) or 'none'}")


@lab_app.command("heal")
def lab_heal(
    name: Annotated[str, typer.Argument(help="Relay name.")],
    kind: Annotated[str | None, typer.Argument(help="Only this fault kind (default: all).")] = None,
    lab_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Remove a relay's faults (all, or one kind)."""
    from probe.lab.faults import Fault
    from probe.lab.fleet import heal_relay

    state = heal_relay(lab_dir, name, Fault.parse(kind).kind if kind else None)
    typer.echo(f"{name}: faults now {', '.join(state.relays[name].faults) or 'none'}")


@lab_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab_exec(
    command: Annotated[list[str], typer.Argument(help="Command to run in the agent namespace (after --).")],
    agent: Annotated[int, typer.Option("--agent", help="Which vantage point (1-based).")] = 1,
    lab_dir: DirOption = DEFAULT_DIR,
) -> None:
    """Run a command inside an agent's namespace (the prober's side of the lab)."""
    from probe.errors import ConfigError
    from probe.lab.state import load_state

    plan = load_state(lab_dir).plan()
    if not 1 <= agent <= len(plan.agents):
        raise ConfigError(f"--agent must be 1..{len(plan.agents)}")
    ns = plan.agents[agent - 1].netns
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


def _show(lab_dir: Path) -> bool:
    from rich.console import Console
    from rich.table import Table

    from probe.lab.status import lab_status as read_status

    status = read_status(lab_dir)
    table = Table(title=f"wgprobe lab in {lab_dir} (prefix {status.prefix})")
    for column in ("relay", "public IPv4", "public IPv6", "faults", "wireguard-go", "ok"):
        table.add_column(column)
    for relay in status.relays:
        wg = f"pid {relay.wg_pid}" if relay.wg_running else "not running"
        if relay.delay_running is not None:
            wg += ", delay holder " + ("up" if relay.delay_running else "DOWN")
        ok = "[green]yes[/]" if relay.healthy else "[red]NO[/]"
        table.add_row(relay.name, relay.ipv4, relay.ipv6, ", ".join(relay.faults) or "-", wg, ok)
    console = Console()
    console.print(table)
    refl = f"pid {status.reflector_pid}" if status.reflector_running else "[red]not running[/]"
    console.print(f"reflector: {refl}   agents: {', '.join(status.agents)}")
    return status.healthy
