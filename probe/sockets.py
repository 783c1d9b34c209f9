"""Probe sockets, optionally opened inside a named network namespace.

A socket belongs to the network namespace it was created in, for its whole life. To probe from a namespace (the
lab's agent namespace, or an operator's VRF-like namespace on a prober host) only the creation has to happen
there: the calling thread enters the namespace with setns(2), creates the socket and returns at once. Nothing
else in the process moves. Python 3.11 has no os.setns, hence the libc call.
"""

from __future__ import annotations

import atexit
import functools
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from probe.errors import ConfigError, WgProbeError

if TYPE_CHECKING:
    import ctypes

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_lock = threading.Lock()
# Loaded and opened once per process, on first use: a probe opens a socket per flow, and loading libc or opening
# the namespace files per socket cost more CPU than the rest of the socket's set-up.
_libc: dict[str, ctypes.CDLL] = {}
_ns_fds: dict[str, int] = {}
_pools: dict[tuple[str, socket.AddressFamily], list[socket.socket]] = {}
POOL_BATCH = 32


@atexit.register
def _close_pools() -> None:
    """Close the sockets made ahead of use: unused, they would otherwise be reclaimed at exit with a warning each."""
    with _lock:
        for pool in _pools.values():
            for sock in pool:
                sock.close()
        _pools.clear()


class NamespaceUnavailable(WgProbeError):
    """The namespace probes are sent from cannot be entered (deleted during a run, or no privilege)."""


def require_namespace(netns: str) -> None:
    """Before any probe: a configured namespace that does not exist or cannot be entered is a config error."""
    try:
        with _lock:
            _forget_if_replaced(netns)
            for family in (socket.AF_INET, socket.AF_INET6):
                pool = _pools.setdefault((netns, family), [])
                if not pool:
                    make = functools.partial(socket.socket, family, socket.SOCK_DGRAM)
                    pool.extend(_make_in(netns, make, POOL_BATCH))
    except NamespaceUnavailable as exc:
        raise ConfigError(f"agent.netns: {exc}") from None


def _setns(fd: int) -> None:
    import ctypes  # here, not at the top: only a namespace needs libc (ctypes is ~2 ms of every start-up)

    libc = _libc.get("libc")
    if libc is None:
        libc = _libc["libc"] = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def udp_socket(family: socket.AddressFamily, netns: str | None = None) -> socket.socket:
    """An unconnected, non-blocking UDP socket of `family`, created in namespace `netns` if given.

    Entering a namespace costs two setns(2) calls, more than the socket itself; sockets for a namespace are
    therefore made `POOL_BATCH` at a time on one visit and handed out from a pool (unbound, so they hold nothing
    but a file descriptor until used).
    """
    if netns is None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    else:
        with _lock:
            _forget_if_replaced(netns)
            pool = _pools.setdefault((netns, family), [])
            if not pool:
                pool.extend(_make_in(netns, lambda: socket.socket(family, socket.SOCK_DGRAM), POOL_BATCH))
            sock = pool.pop()
    sock.setblocking(False)
    return sock


def icmp_socket(family: socket.AddressFamily, netns: str | None = None) -> tuple[socket.socket, bool]:
    """A non-blocking socket for ICMP echo, in `netns` if given, and whether it is raw.

    An unprivileged "ping socket" (SOCK_DGRAM, allowed by net.ipv4.ping_group_range) when the system allows it,
    else a raw socket (CAP_NET_RAW). OSError when neither may be made. Not pooled: the control check uses one a round.
    """
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6

    def make() -> tuple[socket.socket, bool]:
        try:
            return socket.socket(family, socket.SOCK_DGRAM, proto), False
        except PermissionError:
            return socket.socket(family, socket.SOCK_RAW, proto), True

    if netns is None:
        sock, raw = make()
    else:
        with _lock:
            _forget_if_replaced(netns)
            found: list[tuple[socket.socket, bool]] = []
            _make_in(netns, lambda: _keep(found, make()), 1)
            sock, raw = found[0]
    sock.setblocking(False)
    return sock, raw


def _keep(found: list[tuple[socket.socket, bool]], made: tuple[socket.socket, bool]) -> socket.socket:
    found.append(made)
    return made[0]


def _make_in(netns: str, make: Callable[[], socket.socket], count: int) -> list[socket.socket]:
    target = _ns_fd(netns, NETNS_DIR / netns)
    # Per thread: /proc/thread-self, since setns moves only the calling thread.
    own = _ns_fd(f"thread:{threading.get_ident()}", Path("/proc/thread-self/ns/net"))
    try:
        _setns(target)
    except OSError as exc:
        raise NamespaceUnavailable(f"cannot enter network namespace {netns!r}: {exc.strerror} (root needed)") from None
    try:
        return [make() for _ in range(count)]
    finally:
        _setns(own)  # always come back, or this thread would keep probing from the wrong place


def _forget_if_replaced(netns: str) -> None:
    """Drop the cached handle and pooled sockets of `netns` if the name now points at another namespace.

    A namespace deleted and made again under the same name (a rebuilt lab, a restarted VRF) is a new namespace:
    a long-running prober must not keep entering, or probing from, the old one. One stat(2) per socket.
    """
    fd = _ns_fds.get(netns)
    if fd is None:
        return
    try:
        now = os.stat(NETNS_DIR / netns)
    except OSError:
        now = None
    held = os.fstat(fd)
    if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
        return
    os.close(_ns_fds.pop(netns))
    for family in (socket.AF_INET, socket.AF_INET6):
        for stale in _pools.pop((netns, family), []):
            stale.close()


def _ns_fd(key: str, path: Path) -> int:
    fd = _ns_fds.get(key)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NamespaceUnavailable(f"network namespace {key!r} not found ({path}): {exc.strerror}") from None
        _ns_fds[key] = fd
    return fd
