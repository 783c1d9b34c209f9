"""`probe server`, `probe sweep`, `probe servers` and `probe dissect`: the engineer's commands.

Heavy modules (the runner, pydantic models, scapy, asyncio: `probe servers` needs no event loop) load inside the
handlers. Everything printed that came from outside (names, labels, locations, details) goes through
`probe.term.clean`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from probe.errors import EXIT_FAILED, EXIT_OK, EXIT_UNJUDGED, ConfigError

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

    from probe.config import ProbeConfig
    from probe.inventory import Inventory, Relay
    from probe.messages import ControlCheck
    from probe.results import ServerResult, StageResult
    from probe.runner import Prober
    from probe.tally import Tally
    from probe.term import Style

FAMILIES = ("ipv4", "ipv6")


def _port(text: str) -> int:
    if not text.isdecimal() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be 1..65535, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="agent config (default: $WGPROBE_CONFIG, then ./agent.toml)"
    )


def register_server(commands: Commands) -> None:
    server_p = commands.add_parser(
        "server",
        help="probe one relay on every path, stage by stage",
        description="Probe one relay on every path, stage by stage. "
        "Exit 0 all paths ok, 1 any failed, 2 usage/config error, 3 could not judge.",
    )
    server_p.add_argument("name", help="relay name, as se-got-wg-001")
    _config_option(server_p)
    server_p.add_argument("--port", type=_port, help="probe only this entry port")
    server_p.add_argument("--family", choices=FAMILIES, help="probe only ipv4 or ipv6")
    server_p.add_argument("--json", action="store_true", dest="json_out", help="machine-readable output")
    server_p.set_defaults(handler=server)


def register_sweep(commands: Commands) -> None:
    sweep_p = commands.add_parser(
        "sweep",
        help="probe every relay; failures by reason and by shared labels",
        description="Probe every relay; summarise failures by reason and by the labels the failing relays share.",
    )
    _config_option(sweep_p)
    sweep_p.add_argument("--json", action="store_true", dest="json_out", help="one JSON result per line")
    sweep_p.add_argument("--rounds", type=_positive, default=1, help="probe the whole fleet this many times")
    sweep_p.add_argument("--concurrency", type=_positive, default=16, help="relays probed at once (default 16)")
    sweep_p.set_defaults(handler=sweep)


def register_servers(commands: Commands) -> None:
    servers_p = commands.add_parser("servers", help="list the inventory the config points at")
    _config_option(servers_p)
    servers_p.add_argument("--json", action="store_true", dest="json_out", help="one JSON relay per line")
    servers_p.set_defaults(handler=servers)


def register_dissect(commands: Commands) -> None:
    dissect_p = commands.add_parser(
        "dissect",
        help="show the packets of evidence pcaps",
        description="Show the inner packets of evidence pcaps, dissected by scapy (slow to start: for people).",
    )
    dissect_p.add_argument("pcaps", nargs="+", type=Path, metavar="PCAP", help="evidence pcap written by a probe")
    dissect_p.set_defaults(handler=dissect)


# The events of ConfiguredInventory.skipped, worded for a terminal.
_SKIPPED = {
    "inventory_entry_skipped": "inventory: {} (skipped)",
    "labels_entry_skipped": "labels: {} (skipped)",
    "labels_host_not_in_inventory": "{}",
}


def _load(config_path: Path | None) -> tuple[ProbeConfig, Inventory]:
    from probe.config import find_config, load_probe_config
    from probe.inventory.configured import ConfiguredInventory
    from probe.term import clean

    config = load_probe_config(find_config(config_path))
    source = ConfiguredInventory(config.inventory)
    inventory = source.load()
    for event, line in source.skipped(inventory):  # what the services log, as warnings
        print(f"warning: {_SKIPPED[event].format(clean(line))}", file=sys.stderr)
    if config.agent.netns is not None:
        from probe.sockets import require_namespace

        require_namespace(config.agent.netns)  # a config error now, not a socket_error on every path later
    return config, inventory


def _lock_keys(config: ProbeConfig) -> None:
    """Hold this config's keys for the life of the command: a second process with one of them is refused."""
    from probe.keylock import lock_keys

    lock_keys([identity.private_key_file for identity in config.identities])


def exit_code(tally: Tally, control: ControlCheck | None = None) -> int:
    if tally.all_ok:
        return EXIT_OK
    # nothing_blamed covers could_not_judge too: a run that could send nothing blamed no relay.
    if tally.nothing_blamed or (control is not None and not control.ok):
        return EXIT_UNJUDGED
    return EXIT_FAILED


def say_nothing_blamed(tally: Tally) -> None:
    """Why a run with passing paths still could not judge (`could_not_judge` speaks for a run that sent nothing)."""
    from probe.term import clean

    if tally.could_not_judge or not tally.nothing_blamed:
        return
    reasons = ", ".join(sorted(tally.failed_reasons))
    print(
        f"could not judge: {tally.failed_paths} path(s) failed for this host's or wgprobe's own reasons "
        f"({clean(reasons)}), not the relays'",
        file=sys.stderr,
    )


async def own_reach(prober: Prober, tally: Tally) -> ControlCheck | None:
    """The control check (probe/control.py), asked only when a relay would be blamed: a failure seen while this
    host cannot reach the outside itself says nothing about the relay (README: exit 3, as the agent and `probe
    verify` judge it). Nothing is asked when every path passed, so a healthy run costs no extra packet."""
    if not tally.blamed:
        return None
    from probe.control import control_check

    return await control_check(prober.settings)


def say_unjudged(control: ControlCheck | None) -> None:
    from probe.term import clean

    if control is not None and not control.ok:
        print(
            # What failed is in the detail: the reflector alone down is not "the outside" gone.
            "could not judge: this host's own check of the outside failed, through no relay (control check: "
            f"{clean(control.detail or 'failed')}); the failures above are not the relays' to answer for",
            file=sys.stderr,
        )


def server(args: argparse.Namespace) -> int:
    import asyncio

    from probe.runner import Prober
    from probe.tally import Tally

    config, inventory = _load(args.config)
    relay = inventory.require(args.name)
    _lock_keys(config)
    if args.family == "ipv6" and relay.ipv6_addr_in is None:
        raise ConfigError(f"{relay.name} has no IPv6 entry address in the inventory")
    if args.port is not None and args.port != config.probe.main_port and not relay.accepts_port(args.port):
        from probe.term import clean

        # Probed all the same (the inventory may be behind the relay), but a closed port there is not a fault.
        print(
            f"warning: the inventory does not list port {args.port} for {clean(relay.name)}: "
            "a failure there may not be the relay's",
            file=sys.stderr,
        )
    prober = Prober(config, inventory)
    outcome: list[tuple[ServerResult, Tally, ControlCheck | None]] = []

    async def probe_once() -> None:
        # Handed out through `outcome`, not returned. Once the task is done, CPython 3.11's asyncio.run looks up
        # its SIGINT handler twice, and `signal` turns each answer into an enum by trying it as a value: the
        # ValueError's message is the handler's repr(), which holds the task and so its result. A returned
        # 12-path result was formatted twice for nothing: 8 M instructions, 1% of this command's cold start.
        result = await prober.probe_relay(relay, only_port=args.port, family=args.family)
        tally = Tally.of([result])
        outcome.append((result, tally, await own_reach(prober, tally)))

    asyncio.run(probe_once())
    [(result, tally, control)] = outcome
    if args.json_out:
        print(result.model_dump_json())
    else:
        print(render_server(result))
    if tally.could_not_judge:
        print("could not judge: the agent could not send on any path (its own network is down)", file=sys.stderr)
    say_nothing_blamed(tally)
    say_unjudged(control)
    return exit_code(tally, control)


def sweep(args: argparse.Namespace) -> int:
    import asyncio

    from probe.runner import Prober, rotation_now
    from probe.tally import Tally
    from probe.term import Progress

    config, inventory = _load(args.config)
    _lock_keys(config)
    prober = Prober(config, inventory)
    tally = Tally()
    base = rotation_now()
    progress = Progress(args.rounds * len(inventory.relays), "probing")

    async def run_rounds() -> ControlCheck | None:
        # One event loop for every round: the prober's per-key locks belong to the loop they were made in.
        gate = asyncio.Semaphore(args.concurrency)

        async def one(relay: Relay, number: int) -> None:
            async with gate:
                result = await prober.probe_relay(relay, rotation=base + number)
            tally.add(result)
            if args.json_out:
                print(result.model_dump_json(), flush=True)
            progress.advance()

        for number in range(args.rounds):
            await asyncio.gather(*(one(relay, number) for relay in inventory.relays))
        return await own_reach(prober, tally)

    try:
        control = asyncio.run(run_rounds())
    finally:
        progress.close()
    if not args.json_out:
        print(render_sweep(tally, inventory))
    say_nothing_blamed(tally)
    say_unjudged(control)
    return exit_code(tally, control)


def servers(args: argparse.Namespace) -> int:
    from probe.term import clean, table

    _config, inventory = _load(args.config)
    if args.json_out:
        for relay in inventory.relays:
            print(relay.model_dump_json())
        return EXIT_OK
    rows = []
    for relay in inventory.relays:
        ranges = ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in relay.port_ranges)
        rows.append(
            [
                clean(relay.name),
                str(relay.ipv4_addr_in),
                str(relay.ipv6_addr_in or "-"),
                clean(relay.location or "-"),
                f"{relay.main_port}" + (f" +{ranges}" if ranges else ""),
                clean(" ".join(f"{k}={v}" for k, v in sorted(relay.labels.items()))),
            ]
        )
    title = f"{len(inventory.relays)} relays from {clean(inventory.source)} ({inventory.format})"
    print(table(("relay", "IPv4 in", "IPv6 in", "location", "ports", "labels"), rows, title=title))
    return EXIT_OK


def dissect(args: argparse.Namespace) -> int:
    """A file that cannot be read, or is cut short, is reported on stderr (what could be read of it is shown) and
    the next file follows. Exit 0 when every file was read whole, 1 otherwise."""
    from datetime import UTC, datetime

    from probe.packets import EvidenceError
    from probe.packets import dissect as dissect_packet
    from probe.packets.evidence import scan_pcap
    from probe.term import clean

    failed = False
    for path in args.pcaps:
        try:
            records, problem = scan_pcap(path)
        except EvidenceError as exc:
            print(f"error: {clean(exc)}", file=sys.stderr, flush=True)
            failed = True
            continue
        print(f"== {clean(path)}: {len(records)} packet(s)")
        for n, (at, packet) in enumerate(records, start=1):
            stamp = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")
            print(f"-- #{n} {stamp}Z")
            print(dissect_packet(packet))
        if problem is not None:
            sys.stdout.flush()  # the report follows what was shown of the file, also when both go to one terminal
            print(
                f"error: {clean(path)}: {clean(problem)}; the {len(records)} packet(s) before it are shown",
                file=sys.stderr,
            )
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


def _cell(stage: StageResult, style: Style) -> str:
    if not stage.judged:
        return style.dim("not judged")
    if stage.ok:
        text = style.green("ok") + f" {stage.seconds * 1000:.1f}ms"
        return text + (" " + style.yellow(f"{stage.loss:.0%} loss") if stage.loss else "")
    return style.red(str(stage.reason))


def render_server(result: ServerResult) -> str:
    from probe.results import STAGE_ORDER
    from probe.term import Style, clean, table

    style = Style()
    names = [s for s in STAGE_ORDER if any(st.name is s for p in result.paths for st in p.stages)]
    rows = []
    for path in result.paths:
        by_name = {stage.name: stage for stage in path.stages}
        cells = [_cell(by_name[name], style) if name in by_name else "-" for name in names]
        rows.append([f"{path.entry} :{path.port}", *cells])
    lines = [table(("path", *(n.value for n in names)), rows, title=f"{clean(result.server)} from {result.agent}")]
    for path in result.paths:
        failed = path.failed_stage
        if failed is not None and failed.detail:
            lines.append(f"  {path.family} :{path.port} {failed.name}: {clean(failed.detail)}")
        if path.evidence:
            lines.append(f"  evidence: {clean(path.evidence)}")
    ms = result.duration_seconds * 1000
    name = clean(result.server)
    if result.ok:
        lines.append(style.green(f"{name}: OK") + f" - {len(result.paths)} paths, every stage passed ({ms:.0f} ms)")
    else:
        bad = sum(1 for p in result.paths if not p.ok)
        lines.append(
            style.red(f"{name}: FAILED {result.reason}") + f" - {bad} of {len(result.paths)} paths ({ms:.0f} ms)"
        )
    if result.evidence:
        lines.append(f"  result: {clean(result.evidence)}")
    if result.evidence_error:
        lines.append(style.yellow(f"  evidence not saved: {clean(result.evidence_error)}"))
    return "\n".join(lines)


def render_sweep(tally: Tally, inventory: Inventory) -> str:
    from probe.term import clean, table

    failing_names = tally.failing_servers
    lines = [f"{len(tally.servers)} relays probed, {len(failing_names)} failing"]
    if not failing_names:
        return lines[0]
    rows = [
        [reason, str(len(relays)), clean(" ".join(sorted(relays)[:12])) + (" ..." if len(relays) > 12 else "")]
        for reason, relays in sorted(tally.failing.items(), key=lambda kv: -len(kv[1]))
    ]
    lines.append(table(("reason", "relays", "names"), rows, title="\nfailures by reason"))
    lines.append(labels_table(failing_names, inventory))
    return "\n".join(lines)


def labels_table(failing_names: set[str], inventory: Inventory) -> str:
    """Which label values the failing relays share, against how common each is in the fleet: the post-mortem lost
    an hour finding that every failing relay ran one kernel version."""
    from probe.term import Style, clean, table

    style = Style()
    fleet = Counter((k, v) for relay in inventory.relays for k, v in relay.labels.items())
    total = len(inventory.relays)
    # A label every relay carries (the provider of a one-provider fleet) tells nothing apart: leave it out.
    failing = Counter(
        (k, v)
        for relay in inventory.relays
        if relay.name in failing_names
        for k, v in relay.labels.items()
        if fleet[(k, v)] < total
    )
    rows = []
    for (key, value), count in failing.most_common(15):
        share = count / len(failing_names)
        label = clean(f"{key}={value}")
        rows.append([style.bold(label) if share == 1 else label, str(count), str(fleet[(key, value)]), f"{share:.0%}"])
    title = "\nlabels of failing relays (values the whole fleet shares left out)"
    return table(("label", "failing", "in fleet", "share of failing"), rows, title=title)
