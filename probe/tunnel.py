"""The asyncio shell around the sans-I/O WireGuard core: one connected UDP socket per flow to one relay endpoint.

The socket is *connected* so the kernel reports ICMP port-unreachable for it (as ConnectionRefusedError); an
unconnected socket would see a closed port only as a timeout. Which initiation to send when, and which answer to
keep, is decided by the sans-I/O `HandshakeAttempts` (probe/wireguard/attempts.py); this shell does the I/O and
spaces one key's initiations to one relay past wireguard-go's 20 ms flood limit. Every datagram a relay sends is
handled: anything that fails to parse, authenticate or match is counted in `rejected` and dropped, never raised
into the caller. Time is read through an injected clock (`clock`, monotonic; `wall`, Unix time for TAI64N).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

from probe.errors import WgProbeError
from probe.sockets import NamespaceUnavailable, udp_socket
from probe.wireguard import CookieState, Identity, ProtocolError, PublicKey, TransportSession
from probe.wireguard.attempts import HandshakeAttempts, Schedule
from probe.wireguard.constants import HANDSHAKE_INITIATION_RATE

# The first retransmission when the relay's round trip is not known yet (a first contact): later ones use a few
# of its round trips (probe.runner). 200 ms is more than most relays' round trip from a vantage point near them.
FIRST_GAP_UNKNOWN = 0.2
# A little above the 20 ms limit: timer granularity on a loaded machine must not make us land just inside it.
INITIATION_SPACING = HANDSHAKE_INITIATION_RATE + 0.005
MAX_DATAGRAM = 65535
# Evidence of one path is capped in memory too: a hostile relay can send authenticated packets as fast as the
# link allows (one made a 99 MB capture from a single path in 0.3 s).
RECORD_MAX_BYTES = 1024 * 1024
# Answers are timed by the kernel's receive timestamp (SO_TIMESTAMPNS), not by when the event loop got round to
# them: with several paths in flight the loop can be busy for milliseconds, which read as round trip. Measured
# (bench_agent) on loopback, where the true round trip is ~0.1 ms: handshakes of 2.4 ms median, 9.5 ms p90 timed by
# the loop with relays spread one by one, 18 ms median with nine relays started together. Linux's generic value of
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS); Python's socket module does not name it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")  # struct timespec on a 64-bit kernel ABI
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
# A wait longer than this is not believed (the realtime clock stepped between the kernel's stamp and our read):
# such an answer is timed as if it had just arrived, as before timestamps.
MAX_WAIT = 1.0
T = TypeVar("T")
Clock = Callable[[], float]


class TunnelError(WgProbeError):
    """The tunnel could not be established; the subclass says why. `attempts` holds what was sent and received
    (initiations, responses, cookie replies, rejected datagrams) when the handshake got that far."""

    def __init__(self, message: str, attempts: HandshakeAttempts | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts


class HandshakeTimeout(TunnelError):
    """No valid response to any initiation (wrong relay key, unregistered client key, dropped, or filtered)."""


class PortUnreachable(TunnelError):
    """The relay's host answered ICMP port unreachable: nothing listens on that port."""


class CookieFailed(TunnelError):
    """The relay answered with cookie replies but never accepted an initiation carrying the cookie."""


class SocketError(TunnelError):
    """The agent could not send at all: no route, network down, its namespace gone."""


class InitiationPacer:
    """Spaces initiations per (local key, relay key) past the relay's flood limit, across all tunnels using it."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._last: dict[tuple[bytes, bytes], float] = {}
        self._clock = clock

    def delay(self, identity: Identity, relay: PublicKey) -> float:
        """Seconds until this key may send its next initiation to this relay; 0 means now (and takes the turn)."""
        key = (identity.public_key.raw, relay.raw)
        now = self._clock()
        due = self._last.get(key, -1e9) + INITIATION_SPACING
        if now >= due:
            self._last[key] = now
            return 0.0
        return due - now

    async def wait_turn(self, identity: Identity, relay: PublicKey) -> None:
        while (delay := self.delay(identity, relay)) > 0:
            await asyncio.sleep(delay)


DEFAULT_PACER = InitiationPacer()


class Inbox(Generic[T]):
    """A buffer one coroutine waits on: a deque plus one future, no task or timeout context per wait."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self.items.append(item)
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float, ready: Callable[[], bool] | None = None) -> bool:
        """Until there is an item (or `ready()`), True; False once `timeout` seconds pass without one."""
        is_ready = ready or (lambda: bool(self.items))
        if is_ready():
            return True
        if timeout <= 0:
            return False
        waiter = self._waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None
        return is_ready()


class Flow:
    """A connected non-blocking UDP socket watched by the event loop, with a buffer of received datagrams.

    Leaner than an asyncio DatagramTransport + Queue: no transport object, no task or timeout context per receive.
    Creating and tearing those down per flow cost more CPU than the handshake's hashing (bench/bench_engine.py).
    An ICMP port unreachable for the flow surfaces as ECONNREFUSED on the next receive or send and is kept as
    `unreachable`; any other error on send (no route, network down) is kept in `error` for the caller to report.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox: Inbox[tuple[bytes, float]] = Inbox(loop)
        self.buffer = self.inbox.items  # (datagram, when the kernel took it in: Unix time, 0.0 if unknown)
        self.unreachable = False
        self.error: str | None = None
        # When set, datagrams go straight to this callback instead of the buffer (see Tunnel.listen).
        self.on_datagram: Callable[[bytes, float], None] | None = None
        stamp(sock)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(MAX_DATAGRAM, _STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                self.unreachable = True
                continue
            except OSError:
                break  # other ICMP errors (host/net unreachable): the flow just goes quiet, a timeout says so
            if not data:
                continue
            arrived = _arrival(ancillary)
            if self.on_datagram is not None:
                self.on_datagram(data, arrived)
            else:
                self.buffer.append((data, arrived))
        if self.buffer or self.unreachable:
            self.inbox.wake()

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except ConnectionRefusedError:
            self.unreachable = True
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: the datagram is lost, as it could be on the wire
        except OSError as exc:  # ENETUNREACH, EHOSTUNREACH, ENETDOWN, EPERM (a firewall): the agent's own network
            self.error = exc.strerror or str(exc)
            self.inbox.wake()

    async def wait(self, timeout: float) -> bool:
        """Until a datagram, an unreachable or a send error arrives (True) or `timeout` passes (False)."""
        return await self.inbox.wait(timeout, lambda: bool(self.buffer) or self.unreachable or bool(self.error))

    def close(self) -> None:
        self.inbox.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_keeper: list[socket.socket] = []


def stamp(sock: socket.socket) -> None:
    """Ask the kernel to stamp each datagram `sock` receives with its arrival time (best effort: without it,
    answers are timed when they are read).

    Linux stamps packets only while some socket of the machine asks for it, and turns that on and off through a
    deferred work item: the datagrams that arrive before it has run are stamped when read, as if unstamped. With a
    socket per path, every pause with no path open would turn stamping off, and the next path's first answers would
    go unstamped (and each switch patches kernel code). So the first call also keeps one socket asking, for the
    life of the process."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    if not _keeper:
        with contextlib.suppress(OSError):  # no socket to spare: stamping still works, switched as sockets come and go
            keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _keeper.append(keeper)
            atexit.register(keeper.close)  # closed, not left to the interpreter's teardown (a ResourceWarning)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time of a datagram (Unix time), from recvmsg's ancillary data; 0.0 when absent."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds * 1e-9)
    return 0.0


def waited(arrived: float) -> float:
    """Seconds a datagram the kernel took in at `arrived` (Unix time, 0.0 unknown) has waited to be handled: taken
    off the moment it is handled, so that its round trip ends when it came in, not when the event loop got to it."""
    if arrived <= 0.0:
        return 0.0
    wait = time.time() - arrived
    return wait if 0.0 < wait < MAX_WAIT else 0.0


class Record:
    """Inner packets sent and received, with wall-clock times, for evidence (pcap) of a failed probe.

    Bounded: past `max_bytes` packets are counted in `dropped`, not kept. A plain class: a dataclass is ~1 ms of
    start-up on CPython 3.11.
    """

    __slots__ = ("dropped", "max_bytes", "packets", "size", "wall")

    def __init__(self, *, max_bytes: int = RECORD_MAX_BYTES, wall: Clock = time.time) -> None:
        self.packets: list[tuple[float, str, bytes]] = []
        self.max_bytes = max_bytes
        self.size = 0
        self.dropped = 0
        self.wall = wall

    def add(self, direction: str, packet: bytes) -> None:
        size = self.size + len(packet)
        if size > self.max_bytes:
            self.dropped += 1
            return
        self.size = size
        self.packets.append((self.wall(), direction, packet))


@dataclass
class Tunnel:
    """An established WireGuard session over a connected UDP socket. Create with `Tunnel.open`."""

    flow: Flow
    session: TransportSession
    handshake_seconds: float
    initiations: int
    cookies: int  # cookie replies taken before the relay accepted an initiation (it was under load)
    record: Record | None = None
    rejected: int = 0
    attempts: HandshakeAttempts | None = None  # what the handshake sent and got, for the stage's report
    clock: Clock = time.monotonic

    @classmethod
    async def open(
        cls,
        identity: Identity,
        relay_key: PublicKey,
        address: IPv4Address | IPv6Address,
        port: int,
        *,
        timeout: float = 1.0,
        attempts: int = 7,
        first_gap: float | None = None,
        preshared_key: bytes | None = None,
        cookie_state: CookieState | None = None,
        pacer: InitiationPacer = DEFAULT_PACER,
        record: Record | None = None,
        netns: str | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> Tunnel:
        """Handshake with the relay: initiations retransmitted with backoff (`first_gap` after the first, growing
        to `timeout`), at most `attempts` of them, until one is answered (see HandshakeAttempts)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        try:
            sock = udp_socket(family, netns)
        except (OSError, NamespaceUnavailable) as exc:
            raise SocketError(f"cannot open a UDP socket: {_reason(exc)}") from None
        try:
            sock.connect((str(address), port))
        except OSError as exc:
            sock.close()
            raise SocketError(f"cannot open UDP socket to {address}:{port}: {_reason(exc)}") from None
        flow = Flow(loop, sock)
        schedule = Schedule(
            first_gap=min(timeout, FIRST_GAP_UNKNOWN if first_gap is None else first_gap),
            max_gap=timeout,
            max_initiations=attempts,
        )
        handshake = HandshakeAttempts(identity, relay_key, schedule, cookie_state, preshared_key)
        try:
            session = await _handshake(flow, handshake, pacer, clock, wall)
        except BaseException:
            flow.close()
            raise
        return cls(
            flow,
            session,
            handshake.handshake_seconds(),
            handshake.initiations,
            handshake.cookies,
            record,
            attempts=handshake,
            clock=clock,
        )

    def send(self, packet: bytes) -> None:
        """Encrypt and send one inner IP packet."""
        if self.record is not None:
            self.record.add("out", packet)
        self.flow.send(self.session.encrypt(packet))

    async def recv(self, timeout: float) -> bytes | None:
        """The next authenticated inner packet (padding left on: parse by the IP length), or None at timeout.

        Keepalives, unauthenticated, replayed and malformed datagrams are skipped and counted in `rejected`.
        """
        deadline = self.clock() + timeout
        buffer = self.flow.buffer
        while True:
            if not buffer:
                # An ICMP unreachable after the handshake (the relay's port closed mid-probe) carries nothing to
                # decrypt: consume it and keep waiting until the deadline, which then reports the silence.
                self.flow.unreachable = False
                if not await self.flow.wait(deadline - self.clock()):
                    return None
                if self.flow.error and not buffer:
                    return None
                continue
            packet = self._open(buffer.popleft()[0])
            if packet is not None:
                return packet

    def _open(self, data: bytes) -> bytes | None:
        try:
            packet = self.session.decrypt(data)
        except ProtocolError:
            self.rejected += 1
            return None
        if not packet:
            return None  # keepalive
        if self.record is not None:
            self.record.add("in", packet)
        return packet

    def listen(self, callback: Callable[[bytes, float], None] | None) -> None:
        """Hand every authenticated inner packet to `callback` as it arrives, with the seconds it waited since the
        kernel took it in (see `waited`); None: back to `recv`.

        Used by the stages' driver: decrypting, judging and dispatching in the socket's reader callback saves a
        task wake-up per packet.
        """
        if callback is None:
            self.flow.on_datagram = None
            return

        def deliver(data: bytes, arrived: float) -> None:
            packet = self._open(data)
            if packet is not None:
                callback(packet, waited(arrived))

        while self.flow.buffer:  # anything that arrived before listening
            deliver(*self.flow.buffer.popleft())
        self.flow.on_datagram = deliver

    def close(self) -> None:
        self.flow.close()


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


async def _handshake(
    flow: Flow, attempts: HandshakeAttempts, pacer: InitiationPacer, clock: Clock, wall: Clock
) -> TransportSession:
    """Drive `attempts` over `flow`: send what is due, feed what arrives, until it is finished."""
    while not attempts.finished(now := clock()):
        due = attempts.next_initiation_at()
        if due is not None and now >= due:
            await pacer.wait_turn(attempts.identity, attempts.relay_key)
            flow.send(attempts.initiation(clock(), wall()))
            if flow.error:
                raise SocketError(f"cannot send to the relay: {flow.error}", attempts)
            continue
        await flow.wait(attempts.wake_at(now) - now)
        if flow.unreachable:
            raise PortUnreachable("ICMP port unreachable: nothing listens on that port", attempts)
        while flow.buffer:
            data, arrived = flow.buffer.popleft()
            attempts.receive(data, clock() - waited(arrived), wall())
    session = attempts.session()
    if session is not None:
        return session
    sent, rejected = attempts.initiations, attempts.rejected
    noise = f"; {rejected} answer(s) did not authenticate" if rejected else ""
    if attempts.cookies:
        raise CookieFailed(
            f"relay sent {attempts.cookies} cookie repl(ies) but accepted none of {sent} initiation(s){noise}",
            attempts,
        )
    raise HandshakeTimeout(f"no valid handshake response to {sent} initiation(s){noise}", attempts)
