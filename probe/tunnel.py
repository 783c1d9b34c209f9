"""The asyncio shell around the sans-I/O WireGuard core: one connected UDP socket per flow to one relay endpoint.

The socket is *connected* so the kernel reports ICMP port-unreachable for it (as ConnectionRefusedError); an
unconnected socket would see a closed port only as a timeout. The handshake is retried a bounded number of times,
each initiation spaced past wireguard-go's per-key flood limit (it silently ignores a second initiation from the
same key within 20 ms). Every datagram a relay sends is handled: anything that fails to parse, authenticate or
match is counted in `rejected` and dropped, never raised into the caller.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

from probe.errors import WgProbeError
from probe.sockets import udp_socket
from probe.wireguard import (
    CookieState,
    Identity,
    InitiatorHandshake,
    ProtocolError,
    PublicKey,
    TransportSession,
)
from probe.wireguard.constants import HANDSHAKE_INITIATION_RATE

# A little above the 20 ms limit: timer granularity on a loaded machine must not make us land just inside it.
INITIATION_SPACING = HANDSHAKE_INITIATION_RATE + 0.005
MAX_DATAGRAM = 65535
T = TypeVar("T")


class TunnelError(WgProbeError):
    """The tunnel could not be established; the subclass says why."""


class HandshakeTimeout(TunnelError):
    """No valid response to any initiation (wrong relay key, unregistered client key, dropped, or filtered)."""


class PortUnreachable(TunnelError):
    """The relay's host answered ICMP port unreachable: nothing listens on that port."""


class CookieFailed(TunnelError):
    """The relay answered with cookie replies but never accepted an initiation carrying the cookie."""


class InitiationPacer:
    """Spaces initiations per (local key, relay key) past the relay's flood limit, across all tunnels using it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._last: dict[tuple[bytes, bytes], float] = {}
        self._clock = clock

    async def wait_turn(self, identity: Identity, relay: PublicKey) -> None:
        key = (identity.public_key.raw, relay.raw)
        while True:
            now = self._clock()
            due = self._last.get(key, -1e9) + INITIATION_SPACING
            if now >= due:
                self._last[key] = now
                return
            await asyncio.sleep(due - now)


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
    `unreachable`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox: Inbox[bytes] = Inbox(loop)
        self.buffer = self.inbox.items
        self.unreachable = False
        # When set, datagrams go straight to this callback instead of the buffer (see Tunnel.listen).
        self.on_datagram: Callable[[bytes], None] | None = None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                self.unreachable = True
                continue
            except OSError:
                break  # other ICMP errors (host/net unreachable): the flow just goes quiet, a timeout says so
            if not data:
                continue
            if self.on_datagram is not None:
                self.on_datagram(data)
            else:
                self.buffer.append(data)
        if self.buffer or self.unreachable:
            self.inbox.wake()

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except ConnectionRefusedError:
            self.unreachable = True
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: the datagram is lost, as it could be on the wire

    async def wait(self, timeout: float) -> bool:
        """Until a datagram or an unreachable arrives (True) or `timeout` passes (False)."""
        return await self.inbox.wait(timeout, lambda: bool(self.buffer) or self.unreachable)

    def close(self) -> None:
        self.inbox.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class Record:
    """Inner packets sent and received, with wall-clock times, for evidence (pcap) of a failed probe."""

    packets: list[tuple[float, str, bytes]] = field(default_factory=list)

    def add(self, direction: str, packet: bytes) -> None:
        self.packets.append((time.time(), direction, packet))


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

    @classmethod
    async def open(
        cls,
        identity: Identity,
        relay_key: PublicKey,
        address: IPv4Address | IPv6Address,
        port: int,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        preshared_key: bytes | None = None,
        cookie_state: CookieState | None = None,
        pacer: InitiationPacer = DEFAULT_PACER,
        record: Record | None = None,
        netns: str | None = None,
    ) -> Tunnel:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = udp_socket(family, netns)
        try:
            sock.connect((str(address), port))
        except OSError as exc:
            sock.close()
            raise TunnelError(f"cannot open UDP socket to {address}:{port}: {exc.strerror or exc}") from exc
        flow = Flow(loop, sock)
        try:
            session, seconds, sent, cookies = await _handshake(
                flow, identity, relay_key, timeout, attempts, preshared_key, cookie_state, pacer
            )
        except BaseException:
            flow.close()
            raise
        return cls(flow, session, seconds, sent, cookies, record)

    def send(self, packet: bytes) -> None:
        """Encrypt and send one inner IP packet."""
        if self.record is not None:
            self.record.add("out", packet)
        self.flow.send(self.session.encrypt(packet))

    async def recv(self, timeout: float) -> bytes | None:
        """The next authenticated inner packet (padding left on: parse by the IP length), or None at timeout.

        Keepalives, unauthenticated, replayed and malformed datagrams are skipped and counted in `rejected`.
        """
        deadline = time.monotonic() + timeout
        buffer = self.flow.buffer
        while True:
            if not buffer:
                # An ICMP unreachable after the handshake (the relay's port closed mid-probe) carries nothing to
                # decrypt: consume it and keep waiting until the deadline, which then reports the silence.
                self.flow.unreachable = False
                if not await self.flow.wait(deadline - time.monotonic()):
                    return None
                continue
            packet = self._open(buffer.popleft())
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

    def listen(self, callback: Callable[[bytes], None] | None) -> None:
        """Hand every authenticated inner packet to `callback` as it arrives (None: back to `recv`).

        Used by the stages' demultiplexer: decrypting and dispatching in the socket's reader callback saves a
        task wake-up per packet.
        """
        if callback is None:
            self.flow.on_datagram = None
            return

        def deliver(data: bytes) -> None:
            packet = self._open(data)
            if packet is not None:
                callback(packet)

        while self.flow.buffer:  # anything that arrived before listening
            deliver(self.flow.buffer.popleft())
        self.flow.on_datagram = deliver

    def close(self) -> None:
        self.flow.close()


async def _handshake(
    flow: Flow,
    identity: Identity,
    relay_key: PublicKey,
    timeout: float,
    attempts: int,
    preshared_key: bytes | None,
    cookie_state: CookieState | None,
    pacer: InitiationPacer,
) -> tuple[TransportSession, float, int, int]:
    handshake = InitiatorHandshake(identity, relay_key, preshared_key, cookie_state=cookie_state)
    cookies = 0
    sent = 0
    # A cookie reply earns one immediate retry on top of the budget: it proves the relay is alive but loaded.
    while sent < attempts + min(cookies, attempts):
        await pacer.wait_turn(identity, relay_key)
        flow.send(handshake.create_initiation(time.time()))
        sent += 1
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while await flow.wait(deadline - time.monotonic()):
            if flow.unreachable:
                raise PortUnreachable("ICMP port unreachable: nothing listens on that port")
            data = flow.buffer.popleft()
            try:
                session = handshake.receive(data, time.time())
            except ProtocolError:
                continue  # not for us, forged or stale: keep waiting for the real answer
            if session is not None:
                return session, time.perf_counter() - started, sent, cookies
            cookies += 1
            break  # cookie taken: the next initiation carries mac2
    if cookies:
        raise CookieFailed(f"relay sent {cookies} cookie repl(ies) but accepted no initiation in {sent} attempts")
    raise HandshakeTimeout(f"no handshake response to {sent} initiation(s) within {timeout:g}s each")
