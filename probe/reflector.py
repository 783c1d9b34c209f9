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

Nor is it a free reflector: answers are rate-limited per source address (a token bucket each, in a bounded table),
so a spoofer can aim at most `rate` answers a second, after a `burst`, at any one victim. The decisions are a pure
core (`RateLimiter`, `Reflector`: a datagram and the time in, an answer or nothing out); `serve` is the socket shell.
It listens only where it is told, refuses a port another socket holds, logs one line when it starts and its
counters on SIGUSR1 and on exit.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import selectors
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address
from types import FrameType
from typing import NamedTuple, TextIO

from probe.addresses import Endpoint
from probe.errors import ConfigError, WgProbeError

MAGIC = b"WGPR"
VERSION = 1
TYPE_REQUEST = 1
TYPE_RESPONSE = 2
MESSAGE_SIZE = 48
NONCE_SIZE = 16
DEFAULT_PORT = 7777
# Sources remembered at once (~150 bytes each). Filling it with sources still inside their burst takes tens of
# thousands of spoofed packets a second; new sources are then refused, never given a fresh burst (see RateLimiter).
MAX_SOURCES = 65536
_READS_PER_TURN = 256  # per socket and loop turn, so a flood on one socket cannot starve the others or the signals
_HEADER = struct.Struct("!4sBBH16s")  # magic, version, type, reserved, nonce (24 bytes)
_RESPONSE = struct.Struct("!4sBBBB16sHH16s4x")


class ReflectorError(WgProbeError):
    """A reflector response that is malformed or answers another request."""


class Observed(NamedTuple):
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


def parse_listen(text: str) -> Endpoint:
    """An `--listen` value: ADDR:PORT or [V6ADDR]:PORT, port 0 meaning any free port (the start line says which)."""
    try:
        return Endpoint.parse(text, allow_port_zero=True)
    except ValueError as e:
        raise ConfigError(f"--listen {text!r}: {e}") from None


class RateLimiter:
    """A token bucket per source address: `burst` answers at once, then `rate` a second.

    The table of sources is bounded by `max_sources`. A source whose bucket has refilled carries no state and is
    forgotten, oldest first, a few per call. When the table is full of sources that are still within their burst
    window, a new source is refused rather than let in by forgetting another: forgetting would hand a spoofed victim
    a fresh burst, which is exactly the attack the limit is there for.
    """

    def __init__(self, rate: float, burst: int, *, max_sources: int = MAX_SOURCES) -> None:
        if not 0 < rate < float("inf"):
            raise ValueError(f"rate must be a number above 0 (answers a second), got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 answer, got {burst}")
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, when), oldest first

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, bucket: tuple[float, float], now: float) -> float:
        tokens, when = bucket
        return min(float(self.burst), tokens + max(0.0, now - when) * self.rate)

    def _forget_idle(self, now: float, at_most: int) -> None:
        for _ in range(at_most):
            oldest = next(iter(self._buckets.items()), None)
            if oldest is None or self._tokens(oldest[1], now) < self.burst:
                return
            del self._buckets[oldest[0]]

    def allow(self, source: str, now: float) -> bool:
        """Whether `source` may have an answer at `now` (seconds on a monotonic clock); takes a token if so."""
        self._forget_idle(now, 2)
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                return False
            tokens = float(self.burst)
        else:
            tokens = self._tokens(bucket, now)
            self._buckets.move_to_end(source)
        allowed = tokens >= 1
        # A clock that went back keeps the later time, so it cannot be used to mint tokens twice.
        when = now if bucket is None else max(now, bucket[1])
        self._buckets[source] = (tokens - 1 if allowed else tokens, when)
        return allowed


class Reflector:
    """What the reflector does with one datagram, without sockets or clocks of its own, and what it has done."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.answered = self.rate_limited = self.malformed = 0

    def handle(self, data: bytes, address: IPv4Address | IPv6Address, port: int, now: float) -> bytes | None:
        """The answer to a datagram from `address`:`port`, or None for no answer."""
        nonce = parse_request(data)
        if nonce is None:
            self.malformed += 1
            return None
        if not self.limiter.allow(str(address), now):
            self.rate_limited += 1
            return None
        self.answered += 1
        return build_response(nonce, address, port)

    def counters(self) -> str:
        return (
            f"reflector: answered={self.answered} rate_limited={self.rate_limited} malformed={self.malformed} "
            f"sources={len(self.limiter)}"
        )


def _open(endpoint: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if endpoint.host.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    # No SO_REUSEADDR: a port another socket holds is refused, never shared (two reflectors on one port would each
    # get some of the requests, and a stale one would answer for the other).
    try:
        sock.bind((str(endpoint.host), endpoint.port))
    except OSError as exc:
        sock.close()
        hint = " (another process holds it)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"reflector cannot listen on {endpoint}: {exc.strerror}{hint}") from None
    sock.setblocking(False)
    return sock


def answer(sock: socket.socket, reflector: Reflector, now: Callable[[], float]) -> None:
    """Serve the datagrams waiting on `sock`, at most _READS_PER_TURN of them."""
    for _ in range(_READS_PER_TURN):
        try:
            data, peer = sock.recvfrom(MESSAGE_SIZE + 1)  # one byte more than allowed: oversize is detectable
        except BlockingIOError:
            return
        except OSError:  # an ICMP error queued on the socket: nothing to answer
            continue
        source = ipaddress.ip_address(peer[0])
        response = reflector.handle(data, source, peer[1], now())
        if response is not None:
            with contextlib.suppress(OSError):  # an unreachable client is its own problem, not the reflector's
                sock.sendto(response, peer)


def serve(
    listen: Iterable[Endpoint],
    *,
    rate: float,
    burst: int,
    max_sources: int = MAX_SOURCES,
    log: TextIO = sys.stderr,
) -> None:
    """Answer requests on every listen address until SIGTERM/SIGINT; counters to `log` on SIGUSR1 and on exit."""
    try:
        reflector = Reflector(RateLimiter(rate, burst, max_sources=max_sources))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sockets: list[socket.socket] = []
    try:
        for endpoint in listen:
            sockets.append(_open(endpoint))
        bound = [Endpoint(ipaddress.ip_address(sock.getsockname()[0]), sock.getsockname()[1]) for sock in sockets]
        print(
            f"reflector: listening on {', '.join(map(str, bound))}; answers per source address: {rate:g}/s, "
            f"burst {burst}",
            file=log,
            flush=True,
        )
        _loop(sockets, reflector, log)
    finally:
        for sock in sockets:
            sock.close()
    print(reflector.counters(), file=log, flush=True)


def _loop(sockets: list[socket.socket], reflector: Reflector, log: TextIO) -> None:
    # Signal handlers only set flags; the wakeup socket makes select() return at once so the loop acts on them.
    flags = {"stop": False, "report": False}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        flags["report" if signum == signal.SIGUSR1 else "stop"] = True

    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    wake_read.setblocking(False)
    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    previous_wakeup = signal.set_wakeup_fd(wake_write.fileno())
    try:
        while not flags["stop"]:
            for key, _ in selector.select():
                if key.fileobj is wake_read:
                    with contextlib.suppress(BlockingIOError):
                        wake_read.recv(512)
                else:
                    answer(key.fileobj, reflector, time.monotonic)  # type: ignore[arg-type]
            if flags["report"]:
                flags["report"] = False
                print(reflector.counters(), file=log, flush=True)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        selector.close()
        wake_read.close()
        wake_write.close()
