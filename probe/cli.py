"""The `probe` command. Subcommands import what they need when they run, so `probe server` starts fast."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from probe import cli_probe
from probe.errors import ConfigError, WgProbeError
from probe.lab.cli import lab_app

app = typer.Typer(
    name="probe",
    help="End-to-end connectivity probing for fleets of WireGuard relays.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(lab_app, name="lab")
app.command()(cli_probe.server)
app.command()(cli_probe.sweep)
app.command()(cli_probe.servers)
app.command()(cli_probe.dissect)

EXIT_USAGE = 2


@app.command()
def reflector(
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", help="ADDR:PORT or [V6ADDR]:PORT to answer on (repeatable)."),
    ] = None,
) -> None:
    """Answer egress-check requests with the source address and port they came from (see probe/reflector.py)."""
    from probe import reflector as refl

    addresses = [refl.parse_listen(item) for item in (listen or [f"0.0.0.0:{refl.DEFAULT_PORT}"])]
    refl.serve(addresses)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except WgProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
