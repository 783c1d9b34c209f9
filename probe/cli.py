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
        typer.Option(
            "--listen", help="ADDR:PORT or [V6ADDR]:PORT to answer on (required, repeatable; port 0: any free port)."
        ),
    ] = None,
    # Per source address. One `probe server` of a dual-stack relay asks from each of the relay's egress addresses
    # about 6 paths x 4 requests at once: a burst of 40 lets that through whole, while a spoofer can aim no more
    # than 20 answers a second at any one address.
    rate: Annotated[float, typer.Option("--rate", help="Answers per second to one source address.")] = 20.0,
    burst: Annotated[int, typer.Option("--burst", help="Answers one source address may have at once.")] = 40,
) -> None:
    """Answer egress-check requests with the source address and port they came from (see probe/reflector.py)."""
    if not listen:
        raise ConfigError(
            "--listen is required: the address(es) to answer on, e.g. --listen 198.18.0.2:7777 --listen "
            "[fd77:7770::2]:7777 (every address of the host is a choice to make explicitly: --listen 0.0.0.0:7777)"
        )
    if not 0 < rate < float("inf"):
        raise ConfigError(f"--rate must be a number above 0 (answers a second), got {rate:g}")
    if burst < 1:
        raise ConfigError(f"--burst must be at least 1, got {burst}")
    from probe import reflector as refl

    refl.serve([refl.parse_listen(item) for item in listen], rate=rate, burst=burst)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except WgProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
