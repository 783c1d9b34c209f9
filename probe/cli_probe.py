"""`probe server`, `probe sweep` and `probe servers`: the engineer's commands. Heavy modules load per command."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from probe.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from probe.config import AgentConfig
    from probe.inventory import Inventory, Relay
    from probe.results import ServerResult

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Agent config (default: $WGPROBE_CONFIG, then ./agent.toml).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
FAMILIES = ("ipv4", "ipv6")


def _load(config_path: Path | None) -> tuple[AgentConfig, Inventory]:
    from probe.config import find_config, load_config
    from probe.inventory import load_inventory

    config = load_config(find_config(config_path))
    inventory = load_inventory(config.inventory.source, include_inactive=config.inventory.include_inactive)
    for problem in inventory.problems:
        print(f"warning: inventory: {problem} (skipped)", file=sys.stderr)
    return config, inventory


def server(
    name: Annotated[str, typer.Argument(help="Relay name, as se-got-wg-001.")],
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option("--port", help="Probe only this entry port.")] = None,
    family: Annotated[str | None, typer.Option("--family", help="Probe only ipv4 or ipv6.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Probe one relay on every path, stage by stage. Exit 0 all paths ok, 1 any failed, 2 usage/config error."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"--family must be ipv4 or ipv6, got {family!r}")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    from probe.runner import Prober

    agent_config, inventory = _load(config)
    relay = inventory.require(name)
    if family == "ipv6" and relay.ipv6_addr_in is None:
        raise ConfigError(f"{name} has no IPv6 entry address in the inventory")
    result = asyncio.run(Prober(agent_config, inventory).probe_relay(relay, only_port=port, family=family))
    if json_out:
        print(result.model_dump_json())
    else:
        _print_server(result)
    raise typer.Exit(0 if result.ok else 1)


def sweep(
    config: ConfigOption = None,
    json_out: JsonOption = False,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Probe the whole fleet this many times.")] = 1,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Relays probed at once.")] = 16,
) -> None:
    """Probe every relay; summarise failures by reason and by the labels the failing relays share."""
    from probe.runner import Prober, rotation_now

    agent_config, inventory = _load(config)
    prober = Prober(agent_config, inventory)
    results: list[ServerResult] = []
    base = rotation_now()

    async def run_rounds(advance: Callable[[], None]) -> None:
        # One event loop for every round: the prober's per-key locks belong to the loop they were made in.
        gate = asyncio.Semaphore(concurrency)

        async def one(relay: Relay, number: int) -> None:
            async with gate:
                result = await prober.probe_relay(relay, rotation=base + number)
            results.append(result)
            if json_out:
                print(result.model_dump_json(), flush=True)
            advance()

        for number in range(rounds):
            await asyncio.gather(*(one(relay, number) for relay in inventory.relays))

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("probing", total=rounds * len(inventory.relays))
        asyncio.run(run_rounds(lambda: progress.advance(task)))
    if not json_out:
        _print_sweep(results, inventory)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def servers(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """List the inventory the config points at (skipped entries are reported on stderr)."""
    _agent_config, inventory = _load(config)
    if json_out:
        for relay in inventory.relays:
            print(relay.model_dump_json())
        return
    from rich.table import Table

    table = Table(title=f"{len(inventory.relays)} relays from {inventory.source} ({inventory.format})")
    for column in ("relay", "IPv4 in", "IPv6 in", "location", "ports", "labels"):
        table.add_column(column)
    for relay in inventory.relays:
        ranges = ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in relay.port_ranges)
        table.add_row(
            relay.name,
            str(relay.ipv4_addr_in),
            str(relay.ipv6_addr_in or "-"),
            relay.location or "-",
            f"{relay.main_port}" + (f" +{ranges}" if ranges else ""),
            " ".join(f"{k}={v}" for k, v in sorted(relay.labels.items())),
        )
    _console().print(table)


def dissect(
    pcaps: Annotated[list[Path], typer.Argument(help="Evidence pcap files written by a failed probe.")],
) -> None:
    """Show the inner packets of evidence pcaps, dissected by scapy (slow to start: for people, not pipelines).

    A file that cannot be read, or is cut short, is reported on stderr (what could be read of it is shown) and the
    next file follows. Exit 0 when every file was read whole, 1 otherwise.
    """
    from datetime import UTC, datetime

    from probe.packets import EvidenceError
    from probe.packets import dissect as dissect_packet
    from probe.packets.evidence import scan_pcap

    failed = False
    for path in pcaps:
        try:
            records, problem = scan_pcap(path)
        except EvidenceError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            failed = True
            continue
        print(f"== {path}: {len(records)} packet(s)")
        for n, (at, packet) in enumerate(records, start=1):
            stamp = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")
            print(f"-- #{n} {stamp}Z")
            print(dissect_packet(packet))
        if problem is not None:
            sys.stdout.flush()  # the report follows what was shown of the file, also when both go to one terminal
            print(f"error: {path}: {problem}; the {len(records)} packet(s) before it are shown", file=sys.stderr)
            failed = True
    raise typer.Exit(1 if failed else 0)


def _console() -> Console:
    from rich.console import Console

    # Piped output (CI logs, `| less`) gets a wide fixed width rather than rich's 80 columns, which would wrap
    # every IPv6 path.
    return Console() if sys.stdout.isatty() else Console(width=160)


def _cell(stage_ok: bool, seconds: float, reason: str | None, loss: float) -> str:
    if stage_ok:
        text = f"[green]ok[/] {seconds * 1000:.1f}ms"
        return text + (f" [yellow]{loss:.0%} loss[/]" if loss else "")
    return f"[red]{reason}[/]"


def _print_server(result: ServerResult) -> None:
    from rich.table import Table

    from probe.results import STAGE_ORDER

    console = _console()
    names = [s for s in STAGE_ORDER if any(st.name is s for p in result.paths for st in p.stages)]
    table = Table(title=f"{result.server} from {result.agent}")
    table.add_column("path")
    for name in names:
        table.add_column(name.value)
    for path in result.paths:
        by_name = {stage.name: stage for stage in path.stages}
        cells = []
        for name in names:
            stage = by_name.get(name)
            cells.append("-" if stage is None else _cell(stage.ok, stage.seconds, stage.reason, stage.loss))
        table.add_row(f"{path.entry} :{path.port}", *cells)
    console.print(table)
    for path in result.paths:
        failed = path.failed_stage
        if failed is not None and failed.detail:
            console.print(f"  {path.family} :{path.port} {failed.name}: {failed.detail}", highlight=False)
        if path.evidence:
            console.print(f"  evidence: {path.evidence}", highlight=False, soft_wrap=True)
    ms = result.duration_seconds * 1000
    if result.ok:
        console.print(f"[green]{result.server}: OK[/] - {len(result.paths)} paths, every stage passed ({ms:.0f} ms)")
    else:
        bad = sum(1 for p in result.paths if not p.ok)
        console.print(
            f"[red]{result.server}: FAILED {result.reason}[/] - {bad} of {len(result.paths)} paths ({ms:.0f} ms)"
        )
        if result.evidence:
            console.print(f"  result: {result.evidence}", highlight=False, soft_wrap=True)


def _print_sweep(results: list[ServerResult], inventory: Inventory) -> None:
    from rich.table import Table

    console = _console()
    failed = [r for r in results if not r.ok]
    names = sorted({r.server for r in results})
    console.print(f"{len(names)} relays probed, {len({r.server for r in failed})} failing")
    if not failed:
        return
    by_reason: dict[str, set[str]] = defaultdict(set)
    for r in failed:
        by_reason[str(r.reason)].add(r.server)
    table = Table(title="failures by reason")
    for column in ("reason", "relays", "names"):
        table.add_column(column)
    for reason, relays in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        table.add_row(reason, str(len(relays)), " ".join(sorted(relays)[:12]) + (" ..." if len(relays) > 12 else ""))
    console.print(table)
    console.print(_labels_table(failed, inventory))


def _labels_table(failed: list[ServerResult], inventory: Inventory) -> object:
    """Which label values the failing relays share, against how common each is in the fleet: the post-mortem lost
    an hour finding that every failing relay ran one kernel version."""
    from rich.table import Table

    fleet = Counter((k, v) for relay in inventory.relays for k, v in relay.labels.items())
    total = len(inventory.relays)
    failing_names = {r.server for r in failed}
    # A label every relay carries (the provider of a one-provider fleet) tells nothing apart: leave it out.
    failing = Counter(
        (k, v)
        for relay in inventory.relays
        if relay.name in failing_names
        for k, v in relay.labels.items()
        if fleet[(k, v)] < total
    )
    table = Table(title="labels of failing relays (values the whole fleet shares left out)")
    for column in ("label", "failing", "in fleet", "share of failing"):
        table.add_column(column)
    for (key, value), count in failing.most_common(15):
        share = count / len(failing_names)
        mark = "[bold red]" if share == 1 else ""
        table.add_row(f"{mark}{key}={value}", str(count), str(fleet[(key, value)]), f"{share:.0%}")
    return table
