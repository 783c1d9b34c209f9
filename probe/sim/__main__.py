"""`python -m probe.sim COMMAND ...`: the `probe sim` commands on their own (the same handlers and exit codes)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probe.errors import ConfigError, WgProbeError
from probe.sim import cli

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe")
    cli.register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    try:
        code: int = args.handler(args)
    except WgProbeError as exc:
        print(f"error: {cli.printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(run())
