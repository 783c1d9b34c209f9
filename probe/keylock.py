"""One key, one process: a lock on each identity's key file while a process probes with it.

A relay keeps one session and one endpoint per client key and answers the newest initiation (DESIGN.md), so two
processes probing with one key (a running agent and an engineer's `probe server` during an incident) would take
each other's sessions and both report failures that are not the relay's. Within a process the runner serialises a
key's paths; across processes this lock refuses the second one with a message that says what to do.

The lock is flock(2) on the key file itself, opened read-only: every process that uses the key reads that file, so
no lock directory has to agree between a system service and a shell, and the kernel drops the lock when the process
ends, however it ends. A key copied to a second file is not caught: the README says to give each its own identity.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

from probe.errors import ConfigError

IN_MEMORY = Path("<memory>")  # identities built in code (tests, the lab) have no file to lock


class KeyInUse(ConfigError):
    """Another process holds one of this config's keys."""


class KeyLocks:
    """Held locks; `release()` (or the end of the process) gives them back."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor drops its flock
        self._fds = []

    def __enter__(self) -> KeyLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_keys(key_files: Sequence[Path]) -> KeyLocks:
    """Lock every key file, or none: KeyInUse names the first that another process holds."""
    fds: list[int] = []
    try:
        for index, path in enumerate(key_files):
            if path == IN_MEMORY:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as exc:
                raise ConfigError(f"identities[{index}].private_key_file {path}: {exc.strerror or exc}") from None
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise KeyInUse(
                    f"identities[{index}] key {path} is in use by another wgprobe process (a running agent?). "
                    "A relay keeps one session per key, so two processes probing with one key break each other's "
                    "probes: give the agent and each engineer an identity of their own (README: Keys)."
                ) from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return KeyLocks(fds)
