"""`probe verify`: the post-deploy verification hook. `register(commands)` adds it to the `probe` parser; this module
imports nothing heavy (the parser is built for every command), the handler loads the rest.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

    from probe.verify.baseline import Thresholds
    from probe.verify.run import Options

DESCRIPTION = """\
Verify servers after a deploy: probe them from this host with the agent config on every path (the main port and
one port of every entry port range, IPv4 and IPv6), a few rounds, and judge. Each verdict is printed the moment it
is certain, and the command exits the moment the whole verdict is.

Judging (per server): at most --rounds rounds (3); it FAILS at --fail-rounds failed rounds (2) or at once on a
definite answer (ICMP port/host unreachable, packet too big, a wrong egress address, a wrong reply: loss cannot
make those); it PASSES at rounds - fail-rounds + 1 good rounds (2). Loss is not an outage: a stage passes on one
good answer of several, and one failed round is forgiven. A round's failures count only when this host's own
reach (the control check: reflector and forward target asked through no relay) held; otherwise, and when this
host could not send at all, the round is not judged.

--soak keeps verifying, a pass every --every (60s) over the window, and fails at the first server that goes
down, saying when. --baseline control also probes a control group of servers not in the list (--control-size,
same location first) and fails when the listed servers' success ratio is lower than the control's by more than
--max-success-drop (0.05) or their median forward round trip higher by more than --max-rtt-increase (20ms),
over every pass (then at most 4 servers are probed at once, so that round trips measure the network rather than
this host's own load).

--aggregator URL asks the aggregator instead: every agent online with a good control check probes the servers
now, on every path, in as many rounds as the rules above want (a command per round; the inventory and the quorum
are the aggregator's, no agent config is needed here). Each agent's rounds are judged as this host's would be,
and the server's verdict is the aggregator's quorum rule over the agents: it fails when a quorum of them fails it,
passes when they all pass it, and a quorum of the agents asked must have answered either way. What has not
answered within --timeout (30s) of a pass's start is inconclusive, never passed."""

EPILOG = """\
exit codes:
  0  verified: every server passed (and the baseline comparison held)
  1  a server failed (named, with its stage), or the baseline comparison failed
  2  usage or config error (an unknown server is named, with close names suggested)
  3  inconclusive: could not judge (this host's own network down, no round judged; with --aggregator: no agent
     online, no quorum of agents answered within --timeout, the aggregator unreachable); never a pass"""


def _positive(text: str, *, most: int = 1000) -> int:
    # An upper bound too: --rounds 10**20 was taken and then verified a healthy server for ever.
    if not text.isdecimal() or not 1 <= int(text) <= most:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {most}, got {text[:40]!r}")
    return int(text)


def _rounds(text: str) -> int:
    return _positive(text, most=MOST_ROUNDS)


MOST_ROUNDS = 100
LONGEST_SOAK = 7 * 86400.0  # a week: a longer soak is a typo, and its report would wait that long
LONGEST_TIMEOUT = 3600.0


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "verify",
        help="post-deploy verification: judge servers on every path; exit 0 verified, 1 failed, 3 inconclusive",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("servers", nargs="*", metavar="SERVER", help="server to verify, as se-got-wg-001")
    parser.add_argument(
        "--location", action="append", default=[], metavar="CODE", help="every server at this location (se, se-got)"
    )
    parser.add_argument(
        "--servers-file", action="append", default=[], type=Path, metavar="FILE", help="one name a line, # comments"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="agent config (default: $WGPROBE_CONFIG, then ./agent.toml)"
    )
    parser.add_argument(
        "--aggregator", metavar="URL", help="ask every online agent of this aggregator instead (http://HOST:PORT)"
    )
    parser.add_argument(
        "--timeout", metavar="DURATION", help="with --aggregator: how long a pass waits for the agents (30s)"
    )
    parser.add_argument("--rounds", type=_rounds, default=3, metavar="N", help="rounds per server at most (default 3)")
    parser.add_argument(
        "--fail-rounds", type=_rounds, default=2, metavar="N", help="failed rounds that fail a server (2)"
    )
    parser.add_argument("--soak", metavar="DURATION", help="keep verifying for this long (90s, 10m, 24h)")
    parser.add_argument("--every", metavar="INTERVAL", help="between the passes of a soak (default 60s)")
    parser.add_argument("--baseline", choices=("control",), help="compare with servers not deployed")
    parser.add_argument(
        "--control-size", type=_positive, default=10, metavar="N", help="servers in the control group (10)"
    )
    parser.add_argument("--max-rtt-increase", metavar="DURATION", help="baseline: default 20ms")
    parser.add_argument("--max-success-drop", metavar="SHARE", help="baseline: default 0.05 (5%%)")
    parser.add_argument("--keep-going", action="store_true", help="judge every server even after one failed")
    concurrency_help = "servers probed at once (16; 4 at most with --baseline)"
    parser.add_argument("--concurrency", type=_positive, default=16, metavar="N", help=concurrency_help)
    parser.add_argument("--json", action="store_true", dest="json_out", help="print one JSON object")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML for CI (a testcase per server)")
    parser.set_defaults(handler=verify)


def _thresholds(args: argparse.Namespace) -> Thresholds | None:
    """The canary comparison's thresholds (Thresholds' own defaults for what is not given), None without one."""
    from probe.errors import ConfigError
    from probe.verify.baseline import Thresholds
    from probe.verify.select import parse_duration, parse_ratio

    if args.baseline != "control":
        if args.max_rtt_increase is not None or args.max_success_drop is not None:
            raise ConfigError(
                "--max-rtt-increase and --max-success-drop judge the canary comparison: give --baseline control too"
            )
        return None
    given: dict[str, float] = {}
    if args.max_rtt_increase is not None:
        given["max_rtt_increase"] = parse_duration(args.max_rtt_increase, what="--max-rtt-increase")
    if args.max_success_drop is not None:
        given["max_success_drop"] = parse_ratio(args.max_success_drop, what="--max-success-drop")
    return Thresholds(**given)


def options_from(args: argparse.Namespace) -> Options:
    """The options, checked before anything is loaded or probed: a usage error costs no probing."""
    from probe.errors import ConfigError
    from probe.verify.judge import Rules
    from probe.verify.run import Options
    from probe.verify.select import parse_duration
    from probe.verify.session import Soak

    if args.fail_rounds > args.rounds:
        raise ConfigError(f"--fail-rounds ({args.fail_rounds}) cannot be more than --rounds ({args.rounds})")
    if args.every is not None and args.soak is None:
        raise ConfigError("--every sets the interval of a soak: give --soak DURATION too")
    if args.timeout is not None and args.aggregator is None:
        raise ConfigError("--timeout is how long the agents of --aggregator URL are waited for: give --aggregator too")
    if args.aggregator is not None and args.config is not None:
        raise ConfigError("--config is for verifying from this host; --aggregator uses the aggregator's inventory")
    soak = None
    if args.soak is not None:
        duration = parse_duration(args.soak, what="--soak", longest=LONGEST_SOAK)
        if args.every is None:
            every = min(60.0, duration)
        else:
            every = parse_duration(args.every, what="--every", longest=duration)
        soak = Soak(duration, every)
    thresholds = _thresholds(args)
    if args.junit is not None:
        from probe.verify.junit import check_writable

        check_writable(args.junit)
    timeout = None
    if args.aggregator is not None:
        from probe.verify.aggregator import DEFAULT_TIMEOUT

        timeout = (
            parse_duration(args.timeout, what="--timeout", longest=LONGEST_TIMEOUT) if args.timeout else DEFAULT_TIMEOUT
        )
    return Options(
        rules=Rules(rounds=args.rounds, fail_rounds=args.fail_rounds),
        timeout=timeout,
        soak=soak,
        thresholds=thresholds,
        keep_going=args.keep_going,
        concurrency=args.concurrency,
        json_out=args.json_out,
        junit=args.junit,
    )


def verify(args: argparse.Namespace) -> int:
    from probe.cli_probe import _load, _lock_keys
    from probe.errors import ConfigError
    from probe.verify.baseline import choose_control
    from probe.verify.run import execute
    from probe.verify.select import select_servers

    options = options_from(args)
    if args.aggregator is not None:
        from probe.verify.aggregator import AggregatorSource, aggregator_url, fetch_inventory

        base = aggregator_url(args.aggregator)
        assert options.timeout is not None
        source: AggregatorSource | None = AggregatorSource(base, timeout=options.timeout)
        config, inventory = None, asyncio.run(fetch_inventory(base))
    else:
        source = None
        config, inventory = _load(args.config)
    verified = select_servers(inventory, args.servers, args.location, args.servers_file)
    control = []
    if options.thresholds is not None:
        control = choose_control(inventory.relays, verified, args.control_size)
        if not control:
            raise ConfigError("--baseline control: no control group: every relay of the inventory is being verified")
    if config is not None:
        _lock_keys(config)
    report = asyncio.run(execute(config, inventory, verified, control, options, source=source))
    return report.exit_code
