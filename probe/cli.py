"""The `probe` command.

argparse, and each command's heavy imports inside its handler: `probe server` is run by hand during incidents and
by deploy pipelines, so its start-up counts (a CLI framework cost a quarter of a second here). Every command
module offers `register(subparsers)`; a handler takes the parsed arguments and returns the exit code.

Exit codes, for every command (probe/errors.py holds them): 0 all ok, 1 a relay failed, 2 usage or config error,
3 could not judge (inventory unreachable, the agent's own network down), 70 a bug in wgprobe.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from probe import __version__
from probe.errors import (
    EXIT_BUG,
    EXIT_FAILED,
    EXIT_UNJUDGED,
    EXIT_USAGE,
    ConfigError,
    UnavailableError,
    WgProbeError,
)

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# What each kind of error means for the exit code, and how its message starts; checked in order.
ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, EXIT_USAGE, "error"),
    (UnavailableError, EXIT_UNJUDGED, "could not judge"),
    (WgProbeError, EXIT_FAILED, "error"),
)


def build_parser() -> argparse.ArgumentParser:
    from agents import cli as agent_cli
    from probe import cli_probe
    from probe.aggregator import cli as aggregator_cli
    from probe.lab import cli as lab_cli
    from probe.sim import cli as sim_cli
    from probe.verify import cli as verify_cli

    parser = argparse.ArgumentParser(
        prog="probe",
        description="End-to-end connectivity probing for fleets of WireGuard relays.",
        epilog="Exit codes: 0 all ok, 1 a relay failed, 2 usage or config error, 3 could not judge.",
    )
    parser.add_argument("--version", action="version", version=f"wgprobe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli_probe.register(commands)
    lab_cli.register(commands)
    agent_cli.register(commands)
    aggregator_cli.register(commands)
    sim_cli.register(commands)
    verify_cli.register(commands)
    _register_reflector(commands)
    return parser


def _register_reflector(commands: Commands) -> None:
    parser = commands.add_parser(
        "reflector",
        help="answer egress-check requests with the address they came from",
        description="Answer egress-check requests with the source address and port they came from "
        "(see probe/reflector.py).",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="ADDR:PORT or [V6ADDR]:PORT to answer on (required, repeatable; port 0: any free port)",
    )
    # Per source address, which for the egress check is a relay's egress address: every agent's requests through
    # that relay share it. A lossy relay's probes resend every 50 ms, and a `probe verify` of every path from
    # several agents asks at once: 100 a second after a burst of 200 carries those, while a spoofer can still aim
    # no more than 100 answers of 48 bytes a second (4.8 kB/s, no amplification) at any one address.
    parser.add_argument("--rate", type=float, default=100.0, help="answers per second to one source address")
    parser.add_argument("--burst", type=int, default=200, help="answers one source address may have at once")
    parser.set_defaults(handler=_reflector)


def _reflector(args: argparse.Namespace) -> int:
    if not args.listen:
        raise ConfigError(
            "--listen is required: the address(es) to answer on, e.g. --listen 198.18.0.2:7777 --listen "
            "[fd77:7770::2]:7777 (every address of the host is a choice to make explicitly: --listen 0.0.0.0:7777)"
        )
    if not 0 < args.rate < float("inf"):
        raise ConfigError(f"--rate must be a number above 0 (answers a second), got {args.rate:g}")
    if args.burst < 1:
        raise ConfigError(f"--burst must be at least 1, got {args.burst}")
    from probe import reflector as refl

    refl.serve([refl.parse_listen(item) for item in args.listen], rate=args.rate, burst=args.burst)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command; every error becomes a message and an exit code, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from probe.term import clean_lines

    try:
        code: int = args.handler(args)
    except WgProbeError as exc:
        exit_code, prefix = next((code, prefix) for kind, code, prefix in ERRORS if isinstance(exc, kind))
        print(f"{prefix}: {clean_lines(exc)}", file=sys.stderr)
        return exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`probe sweep --json | head`): not an error, and nothing more can be written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # a bug: say so in one line; the traceback only on request
        print(f"internal error (a bug in wgprobe): {type(exc).__name__}: {clean_lines(exc)}", file=sys.stderr)
        if os.environ.get("WGPROBE_DEBUG"):
            import traceback

            traceback.print_exc()
        else:
            print("set WGPROBE_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_BUG
    return code


def main() -> NoReturn:
    sys.exit(run())
