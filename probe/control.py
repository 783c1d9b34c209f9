"""The control check: can the agent itself reach the outside, through no relay?

A relay's result only says something about the relay when the agent's own network works. So each round the agent
asks the reflector directly (a reflector request from its own address, not through a tunnel) and echoes the forward
target directly, from the same network namespace its probes use. If a configured target does not answer, every
result taken meanwhile carries `control_ok = false`, and the aggregator leaves it out of the quorum: one agent's
outage is never blamed on the relays. One flag for both families: an agent that cannot reach the outside over IPv6
would otherwise fail every relay's IPv6 paths.

Checking the forward target needs an ICMP socket: an unprivileged ping socket where net.ipv4.ping_group_range
allows it, else a raw socket (root or CAP_NET_RAW). Where neither may be made, that target is reported as not
checked and the reflector alone decides.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from probe import reflector
from probe.messages import ControlCheck
from probe.packets import Echo, PacketError, parse_icmp, parse_ip
from probe.packets.icmp import echo_request_message
from probe.sockets import NamespaceUnavailable, icmp_socket, udp_socket
from probe.stages.base import Settings

ATTEMPTS = 3
ATTEMPT_TIMEOUT = 0.5  # seconds per attempt; a control target is one hop of the agent's own network away
_ECHO_HEADER = 8


class Target(NamedTuple):
    what: str  # "reflector" or "forward target", for the detail line
    address: IPv4Address | IPv6Address
    port: int | None = None  # the reflector's; None for the ICMP echo of the forward target

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.what} {self.address}"
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.what} {host}:{self.port}"


def targets(settings: Settings) -> list[Target]:
    found = []
    for endpoint in (settings.reflector, settings.reflector_v6):
        if endpoint is not None and Target("reflector", *endpoint) not in found:
            found.append(Target("reflector", *endpoint))
    for address in (settings.forward_target, settings.forward_target_v6):
        if address is not None:
            found.append(Target("forward target", address))
    return found


async def control_check(
    settings: Settings,
    *,
    attempts: int = ATTEMPTS,
    timeout: float = ATTEMPT_TIMEOUT,
    now: Callable[[], float] = time.time,
) -> ControlCheck:
    """Ask every control target; ok when each that could be checked answered."""
    outcomes = await asyncio.gather(
        *(_check(target, settings.netns, attempts, timeout) for target in targets(settings))
    )
    failed = [f"{target}: {detail}" for target, (answered, detail) in outcomes if answered is False]
    unchecked = [f"{target}: {detail}" for target, (answered, detail) in outcomes if answered is None]
    detail = "; ".join(failed + [f"not checked: {line}" for line in unchecked]) or None
    return ControlCheck(ok=not failed, checked_at=datetime.fromtimestamp(now(), UTC), detail=detail)


async def _check(
    target: Target, netns: str | None, attempts: int, timeout: float
) -> tuple[Target, tuple[bool | None, str]]:
    try:
        if target.port is not None:
            return target, await _reflector(target, netns, attempts, timeout)
        return target, await _echo(target, netns, attempts, timeout)
    except (OSError, NamespaceUnavailable) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return target, (False, f"cannot send: {reason}")


async def _reflector(target: Target, netns: str | None, attempts: int, timeout: float) -> tuple[bool | None, str]:
    family = socket.AF_INET6 if target.address.version == 6 else socket.AF_INET
    sock = udp_socket(family, netns)
    loop = asyncio.get_running_loop()
    try:
        sock.connect((str(target.address), target.port or 0))
        for _ in range(attempts):
            nonce = os.urandom(reflector.NONCE_SIZE)
            sock.send(reflector.build_request(nonce))
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        data = await loop.sock_recv(sock, 2048)
                except TimeoutError:
                    break
                try:
                    seen = reflector.parse_response(data, nonce)
                except reflector.ReflectorError:
                    continue  # an answer to an earlier attempt, or not a reflector answer at all
                return True, f"saw us as {seen.address}"
        return False, f"no answer to {attempts} request(s) in {timeout:g} s each"
    except ConnectionRefusedError:
        return False, "port unreachable"
    finally:
        sock.close()


async def _echo(target: Target, netns: str | None, attempts: int, timeout: float) -> tuple[bool | None, str]:
    family = socket.AF_INET6 if target.address.version == 6 else socket.AF_INET
    try:
        sock, raw = icmp_socket(family, netns)
    except PermissionError:
        return None, "no ICMP socket allowed (ping_group_range, CAP_NET_RAW)"
    loop = asyncio.get_running_loop()
    identifier = int.from_bytes(os.urandom(2), "big")
    payload = os.urandom(16)
    try:
        sock.connect((str(target.address), 0))
        for sequence in range(1, attempts + 1):
            sock.send(echo_request_message(target.address.version, identifier, sequence, payload))
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        data = await loop.sock_recv(sock, 2048)
                except TimeoutError:
                    break
                if _is_reply(data, family, raw, payload):
                    return True, "answers echo"
        return False, f"no echo reply to {attempts} request(s) in {timeout:g} s each"
    finally:
        sock.close()


def _is_reply(data: bytes, family: socket.AddressFamily, raw: bool, payload: bytes) -> bool:
    """An echo reply carrying our payload. A raw IPv4 socket hands over the IP header too; a ping socket and IPv6
    do not. The identifier is not compared: a ping socket rewrites it to its own."""
    if raw and family == socket.AF_INET:
        try:
            message = parse_icmp(parse_ip(data))
        except PacketError:
            return False
        return isinstance(message, Echo) and message.is_reply and message.payload == payload
    if len(data) < _ECHO_HEADER:
        return False
    return data[0] in (0, 129) and data[_ECHO_HEADER:] == payload
