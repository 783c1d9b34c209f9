"""The `probe` command.

argparse, and each command's heavy imports inside its handler: `probe server` is run by hand during incidents and
by deploy pipelines, so its start-up counts (a CLI framework cost a quarter of a second here). Every command
module offers a `register(subparsers)` function for its command(s), and only the module of the command being run
is imported, only that command's parser built (`COMMANDS`); a handler takes the parsed arguments and returns the
exit code.

Exit codes, for every command (probe/errors.py holds them): 0 all ok, 1 a relay failed, 2 usage or config error,
3 could not judge (inventory unreachable, the agent's own network down), 70 a bug in wgprobe.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

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
    from importlib.machinery import ModuleSpec

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# What each kind of error means for the exit code, and how its message starts; checked in order.
ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, EXIT_USAGE, "error"),
    (UnavailableError, EXIT_UNJUDGED, "could not judge"),
    (WgProbeError, EXIT_FAILED, "error"),
)


class Command(NamedTuple):  # not a dataclass: `probe --help` would import dataclasses and inspect for it
    """Where a command lives: `module.register(commands)` adds it (and maybe its siblings) to the parser. The help
    line is kept here too, so `probe --help` lists every command without importing one; a test holds it equal to
    the line the module registers."""

    module: str
    register: str
    help: str


# Only the running command's module is imported: `probe server` must not pay for the aggregator, the agent, the
# lab or prometheus_client (importing every command's module made `probe --help` 0.45 s here, 0.05 s without).
# Listed in the order `probe --help` shows them.
COMMANDS: dict[str, Command] = {
    "server": Command("probe.cli_probe", "register_server", "probe one relay on every path, stage by stage"),
    "sweep": Command("probe.cli_probe", "register_sweep", "probe every relay; failures by reason and by shared labels"),
    "servers": Command("probe.cli_probe", "register_servers", "list the inventory the config points at"),
    "dissect": Command("probe.cli_probe", "register_dissect", "show the packets of evidence pcaps"),
    "lab": Command(
        "probe.lab.cli", "register", "a fleet of real WireGuard relays in network namespaces, with injectable faults"
    ),
    "agent": Command("agents.cli", "register", "probe every relay continuously and publish the results over MQTT"),
    "aggregator": Command(
        "probe.aggregator.cli",
        "register",
        "one verdict per relay from many agents: /metrics, the API and the status page",
    ),
    "serve": Command(
        "probe.aggregator.cli",
        "register",
        "agent and aggregator in one process, no broker: probe, judge, serve the status page",
    ),
    "sim": Command(
        "probe.sim.cli",
        "register",
        "a simulated fleet of WireGuard relays on loopback, no root, with injectable faults",
    ),
    "verify": Command(
        "probe.verify.cli",
        "register",
        "post-deploy verification: judge servers on every path; exit 0 verified, 1 failed, 3 inconclusive",
    ),
    "reflector": Command(
        "probe.cli", "register_reflector", "answer egress-check requests with the address they came from"
    ),
}


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` names, if any: the first word that is not an option (`probe` has no option that takes a
    value, so nothing else can come before it)."""
    for index, word in enumerate(argv):
        if word == "--":
            return argv[index + 1] if index + 1 < len(argv) else None
        if not word.startswith("-"):
            return word
    return None


def terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`, the width argparse lays help out to, without importing shutil: argparse
    imports it for that alone, and shutil imports bz2, lzma and zlib (6 M instructions, ~0.7% of `probe server`'s
    cold start). The same rules: $COLUMNS if a positive number, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own layout, to the width argparse would find (see terminal_columns)."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, terminal_columns() - 2 if width is None else width)


class ArgumentParser(argparse.ArgumentParser):
    """Every parser of `probe`, the commands' too (add_subparsers makes them of the parser's own class): argparse's,
    with HelpFormatter unless a command asks for another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: the full parser of the command it names (its module imported), a one-line stub for
    every other command, in the table's order (enough for `probe --help` and for naming the choices)."""
    parser: argparse.ArgumentParser = ArgumentParser(
        prog="probe",
        description="End-to-end connectivity probing for fleets of WireGuard relays.",
        epilog="Exit codes: 0 all ok, 1 a relay failed, 2 usage or config error, 3 could not judge.",
    )
    parser.add_argument("--version", action="version", version=f"wgprobe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    words = sys.argv[1:] if argv is None else argv
    named = command_of(words)
    chosen = COMMANDS.get(named or "")
    # Only `probe`'s own help lists the commands; it is asked for by an option before the command's name (`probe -h
    # server`), or comes with no command or an unknown one. Otherwise the other commands are left out of the parser
    # (each stub is an ArgumentParser: start-up time), and nothing printed changes.
    listed = chosen is None or any(word.startswith("-") for word in words[: list(words).index(named or "")])
    for name, entry in COMMANDS.items():
        if name in commands.choices:
            continue  # added by its register function along with the chosen command
        if chosen is not None and (entry.module, entry.register) == (chosen.module, chosen.register):
            register(commands, entry)
        elif listed:
            # A stub only names the command and its help line: it is never parsed, so it needs no -h of its own
            # (each parser's help option and the translations argparse looks up for it are start-up time).
            commands.add_parser(name, help=entry.help, add_help=False)
    return parser


def register(commands: Commands, entry: Command) -> None:
    """Import the module of a command and let it add its parser (and those of the commands it shares it with)."""
    adder: Callable[[Commands], None] = getattr(importlib.import_module(entry.module), entry.register)
    adder(commands)


def register_reflector(commands: Commands) -> None:
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
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from probe.term import clean_lines

    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`probe sweep --json | head`): not an error, and nothing more can be written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        # A refusal comes directly or out of a service's task group, where the first error is the cause (any others
        # followed from it): an `[http] listen` already in use was reported as a bug (70), and the units'
        # RestartPreventExitStatus=2 never saw the config error it was. Anything else is a bug: one line, the
        # traceback only on request.
        cause = _first(exc)
        if isinstance(cause, WgProbeError):
            return _refused(cause)
        print(f"internal error (a bug in wgprobe): {type(exc).__name__}: {clean_lines(exc)}", file=sys.stderr)
        if os.environ.get("WGPROBE_DEBUG"):
            import traceback

            traceback.print_exc()
        else:
            print("set WGPROBE_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_BUG
    return code


def _first(exc: BaseException) -> BaseException:
    """The first error in `exc`, however deeply task groups nested it."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _refused(exc: WgProbeError) -> int:
    from probe.term import clean_lines

    exit_code, prefix = next((code, prefix) for kind, code, prefix in ERRORS if isinstance(exc, kind))
    print(f"{prefix}: {clean_lines(exc)}", file=sys.stderr)
    return exit_code


# Commands that are over once their output is out. Past that point the interpreter's own shutdown (tearing down
# some 350 modules, a last garbage collection) cost `probe server` 40 ms of its 0.33 s here, and nothing these
# commands leave needs it: their output is flushed below, their files are closed, and the kernel drops the key
# locks and sockets with the process. The services keep the ordinary exit: libraries they load may rely on it.
QUICK_EXIT = frozenset({"server", "sweep", "servers"})


# The long-running services: signals that arrive while they start are held for them (probe/signals.py).
SERVICES = frozenset({"agent", "aggregator", "serve"})


# wgprobe uses no pydantic plugins, and looking for them costs every command its start-up: when the first model is
# built, pydantic reads the entry points of every installed package (~5 ms of `probe server`'s cold start). Set for
# the `probe` command only (importing `probe` as a library changes nothing), before any model is built; a value the
# user set is kept, so `PYDANTIC_DISABLE_PLUGINS= probe ...` (empty) loads the installed plugins again.
NO_PYDANTIC_PLUGINS = ("PYDANTIC_DISABLE_PLUGINS", "__all__")


# pydantic's plugin loader imports `entry_points` from importlib.metadata when its module loads, at the first model
# class, whether plugins are disabled or not; importlib.metadata brings email, zipfile, csv, tempfile and
# importlib.resources with it: 37 M instructions, ~4% of `probe server`'s cold start, for a function never called
# while plugins are disabled. importlib.util.LazyLoader cannot defer it: on CPython 3.11 an import statement naming
# a lazy module reads its __spec__, which executes it. So, with plugins disabled, that one module of pydantic
# executes with a stand-in for importlib.metadata whose entry_points imports the real module when called; the
# stand-in is gone from sys.modules as soon as that module has run, so importlib.metadata stays unimported until
# something uses it, and then loads as usual.
PLUGIN_LOADER = "pydantic.plugin._loader"
PLUGINS_OFF = frozenset({"__all__", "1", "true"})  # the values pydantic's loader reads as "no plugins at all"


class _DeferMetadata:
    """A sys.meta_path finder that acts once, on pydantic's plugin loader (above), and removes itself."""

    @classmethod
    def install(cls) -> None:
        loaded = "importlib.metadata" in sys.modules or PLUGIN_LOADER in sys.modules
        if os.environ.get("PYDANTIC_DISABLE_PLUGINS") in PLUGINS_OFF and not loaded:
            sys.meta_path.insert(0, cls())

    def find_spec(self, name: str, path: Sequence[str] | None, target: object = None) -> ModuleSpec | None:
        if name != PLUGIN_LOADER:
            return None
        sys.meta_path.remove(self)
        spec = next(filter(None, (_find(finder, name, path, target) for finder in sys.meta_path)), None)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            # Not an importlib.abc.Loader subclass: importlib.abc imports importlib.resources, part of the cost.
            spec.loader = _WithoutMetadata(spec.loader)  # type: ignore[assignment]
        return spec


def _find(finder: object, name: str, path: Sequence[str] | None, target: object) -> ModuleSpec | None:
    find = getattr(finder, "find_spec", None)
    return None if find is None else find(name, path, target)


class _WithoutMetadata:
    """Runs a module with the stand-in for importlib.metadata in sys.modules, unless the real one is loaded."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        if "importlib.metadata" in sys.modules or os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in PLUGINS_OFF:
            self._loader.exec_module(module)
            return
        stand_in = ModuleType("importlib.metadata")
        stand_in.entry_points = _entry_points  # type: ignore[attr-defined]
        stand_in.__getattr__ = _real_metadata_attribute  # type: ignore[method-assign]
        sys.modules["importlib.metadata"] = stand_in
        try:
            self._loader.exec_module(module)
        finally:
            if sys.modules.get("importlib.metadata") is stand_in:
                del sys.modules["importlib.metadata"]


def _entry_points(**params: Any) -> Any:
    from importlib.metadata import entry_points

    return entry_points(**params)


def _real_metadata_attribute(name: str) -> Any:
    """Any other name asked of the stand-in (a later pydantic may import more): the real module's. Dunders are not
    forwarded: the import system asks the stand-in for __path__ and the like, which must not load the module."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("importlib.metadata"), name)


def main() -> NoReturn:
    os.environ.setdefault(*NO_PYDANTIC_PLUGINS)
    _DeferMetadata.install()
    command = command_of(sys.argv[1:])
    if command in SERVICES:
        from probe import signals

        signals.hold()
    code = run()
    if command in QUICK_EXIT:
        os._exit(flushed(code))
    sys.exit(code)


def flushed(code: int) -> int:
    """Flush what is printed; `code`, or EXIT_FAILED when the reader of stdout went away, as in `run`."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = EXIT_FAILED
    with contextlib.suppress(OSError):  # nowhere left to say anything
        sys.stderr.flush()
    return code
