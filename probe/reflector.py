"""`probe reflector`: a small UDP service outside the fleet that tells a prober which source address and port it saw.

The egress stage sends a request through a relay's tunnel and NAT; the answer says the address the outside world
saw, which must be the relay's expected egress address. Wire format (all integers big-endian), version 1:

    request  (48 bytes): "WGPR" | version=1 (u8) | type=1 (u8) | 0 (u16) | nonce (16) | 24 zero bytes
    response (48 bytes): "WGPR" | version=1 (u8) | type=2 (u8) | family 4|6 (u8) | 0 (u8) | nonce (16)
                         | observed port (u16) | 0 (u16) | observed address (16: IPv4 in the first 4, rest zero)
                         | 4 zero bytes

The request is padded to the size of the response so the reflector never amplifies: a spoofed request earns its
victim no more bytes than the spoofer sent. Anything that is not exactly a well-formed request (wrong size, magic,
version, type or non-zero padding) is dropped without an answer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import signal
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from types import FrameType

from probe.errors import ConfigError, WgProbeError

MAGIC = b"WGPR"
VERSION = 1
TYPE_REQUEST = 1
TYPE_RESPONSE = 2
MESSAGE_SIZE = 48
NONCE_SIZE = 16
DEFAULT_PORT = 7777
_HEADER = struct.Struct("!4sBBH16s")  # magic, version, type, reserved, nonce (24 bytes)
_RESPONSE = struct.Struct("!4sBBBB16sHH16s4x")


class ReflectorError(WgProbeError):
    """A reflector response that is malformed or answers another request."""


@dataclass(frozen=True, slots=True)
class Observed:
    address: IPv4Address | IPv6Address
    port: int


def build_request(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"reflector nonce must be {NONCE_SIZE} bytes")
    return _HEADER.pack(MAGIC, VERSION, TYPE_REQUEST, 0, nonce) + bytes(MESSAGE_SIZE - _HEADER.size)


def parse_request(data: bytes) -> bytes | None:
    """The nonce of a well-formed request, or None for anything else (which gets no answer)."""
    if len(data) != MESSAGE_SIZE:
        return None
    magic, version, kind, reserved, nonce = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind != TYPE_REQUEST or reserved != 0:
        return None
    if any(data[_HEADER.size :]):
        return None
    return bytes(nonce)


def build_response(nonce: bytes, address: IPv4Address | IPv6Address, port: int) -> bytes:
    packed = address.packed.ljust(16, b"\0")
    return _RESPONSE.pack(MAGIC, VERSION, TYPE_RESPONSE, address.version, 0, nonce, port, 0, packed)


def parse_response(data: bytes, nonce: bytes) -> Observed:
    if len(data) != MESSAGE_SIZE:
        raise ReflectorError(f"reflector response of {len(data)} bytes, expected {MESSAGE_SIZE}")
    magic, version, kind, family, _res, got_nonce, port, _res2, packed = _RESPONSE.unpack(data)
    if magic != MAGIC or version != VERSION or kind != TYPE_RESPONSE:
        raise ReflectorError("not a reflector response (magic, version or type)")
    if got_nonce != nonce:
        raise ReflectorError("reflector response answers another request (nonce mismatch)")
    if family == 4 and not any(packed[4:]):
        return Observed(IPv4Address(packed[:4]), port)
    if family == 6:
        return Observed(IPv6Address(packed), port)
    raise ReflectorError(f"reflector response with bad address family {family}")


def parse_listen(text: str) -> tuple[IPv4Address | IPv6Address, int]:
    """`ADDR:PORT` or `[V6ADDR]:PORT` (also used for the `reflector` config key)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdecimal()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"want ADDR:PORT or [V6ADDR]:PORT, got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(host), int(port_text)
    except ValueError:
        raise ConfigError(f"not an IP address in {text!r}") from None


def _open(address: IPv4Address | IPv6Address, port: int) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((str(address), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"reflector cannot listen on {address}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def answer(sock: socket.socket) -> None:
    """Serve every datagram waiting on `sock`."""
    while True:
        try:
            data, peer = sock.recvfrom(MESSAGE_SIZE + 1)  # one byte more than allowed: oversize is detectable
        except BlockingIOError:
            return
        nonce = parse_request(data)
        if nonce is None:
            continue
        source = ipaddress.ip_address(peer[0])
        with contextlib.suppress(OSError):  # an unreachable client is its own problem, not the reflector's
            sock.sendto(build_response(nonce, source, peer[1]), peer)


def serve(listen: Iterable[tuple[IPv4Address | IPv6Address, int]]) -> None:
    """Answer requests on every listen address until SIGTERM/SIGINT."""
    selector = selectors.DefaultSelector()
    sockets = [_open(address, port) for address, port in listen]
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            for key, _ in selector.select(timeout=0.5):
                answer(key.fileobj)  # type: ignore[arg-type]
    finally:
        for sock in sockets:
            sock.close()
        selector.close()
