"""The CLI's error boundary, as a user meets it: exit codes that say who is at fault, outside strings printed as
data, results never lost to evidence that cannot be written. Subprocesses, no root: the "relays" here are a
closed loopback port (port unreachable at once) and a broadcast address nothing may send to."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from probe.cli_probe import exit_code
from probe.results import PathResult, Reason, ServerResult, StageName, StageResult
from probe.tally import Tally
from probe.wireguard import PrivateKey

KEY = base64.b64encode(PrivateKey.generate().public_key().raw).decode()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_setup(tmp_path: Path, relays: str, *, probe: str = "", agent: str = "") -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    key_file = keys / "agent.key"
    key_file.write_text(PrivateKey.generate().to_base64() + "\n")
    key_file.chmod(0o600)
    (tmp_path / "fleet.toml").write_text(relays)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nname = "test-agent"\n{agent}\n'
        '[[identities]]\nprivate_key_file = "keys/agent.key"\nipv4 = "10.64.0.2"\n'
        '[inventory]\nsource = "fleet.toml"\n'
        # Loopback: a failing `probe server` asks its control check, which pings the forward target from this host.
        '[checks]\nforward_target = "127.0.0.1"\n'
        f"[probe]\ntimeout = 0.2\nhandshake_timeout = 0.1\nhandshake_attempts = 1\n{probe}"
    )
    return config


def relay_toml(name: str, ipv4: str, port: int, *, labels: str = "", location: str = "") -> str:
    extra = (f"labels = {labels}\n" if labels else "") + (f"location = {location}\n" if location else "")
    return f'[[relays]]\nname = "{name}"\npublic_key = "{KEY}"\nipv4 = "{ipv4}"\nmain_port = {port}\n{extra}'


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "probe", *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_outside_strings_are_printed_as_data_never_markup_or_terminal_control(tmp_path: Path) -> None:
    port = closed_port()
    relays = (
        relay_toml("xx-one-wg-001", "127.0.0.1", port, labels='{ kernel = "[/]", site = "[link=http://x]y[/link]" }')
        + relay_toml("xx-two-wg-002", "127.0.0.1", port, labels='{ kernel = "[/]", os = "\\u001b]0;pwned\\u0007" }')
        + relay_toml("xx-ok-wg-003", "127.0.0.1", port, location='"\\u001b[31mred"')
        # refused by the inventory (a name is hostname-like); the warning quotes it, escaped
        + relay_toml("evil\\u001b]0;title\\u0007", "127.0.0.1", port)
    )
    config = write_setup(tmp_path, relays)
    swept = probe("sweep", "--config", str(config))
    listed = probe("servers", "--config", str(config))
    for done in (swept, listed):
        assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    assert swept.returncode == 1, swept.stderr
    assert "kernel=[/]" in swept.stdout and "site=[link=http://x]y[/link]" in listed.stdout
    assert "os=\\x1b]0;pwned\\x07" in listed.stdout
    assert "\\x1b[31mred" in listed.stdout
    assert "evil\\x1b]0;title\\x07" in listed.stderr  # the skipped entry is named, harmlessly


def test_labels_for_hosts_the_inventory_lacks_are_warned_of(tmp_path: Path) -> None:
    """A typo in configuration management's labels file leaves a relay unlabelled: said, named, harmlessly."""
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()))
    (tmp_path / "labels.json").write_text('{"xx-one-wg-01": {"kernel": "6.6"}, "bad\\u001b[2Jhost": {"os": "x"}}')
    config.write_text(
        config.read_text().replace('source = "fleet.toml"\n', 'source = "fleet.toml"\nlabels = "labels.json"\n')
    )
    listed = probe("servers", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "warning: labels for 2 host(s) not in the inventory: bad\\x1b[2Jhost, xx-one-wg-01" in listed.stderr
    assert "\x1b" not in listed.stderr


def test_a_port_the_inventory_does_not_list_is_probed_with_a_warning(tmp_path: Path) -> None:
    port = closed_port()
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", port))
    unlisted = closed_port()
    done = probe("server", "xx-one-wg-001", "--port", str(unlisted), "--config", str(config))
    assert "warning: the inventory does not list port" in done.stderr and str(unlisted) in done.stderr
    assert "port_unreachable" in done.stdout  # probed all the same
    listed = probe("server", "xx-one-wg-001", "--port", str(port), "--config", str(config))
    assert "does not list" not in listed.stderr


def test_evidence_that_cannot_be_written_loses_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "evidence-is-a-file"
    blocker.write_text("not a directory")
    config = write_setup(
        tmp_path,
        relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()),
        probe=f'evidence_dir = "{blocker}"\n',
    )
    done = probe("server", "xx-one-wg-001", "--config", str(config), "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["reason"] == "port_unreachable" and doc["evidence"] is None
    assert doc["evidence_error"] and "evidence-is-a-file" in doc["evidence_error"]
    table = probe("server", "xx-one-wg-001", "--config", str(config))
    assert table.returncode == 1 and "evidence not saved" in table.stdout


def test_a_configured_namespace_that_does_not_exist_is_a_config_error_before_probing(tmp_path: Path) -> None:
    config = write_setup(
        tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()), agent='netns = "wgprobe-test-none"'
    )
    done = probe("server", "xx-one-wg-001", "--config", str(config), "--json")
    assert done.returncode == 2
    assert done.stdout == "" and "wgprobe-test-none" in done.stderr and "Traceback" not in done.stderr


def test_an_agent_that_cannot_send_at_all_could_not_judge(tmp_path: Path) -> None:
    # A UDP socket may not send to the broadcast address without SO_BROADCAST: connect() fails locally (EACCES),
    # the way it fails when the agent's own network is down. Nothing leaves the machine.
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "255.255.255.255", 51820))
    done = probe("server", "xx-one-wg-001", "--config", str(config), "--json")
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["reason"] == "socket_error" and "could not judge" in done.stderr


def test_usage_errors_exit_2_and_name_the_problem(tmp_path: Path) -> None:
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()))
    for args, words in (
        (["server", "xx-one-wg-001", "--config", str(config), "--port", "0"], "--port"),
        (["server", "xx-one-wg-001", "--config", str(config), "--family", "ipv5"], "--family"),
        (["server", "xx-one-wg-01", "--config", str(config)], "xx-one-wg-001"),
        (["server", "xx-one-wg-001", "--config", str(tmp_path / "missing.toml")], "missing.toml"),
        (["sweep", "--config", str(config), "--rounds", "0"], "--rounds"),
        ([], "COMMAND"),
    ):
        done = probe(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr


def test_a_key_held_by_another_process_is_refused_with_what_to_do(tmp_path: Path) -> None:
    config = write_setup(tmp_path, relay_toml("xx-one-wg-001", "127.0.0.1", closed_port()))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from probe.keylock import lock_keys; from pathlib import Path;"
            "locks = lock_keys([Path(sys.argv[1])]); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "keys" / "agent.key"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = probe("server", "xx-one-wg-001", "--config", str(config))
        assert done.returncode == 2
        assert "in use by another wgprobe process" in done.stderr and "identity of their own" in done.stderr
    finally:
        holder.kill()
        holder.communicate()
    again = probe("server", "xx-one-wg-001", "--config", str(config))
    assert again.returncode == 1  # the lock went with the process: the closed port is the relay's failure again


def test_an_inventory_that_cannot_be_fetched_could_not_judge(tmp_path: Path) -> None:
    config = write_setup(tmp_path, "")
    source = f"http://127.0.0.1:{closed_tcp_port()}/relays.json"  # connection refused: the inventory's outage
    config.write_text(config.read_text().replace('source = "fleet.toml"', f'source = "{source}"'))
    for args in (["server", "xx-one-wg-001"], ["sweep"], ["servers"]):
        done = probe(*args, "--config", str(config))
        assert done.returncode == 3, (args, done.stderr)
        assert done.stderr.startswith("could not judge:") and "127.0.0.1" in done.stderr


def closed_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_table_shows_stages_after_a_failed_forward_as_not_judged() -> None:
    """A relay whose NAT is broken: the table says forward_timeout, and egress and mtu "not judged", never their own
    timeouts beside it (the JSON's `judged: false` has its own tests)."""
    from datetime import UTC, datetime

    from probe.cli_probe import render_server
    from probe.results import PathResult, Reason, ServerResult, StageName, StageResult

    def stage(name: StageName, *, ok: bool = True, reason: Reason | None = None, judged: bool = True) -> StageResult:
        return StageResult(name=name, ok=ok, reason=reason, seconds=0.002, loss=0.0 if ok else 1.0, judged=judged)

    stages = (
        stage(StageName.handshake),
        stage(StageName.tunnel),
        stage(StageName.forward, ok=False, reason=Reason.forward_timeout),
        stage(StageName.egress, ok=False, judged=False),
        stage(StageName.mtu, ok=False, judged=False),
    )
    path = PathResult(
        port=51820, family="ipv4", ok=False, reason=Reason.forward_timeout, stages=stages, entry="192.0.2.1"
    )
    result = ServerResult(
        server="se-got-wg-002",
        agent="test-agent",
        ok=False,
        reason=Reason.forward_timeout,
        started_at=datetime(2026, 12, 3, tzinfo=UTC),
        duration_seconds=1.0,
        paths=(path,),
    )
    text = render_server(result)
    [row] = [line for line in text.splitlines() if ":51820" in line]
    cells = re.split(r"\s{2,}", row.strip())  # columns are padded apart by at least two spaces
    assert cells[1:] == ["ok 2.0ms", "ok 2.0ms", "forward_timeout", "not judged", "not judged"], row
    assert "egress_timeout" not in text and "mtu_blackhole" not in text
    assert "se-got-wg-002: FAILED forward_timeout" in text


def result_of(server: str, *paths: tuple[Literal["ipv4", "ipv6"], Reason | None]) -> ServerResult:
    """A relay's result with one handshake-only path per (family, reason); reason None: the path passed."""
    made = []
    for family, reason in paths:
        stage = StageResult(name=StageName.handshake, ok=reason is None, reason=reason, seconds=0.001, loss=0.0)
        made.append(PathResult(port=51820, family=family, ok=reason is None, reason=reason, stages=(stage,), entry="x"))
    ok = all(path.ok for path in made)
    reason = next((path.reason for path in made if not path.ok), None)
    return ServerResult(
        server=server,
        agent="a",
        ok=ok,
        reason=reason,
        started_at=datetime.now(UTC),
        duration_seconds=0.1,
        paths=tuple(made),
    )


def test_failures_that_are_none_of_the_relays_could_not_judge_even_beside_passing_paths() -> None:
    # The agent lost its IPv6 route: IPv4 passed, IPv6 could not send. Nothing the relay did failed, so the run
    # could not judge it (3, as `probe verify` counts such a round); it exited 1, "a relay failed".
    half = result_of("xx-one-wg-001", ("ipv4", None), ("ipv6", Reason.socket_error))
    assert exit_code(Tally.of([half])) == 3
    assert exit_code(Tally.of([half, result_of("xx-two-wg-002", ("ipv4", None))])) == 3
    # A relay's own failure beside it is still the relay's (and the control check then decides).
    assert exit_code(Tally.of([half, result_of("xx-two-wg-002", ("ipv4", Reason.port_unreachable))])) == 1
    assert exit_code(Tally.of([result_of("xx-two-wg-002", ("ipv4", None))])) == 0
