"""Regressions found by review: each assertion failed against an earlier probe/ and must keep passing."""

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.errors import ConfigError, LabError
from probe.lab import nfqueue
from probe.lab.faults import Fault
from probe.lab.firewall import render_ruleset
from probe.lab.processes import log_tail
from probe.lab.state import STATE_FILE, load_state
from probe.lab.topology import plan_lab
from probe.reflector import parse_listen


def test_loss_100_renders_a_ruleset_nft_accepts(tmp_path: Path) -> None:
    # Fault.parse accepts loss:100, but `numgen random mod 100 < 100` is rejected: "Value 100 exceeds valid range 0-99"
    script = tmp_path / "r.nft"
    script.write_text(render_ruleset(plan_lab(1).relays[0], [Fault.parse("loss:100")]))
    checked = subprocess.run(["nft", "-c", "-f", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_non_ascii_digit_fault_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError):  # str.isdigit() accepts '²', int() then raises ValueError
        Fault.parse("loss:²")


def test_non_ascii_digit_listen_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError):  # same isdigit/int mismatch -> ValueError escapes the CLI
        parse_listen("1.2.3.4:²")


def test_non_utf8_state_file_is_a_lab_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"\xff\xfe{")
    with pytest.raises(LabError):  # UnicodeDecodeError is not an OSError; it escapes load_state
        load_state(tmp_path)


def test_a_packet_message_claiming_more_than_was_received_does_not_raise() -> None:
    header = struct.pack("=IHHII", 100, nfqueue.NFNL_SUBSYS_QUEUE << 8, 0, 0, 0) + bytes(4)
    assert nfqueue.packet_ids(header) == []  # raises struct.error: attributes are read up to nlmsg_len, not len(data)


@given(st.integers(16, 300), st.binary(max_size=200))
def test_random_packet_messages_never_crash_packet_ids(length: int, body: bytes) -> None:
    nfqueue.packet_ids(struct.pack("=IHHII", length, nfqueue.NFNL_SUBSYS_QUEUE << 8, 0, 0, 0) + body)


def test_a_failed_start_is_told_by_its_log_errors_not_its_banner(tmp_path: Path) -> None:
    log = tmp_path / "wg.log"
    banner = "┌──────┐\n│ W A R N I N G │\n│ please visit │\n└──────┘\n"
    log.write_text(banner + "ERROR: (wgtc1) 2026/12/03 09:35:39 UAPI listen error: unix socket in use\n")
    assert log_tail(log) == "ERROR: (wgtc1) 2026/12/03 09:35:39 UAPI listen error: unix socket in use"
    log.write_text(banner)
    assert log_tail(log, lines=2) == "│ please visit │ | └──────┘"
    log.write_text("")
    assert log_tail(log) == "(empty)"
    assert log_tail(tmp_path / "missing.log") == "(unreadable: No such file or directory)"
