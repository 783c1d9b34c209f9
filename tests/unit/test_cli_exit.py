"""The quick commands end without the interpreter's shutdown (probe.cli.QUICK_EXIT): nothing printed may be lost
on the way, and a reader that went away is still an exit code, not a message. Block-buffered stdout here
(PYTHONUNBUFFERED removed), as when a pipeline reads the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.test_cli import closed_port, relay_toml, write_setup

RELAYS = 200  # more JSON than one pipe buffer holds


def buffered_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def fleet(tmp_path: Path, relays: int = RELAYS) -> Path:
    port = closed_port()
    return write_setup(
        tmp_path,
        "".join(relay_toml(f"xx-one-wg-{n:03d}", "127.0.0.1", port) for n in range(1, relays + 1)),
        probe=f'evidence_dir = "{tmp_path / "evidence"}"\n',
    )


def test_every_line_printed_reaches_a_buffered_reader(tmp_path: Path) -> None:
    config = fleet(tmp_path)
    env = buffered_env()
    listed = subprocess.run(
        [sys.executable, "-m", "probe", "servers", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()][-1] == f"xx-one-wg-{RELAYS:03d}"
    probed = subprocess.run(
        [sys.executable, "-m", "probe", "server", "xx-one-wg-001", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert probed.returncode == 1, probed.stderr  # the closed port: a relay failed, the whole result printed
    assert json.loads(probed.stdout)["reason"] == "port_unreachable"


def test_a_reader_gone_before_the_output_is_flushed_is_exit_1_without_a_message(tmp_path: Path) -> None:
    config = fleet(tmp_path, relays=3)  # less than stdout's buffer: nothing is written before the final flush
    read_end, write_end = os.pipe()
    os.close(read_end)  # `probe servers --json | head -0`: nothing will ever be read
    try:
        done = subprocess.run(
            [sys.executable, "-m", "probe", "servers", "--config", str(config), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env=buffered_env(),
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""
