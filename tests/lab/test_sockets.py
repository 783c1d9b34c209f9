"""Probe sockets opened in a named network namespace follow the name: a namespace deleted and made again under the
same name (a rebuilt lab, a restarted VRF) gets new sockets, never pooled ones from the old namespace."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from probe.sockets import udp_socket

pytestmark = pytest.mark.lab
NAME = "wgt-sockets"
SO_NETNS_COOKIE = 71  # Linux >= 5.14: a socket's namespace, as a number unique for the namespace's life


def cookie(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)


@pytest.fixture
def namespace() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NAME], check=True)
    yield NAME
    subprocess.run(["ip", "netns", "del", NAME], check=False)


def test_sockets_come_from_the_named_namespace_even_after_it_is_recreated(namespace: str) -> None:
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first = udp_socket(socket.AF_INET, namespace)
    second = udp_socket(socket.AF_INET, namespace)  # from the pool filled on the first visit
    subprocess.run(["ip", "netns", "del", namespace], check=True)
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    third = udp_socket(socket.AF_INET, namespace)
    try:
        assert cookie(first) == cookie(second) != cookie(host)
        assert cookie(third) not in (cookie(first), cookie(host)), "a pooled socket of the old namespace was reused"
    finally:
        for sock in (host, first, second, third):
            sock.close()
