"""Processes the lab started, handled by recorded PID only (never by name: other labs or users may run the same
programs). A PID is trusted only while /proc/PID/cmdline still names what we started, so a recycled PID is never
signalled."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from probe.errors import LabError


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(pid: int, expect: str) -> bool:
    """True if `pid` is alive, not a zombie, and its command line contains `expect`."""
    if pid <= 0 or not any(expect in part for part in cmdline(pid)):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def has_exited(pid: int) -> bool:
    """True once `pid` (a process this one just started) is gone or a zombie. Unlike `is_running` this needs no
    command line, which is empty between fork and exec: a just-spawned process is not mistaken for a dead one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _reap(pid: int) -> None:
    # Our own children (started by this process) would linger as zombies; others are reaped by init.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(pid: int, expect: str, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`, a process we started; a no-op if it is already gone."""
    if not is_running(pid, expect):
        _reap(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_running(pid, expect):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not is_running(pid, expect):
            return
        time.sleep(0.02)
    raise LabError(f"process {pid} ({expect}) did not exit after SIGKILL")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def log_tail(log: Path, lines: int = 3) -> str:
    """The last lines of a log, only its ERROR lines if it has any: wireguard-go's banner would fill a plain tail."""
    try:
        text = log.read_text(errors="replace").strip()
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
    every = text.splitlines()
    errors = [line for line in every if "ERROR" in line]
    return " | ".join((errors or every)[-lines:]) or "(empty)"
