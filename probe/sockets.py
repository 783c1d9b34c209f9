"""Probe sockets, optionally opened inside a named network namespace.

A socket belongs to the network namespace it was created in, for its whole life. To probe from a namespace (the
lab's agent namespace, or an operator's VRF-like namespace on a prober host) only the creation has to happen
there: the calling thread enters the namespace with setns(2), creates the socket and returns at once. Nothing
else in the process moves. Python 3.11 has no os.setns, hence the libc call.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from pathlib import Path

from probe.errors import ConfigError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_lock = threading.Lock()


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def udp_socket(family: socket.AddressFamily, netns: str | None = None) -> socket.socket:
    """An unconnected, non-blocking UDP socket of `family`, created in namespace `netns` if given."""
    if netns is None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock
    path = NETNS_DIR / netns
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"network namespace {netns!r} not found ({path}): {exc.strerror}") from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        with _lock:
            try:
                _setns(target)
            except OSError as exc:
                raise ConfigError(f"cannot enter network namespace {netns!r}: {exc.strerror} (root needed)") from exc
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            finally:
                _setns(own)  # always come back, or this thread would keep probing from the wrong place
    finally:
        os.close(target)
        os.close(own)
    sock.setblocking(False)
    return sock
