"""The CLI imports only the module of the command it runs: `probe server` is run by hand during incidents and by
deploy pipelines, and every module it does not need is start-up time (the aggregator and prometheus_client alone
were a third of a second). Subprocesses: what a run imported is read from its `sys.modules` at exit."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.cli import COMMANDS, build_parser, command_of
from tests.unit.test_cli import closed_port, relay_toml, write_setup

# What only other commands need: the service stacks, the lab, the evidence dissector, other commands' modules
# (probe.reflector is not one: the egress stage speaks its wire format).
NOT_FOR_SERVER = (
    "prometheus_client",
    "aiomqtt",
    "paho",
    "scapy",
    "pyroute2",
    "agents",
    "probe.aggregator",
    "probe.lab",
    "probe.sim",
    "probe.verify",
    "probe.agent_config",  # the agent's whole config: a file without its tables is validated as a ProbeConfig
    "probe.service_config",
    "http.client",
    "urllib.request",
)

# The quick commands leave through os._exit, past atexit: the modules are written down on either way out.
RUN = """
import atexit, json, os, sys
out, sys.argv = sys.argv[1], ["probe", *sys.argv[2:]]
def write_modules():
    with open(out, "w") as file:
        file.write(json.dumps(sorted(sys.modules)))
    dataclasses = sys.modules.get("dataclasses")
    found = [
        (f"{name}.{value.__qualname__}", value.__dataclass_params__.frozen)
        for name, module in list(sys.modules.items())
        if name.startswith(("probe", "agents")) and dataclasses is not None
        for value in list(vars(module).values())
        if isinstance(value, type) and value.__module__ == name and dataclasses.is_dataclass(value)
    ]
    with open(out + ".dataclasses", "w") as file:
        file.write(json.dumps(sorted(found)))
def write_and_exit(code, exit=os._exit):
    write_modules()
    exit(code)
atexit.register(write_modules)
os._exit = write_and_exit
from probe.cli import main
main()
"""


def python(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in a fresh interpreter (this one's), its output captured as text."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env
    )


def modules_of_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `probe ARGS` in a fresh interpreter; its result and every module it had imported when it exited."""
    out = tmp_path / "modules.json"
    done = python("-c", RUN, str(out), *args, cwd=tmp_path)
    return done, set(json.loads(out.read_text()))


def dataclasses_of_run(tmp_path: Path) -> dict[str, bool]:
    """wgprobe's dataclasses in the last run of `modules_of_run`: name -> frozen."""
    found = json.loads((tmp_path / "modules.json.dataclasses").read_text())
    return {name: frozen for name, frozen in found}


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_probe_server_imports_nothing_only_other_commands_need(tmp_path: Path) -> None:
    config = write_setup(
        tmp_path,
        relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()),
        probe=f'evidence_dir = "{tmp_path / "evidence"}"\n',
    )
    # A real probe, evidence written: the failing path is the one that imports the most.
    done, modules = modules_of_run(tmp_path, "server", "xx-one-wg-001", "--config", str(config), "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["reason"] == "port_unreachable"
    assert loaded(modules, NOT_FOR_SERVER) == []
    # What only some runs need: a namespace (ctypes for setns), a name or key that is not found (difflib).
    assert loaded(modules, ("ctypes", "difflib")) == []
    assert "probe.runner" in modules  # the check sees a real run, not an early exit
    assert "cryptography.hazmat.backends" not in modules  # keys load without cryptography's OpenSSL backend module
    # pydantic's plugin loader names importlib.metadata, but with plugins off nothing calls it; argparse's help
    # width is found without shutil (probe/cli.py).
    assert loaded(modules, ("importlib.metadata", "email", "zipfile", "shutil", "bz2", "lzma")) == []
    # CPython 3.11 compiles every dataclass's methods when its module is imported (~3.8 M instructions a frozen,
    # slotted one): the immutable records on this path are NamedTuples, and the WireGuard message layouts (DESIGN.md:
    # frozen, checking their fields) are written out; the mutable state objects stay dataclasses.
    frozen = sorted(name for name, is_frozen in dataclasses_of_run(tmp_path).items() if is_frozen)
    assert frozen == []


# `probe server` with ServerResult's repr() made to say when it is called.
REPR_SEEN = """
import sys
from probe import results
def seen(self):
    sys.stderr.write("repr of a ServerResult\\n")
    return "ServerResult(...)"
results.ServerResult.__repr__ = seen
sys.argv = ["probe", *sys.argv[1:]]
from probe.cli import main
main()
"""


def test_probe_server_formats_no_result_it_does_not_print(tmp_path: Path) -> None:
    # CPython 3.11's asyncio.run formats its SIGINT handler, which holds the main task and the task's result, with
    # repr() as it tears down (probe/cli_probe.py): a result the coroutine returned was formatted twice.
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()))
    done = python("-c", REPR_SEEN, "server", "xx-one-wg-001", "--config", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["reason"] == "port_unreachable"
    assert "repr of a ServerResult" not in done.stderr


# A pydantic plugin, as a package installs one (an entry point in the group "pydantic"): loading it leaves a mark.
PLUGIN = """
import os
from pathlib import Path

Path(os.environ["WGPROBE_TEST_PLUGIN_MARK"]).write_text("loaded")


class _Plugin:
    def new_schema_validator(self, *args, **kwargs):
        return None, None, None


plugin = _Plugin()
"""


def plugin_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment without PYDANTIC_DISABLE_PLUGINS, with a plugin installed; the file its loading writes."""
    site = tmp_path / "site"
    dist = site / "wgprobe_test_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wgprobe-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nmark = wgprobe_test_plugin:plugin\n")
    (site / "wgprobe_test_plugin.py").write_text(PLUGIN)
    mark = tmp_path / "mark"
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    return env | {"PYTHONPATH": path, "WGPROBE_TEST_PLUGIN_MARK": str(mark)}, mark


def test_probe_does_not_look_for_pydantic_plugins_unless_the_user_asks(tmp_path: Path) -> None:
    env, mark = plugin_env(tmp_path)
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", 51820))

    def servers(env: dict[str, str]) -> None:
        done = python("-m", "probe", "servers", "--config", str(config), env=env)
        assert done.returncode == 0, done.stderr
        assert "xx-one-wg-001" in done.stdout

    servers(env)
    assert not mark.exists()
    # The user's own setting is kept: empty means "load every plugin", as pydantic reads it.
    servers({**env, "PYDANTIC_DISABLE_PLUGINS": ""})
    assert mark.read_text() == "loaded"


# What `probe` does before its command runs (probe/cli.py main), then what a program could do after: use
# importlib.metadata, turn plugins on and build a model.
LATER_USE = """
import os, sys
from probe import cli
os.environ.setdefault(*cli.NO_PYDANTIC_PLUGINS)
cli._DeferMetadata.install()
import pydantic
class First(pydantic.BaseModel):
    a: int
assert First(a=1).a == 1
assert "importlib.metadata" not in sys.modules, "ran before anything used it"
assert not any(isinstance(finder, cli._DeferMetadata) for finder in sys.meta_path), "the finder stays installed"
import importlib.metadata
assert importlib.metadata.version("pydantic") == pydantic.VERSION
assert importlib.metadata.distribution("wgprobe-test-plugin").entry_points[0].name == "mark"
os.environ["PYDANTIC_DISABLE_PLUGINS"] = ""
class Second(pydantic.BaseModel):
    b: int
print(sys.modules["importlib.metadata"].__file__)
"""


def test_importlib_metadata_loads_on_first_use_and_plugins_still_load_when_turned_on(tmp_path: Path) -> None:
    env, mark = plugin_env(tmp_path)
    done = python("-c", LATER_USE, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("importlib/metadata/__init__.py")  # the real module, not a stand-in
    assert mark.read_text() == "loaded"  # pydantic's loader found the plugin through the real entry_points


def test_probe_servers_needs_no_event_loop(tmp_path: Path) -> None:
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", 51820))
    done, modules = modules_of_run(tmp_path, "servers", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "xx-one-wg-001" in done.stdout
    assert loaded(modules, ("asyncio", "probe.runner", *NOT_FOR_SERVER)) == []


def test_probe_help_lists_every_command_without_importing_one(tmp_path: Path) -> None:
    done, modules = modules_of_run(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    listed = " ".join(done.stdout.split())  # argparse wraps the help lines
    for name, command in COMMANDS.items():
        assert f"{name} {command.help}" in listed
    command_modules = tuple({command.module for command in COMMANDS.values()} - {"probe.cli"})
    assert loaded(modules, ("pydantic", "asyncio", *command_modules)) == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_of_the_table_is_registered_by_its_module_with_the_same_help(name: str) -> None:
    command = COMMANDS[name]
    commands = argparse.ArgumentParser(prog="probe").add_subparsers(dest="command")
    getattr(importlib.import_module(command.module), command.register)(commands)
    assert name in commands.choices, f"{command.module}.{command.register} does not add {name!r}"
    helps = {action.dest: action.help for action in commands._choices_actions}
    assert helps[name] == command.help


@pytest.mark.parametrize("name", ["server", "sweep", "dissect", "agent", "serve", "verify", "reflector"])
def test_a_command_gets_its_own_options_and_the_rest_stay_listed(tmp_path: Path, name: str) -> None:
    done, modules = modules_of_run(tmp_path, name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: probe {name} ")
    assert COMMANDS[name].module in modules
    other = sorted({c.module for c in COMMANDS.values()} - {COMMANDS[name].module, "probe.cli"})
    assert loaded(modules, tuple(other)) == []
    listed, _ = modules_of_run(tmp_path, "-h", name)  # the top-level help still names every command
    assert all(n in listed.stdout for n in COMMANDS)


def test_the_parser_holds_only_the_running_command_unless_probes_own_help_may_list_them_all() -> None:
    def choices(argv: list[str]) -> list[str]:
        parser = build_parser(argv)
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return list(action.choices)

    assert choices(["server", "se-got-wg-001", "--json"]) == ["server"]
    assert choices(["serve", "--help"]) == ["aggregator", "serve"]  # one register function adds both
    for argv in (["-h", "server"], ["--", "server"], [], ["no-such-command"]):
        assert choices(argv) == list(COMMANDS), argv


@pytest.mark.parametrize("columns", [None, "60", "200", "0", "-3", "wide"])
def test_help_is_laid_out_as_argparse_would_without_importing_shutil(
    monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    from probe.cli import HelpFormatter

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert HelpFormatter("probe")._width == argparse.HelpFormatter("probe")._width
    for argv in (["--help"], ["server", "--help"]):
        ours, theirs = build_parser(argv), build_parser(argv)
        pairs = [(ours, theirs), *zip(subparsers(ours), subparsers(theirs), strict=True)]
        for _, parser in pairs:
            parser.formatter_class = argparse.HelpFormatter
        for mine, plain in pairs:
            assert mine.format_help() == plain.format_help()


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices.values())


def test_the_command_is_the_first_word_that_is_not_an_option() -> None:
    assert command_of(["server", "se-got-wg-001", "--json"]) == "server"
    assert command_of(["-h", "sweep"]) == "sweep"
    assert command_of(["--", "servers"]) == "servers"
    assert command_of(["--version"]) is None
    assert command_of([]) is None


def test_one_module_of_the_aggregator_does_not_load_the_rest(tmp_path: Path) -> None:
    done, modules = modules_of_run(tmp_path, "serve", "--help")
    assert done.returncode == 0, done.stderr
    assert loaded(modules, ("probe.aggregator",)) == ["probe.aggregator", "probe.aggregator.cli"]
    assert loaded(modules, ("pydantic", "prometheus_client")) == []


def test_the_aggregator_package_still_offers_every_name_it_exports() -> None:
    import probe.aggregator as package

    for name in package.__all__:
        home = importlib.import_module(f"probe.aggregator.{package._HOMES[name]}")
        assert getattr(package, name) is getattr(home, name)
    assert sorted(package._HOMES) == sorted(package.__all__)
    with pytest.raises(AttributeError):
        package.__getattr__("no_such_name")
