"""A service (`probe serve` here) as systemd starts and stops it, in the moments before it is up: signals that arrive
while it starts, and a config error only met when it binds [http] listen. Processes against a `probe sim up`
fleet on loopback, no root."""

from __future__ import annotations

import argparse
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from probe import cli
from probe.errors import ConfigError
from tests.unit.test_verify_cli import Sim, sim_fleet

TIMEOUT = 60


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with sim_fleet(tmp_path_factory.mktemp("sim"), relays=2) as fleet:
        yield fleet


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port: int = probe_socket.getsockname()[1]
        return port


def serve_config(sim: Sim, listen: str, inventory: str | None = None) -> Path:
    text = (sim.directory / "agent.toml").read_text()
    if inventory is not None:
        text = text.replace('source = "relays.json"', f'source = "{inventory}"')
    config = sim.directory / f"serve-{listen.rsplit(':', 1)[1]}.toml"
    config.write_text(text + f'\n[http]\nlisten = "{listen}"\n')
    return config


def run(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    """`probe COMMAND --config CONFIG` to its end (a service that ends by itself: refused at start)."""
    return subprocess.run(
        [sys.executable, "-m", "probe", command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "probe", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stderr_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """`proc`'s standard error a line at a time as it comes, "" at its end (read in a thread: a pipe read blocks)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_listen_address_in_use_is_a_config_error_not_a_bug(sim: Sim) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("serve", serve_config(sim, f"127.0.0.1:{port}"))
    assert done.returncode == 2, done.stderr
    assert "already in use" in done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    # Nor a line before it claiming the service was up, telling the reader where to look.
    assert "serving" not in done.stderr and "status_page" not in done.stderr


def test_a_refusal_inside_a_task_group_is_reported_as_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the services' task groups raise: the refusal wrapped (twice here) is exit 2 with its message, never
    # "a bug in wgprobe"; a real bug wrapped the same way stays one.
    def refused(args: argparse.Namespace) -> int:
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [ConfigError("[http] listen: in use")])])

    def bug(args: argparse.Namespace) -> int:
        raise ExceptionGroup("outer", [ValueError("a real bug")])

    for handler, code, words in ((refused, 2, "error: [http] listen: in use"), (bug, 70, "internal error")):
        parser = argparse.ArgumentParser()
        parser.set_defaults(handler=handler)
        monkeypatch.setattr(cli, "build_parser", lambda argv, parser=parser: parser)
        assert cli.run([]) == code
        assert words in capsys.readouterr().err


def test_sighup_and_sigterm_while_starting_neither_kill_nor_lose_the_stop(sim: Sim) -> None:
    # The first inventory cannot be fetched (nothing listens on port 1): the service waits for it, with backoff.
    # SIGHUP's default action used to end it there (129, no word in the log); SIGTERM then stops it cleanly.
    proc = serve(serve_config(sim, f"127.0.0.1:{free_port()}", inventory="http://127.0.0.1:1/relays.json"))
    try:
        # Signalled once it says it waits for the inventory: still starting, and past the interpreter's start (a
        # fixed sleep of 1.5 s was not, once, on a loaded machine: SIGHUP's default ended the test instead).
        lines = stderr_lines(proc)
        while "inventory_unavailable" not in (line := lines.get(timeout=TIMEOUT)):
            assert line, "probe serve ended while starting"
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None, f"SIGHUP ended it ({proc.returncode})"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0, "".join(iter(lines.get, ""))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()  # stderr is the reading thread's to close, at its end


def test_an_agent_whose_listen_address_is_in_use_exits_before_it_is_on_the_broker(sim: Sim, tmp_path: Path) -> None:
    """A second `probe agent` under a running one's name (a copied config) that cannot bind [http] listen exits 2
    without ever connecting: on the broker, its client id would take the running agent's session away."""
    password = tmp_path / "mqtt.password"
    password.write_text("secret\n")
    password.chmod(0o600)
    with socket.socket() as broker, socket.socket() as taken:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.settimeout(0.5)  # stands for the broker: it only has to notice a connection
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = serve_config(sim, f"127.0.0.1:{taken.getsockname()[1]}")
        config.write_text(
            config.read_text()
            + f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.getsockname()[1]}"\nusername = "sim-agent"\n'
            f'password_file = "{password}"\n[spool]\npath = "{tmp_path / "spool.sqlite"}"\n'
        )
        done = run("agent", config)
        assert done.returncode == 2, done.stderr
        assert "already in use" in done.stderr
        with pytest.raises(TimeoutError):
            broker.accept()[0].close()  # nobody knocked


def _servers(port: int) -> int | None:
    """How many relays `probe serve`'s aggregator holds (its fleet view), None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/servers", timeout=5) as answer:
            count: int = json.load(answer)["servers"]
            return count
    except OSError:
        return None


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_serve_loads_the_inventory_once_per_reload_for_its_agent_and_its_aggregator(sim: Sim) -> None:
    # The agent and the aggregator in `probe serve` each loaded the inventory and logged it: every SIGHUP and every
    # refresh said "inventory_changed" (and any skipped entry) twice. Now the agent loads and the aggregator adopts.
    document = json.loads((sim.directory / "relays.json").read_text())
    inventory = sim.directory / "relays-reloaded.json"
    inventory.write_text(json.dumps(document))
    port = free_port()
    proc = serve(serve_config(sim, f"127.0.0.1:{port}", inventory=str(inventory)))
    lines = stderr_lines(proc)
    said: list[str] = []
    try:
        _until(lambda: _servers(port) == 2, "serving the two relays")
        document["wireguard"]["relays"] = document["wireguard"]["relays"][:1]
        inventory.write_text(json.dumps(document))
        proc.send_signal(signal.SIGHUP)
        _until(lambda: _servers(port) == 1, "the aggregator following the agent's reload")
        proc.send_signal(signal.SIGHUP)  # nothing changed: answered in the log, once
        # Stopped once that answer is in the log (a fixed second's wait was not always enough on a loaded machine).
        while "inventory_reloaded" not in (line := lines.get(timeout=TIMEOUT)):
            assert line, "probe serve ended before answering the SIGHUP: " + "".join(said)
            said.append(line)
        said.append(line)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    said.extend(iter(lines.get, ""))  # the rest, to its end
    err = "".join(said)
    assert code == 0, err
    assert err.count("inventory_changed") == 1, err
    assert err.count("inventory_reloaded") == 1, err
