"""One simulated WireGuard relay on loopback: real handshakes and transport crypto, a simulated inside.

Theory of operation. A relay owns one non-blocking UDP socket per (address, port) it listens on, watched by the
running event loop with `add_reader` (no threads, no tasks per datagram). An initiation goes to the sans-I/O
`Responder`; the session it yields belongs to the client key's `Conversation`, which keeps what a WireGuard peer
keeps: up to three sessions (previous, current, next: the new one becomes current when the client first uses it)
and one endpoint, the socket and address the client was last heard from. Replies always go to that endpoint with
the current session, so two processes sharing a key disturb each other here as on a real relay. A transport message
is found by its receiver index, decrypted, checked against the client's allowed tunnel addresses, and handed to the
relay's *behaviour*: by default `Conversation.reply`, which asks the simulated inside (`probe.sim.world.respond`)
what comes back.

Faults act where the lab's do: `down`, `ports` and `vanish` close sockets (the kernel then answers ICMP port
unreachable), `loss` drops datagrams arriving and leaving, `delay` holds every arriving datagram (`call_later`,
never a sleep), the cookie kinds put the responder under load, and the rest change what the inside answers or add
the lies of a hostile relay. Faults change live: the next datagram sees them.

Counters (`RelayStats`) let a test balance the books: `bad_sent` is what an honest client must reject (its tunnel's
`rejected`), `valid_sent` what it must accept. A failure of the relay itself lands in `errors` and, with
`strict=True`, fails the `async with` block, so a relay bug never passes as a client failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address

from probe.errors import ConfigError
from probe.packets import IPPacket, PacketError, parse_ip
from probe.sim.conversation import (
    BAD,
    RAW,
    VALID,
    Allowed,
    Behaviour,
    Clients,
    Conversation,
    RelayStats,
    SimError,
    SockAddr,
)
from probe.sim.faults import FaultKind, FaultSet, SimFault
from probe.sim.hostile import forged_handshake_answers, handshake_noise
from probe.sim.plan import RelaySpec
from probe.sim.world import BEYOND, LOCAL, Egress, World
from probe.wireguard import (
    CookieChecker,
    CookieRequired,
    Identity,
    PrivateKey,
    ProtocolError,
    PublicKey,
    Responder,
    TransportSession,
    verify_mac1,
)
from probe.wireguard.constants import (
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_TRANSPORT,
    TRANSPORT_MIN_SIZE,
)

__all__ = [
    "BEYOND",
    "LOCAL",
    "Allowed",
    "Behaviour",
    "Clients",
    "Conversation",
    "RelayStats",
    "SimError",
    "SimRelay",
    "bind_loopback",
]

MAX_DATAGRAM = 65535
MAX_KEPT_ERRORS = 20


class _Listener:
    __slots__ = ("family", "host", "main", "port", "sock")

    def __init__(self, family: socket.AddressFamily, host: str, port: int, main: bool) -> None:
        self.family = family
        self.host = host
        self.port = port
        self.main = main
        self.sock: socket.socket | None = None


def bind_loopback(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to a loopback address; anything else is refused, never bound."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(f"the simulated fleet binds loopback addresses only, not {host}")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _clients(clients: Clients) -> dict[PublicKey, Allowed | None]:
    if isinstance(clients, Mapping):
        return dict(clients)
    return dict.fromkeys(clients)


class SimRelay:
    """A simulated relay. Use `async with SimRelay(clients)` on a running loop, or let a `SimFleet` open it."""

    def __init__(
        self,
        clients: Clients,
        *,
        spec: RelaySpec | None = None,
        key: PrivateKey | None = None,
        world: World | None = None,
        behaviour: Behaviour | None = None,
        faults: Iterable[SimFault] = (),
        flood_limit: float = HANDSHAKE_INITIATION_RATE,
        record: bool = False,
        strict: bool = True,
    ) -> None:
        self.spec = spec or RelaySpec(name="sim-relay", ipv4=IPv4Address("127.0.0.1"))
        self.identity = Identity(key or PrivateKey.generate())
        self.clients = _clients(clients)
        self.responder = Responder(
            self.identity, dict.fromkeys(self.clients), cookie_checker=CookieChecker(self.identity.public_key)
        )
        self.world = world or World()
        spec = self.spec
        self.egress = Egress(
            spec.egress_v4 or spec.ipv4, spec.egress_v6 or spec.ipv6, spec.wrong_egress_v4, spec.wrong_egress_v6
        )
        self.behaviour = behaviour
        self.faults = FaultSet(faults)
        self.flood_limit = flood_limit
        self.record = record
        self.strict = strict
        self.stats = RelayStats()
        self.inner: list[IPPacket] = []  # inner packets received, when `record`
        self.errors: list[BaseException] = []
        self.sent_to: set[str] = set()  # every host a datagram was sent to
        self.vanished = False
        self.outside_down = False  # set fleet-wide by SimFleet.set_outside: the forward target and reflector are gone
        # Told of each of the first MAX_KEPT_ERRORS failures of the relay itself (the CLI logs them).
        self.on_error: Callable[[SimRelay, BaseException], None] | None = None
        self._conversations: dict[bytes, Conversation] = {}
        self._sessions: dict[int, tuple[Conversation, TransportSession]] = {}
        self._listeners: list[_Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- identity and addresses

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def public_key(self) -> PublicKey:
        return self.identity.public_key

    @property
    def address(self) -> IPv4Address:
        return self.spec.ipv4

    @property
    def ipv6(self) -> IPv6Address | None:
        return self.spec.ipv6

    @property
    def ports(self) -> tuple[int, ...]:
        """The ports this relay listens on (main port first), fixed once opened."""
        if not self._listeners:
            return self.spec.ports
        return tuple(dict.fromkeys(listener.port for listener in self._listeners))

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def open_sockets(self) -> int:
        return sum(1 for listener in self._listeners if listener.sock is not None)

    def bound(self) -> list[tuple[str, int]]:
        """(host, port) of every open socket."""
        return [(item.host, item.port) for item in self._listeners if item.sock is not None]

    # -- life

    async def __aenter__(self) -> SimRelay:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self.strict and self.errors and exc[0] is None:
            raise SimError(f"simulated relay {self.name} failed: {self.errors[0]!r}") from self.errors[0]

    def open(self) -> None:
        """Bind every socket (fixing any free ports chosen), then close what the faults say is closed."""
        self._loop = asyncio.get_running_loop()
        if not self._listeners:
            try:
                self._allocate()
            except BaseException:
                self.close()
                raise
        self.sync_sockets()

    def _allocate(self) -> None:
        spec = self.spec
        v4, v6 = str(spec.ipv4), "::1"
        for number, wanted in enumerate(spec.ports):
            for _ in range(8):  # a free port on ::1 may be taken on our IPv4 address by someone else: retry
                pair = []
                try:
                    if spec.own_v6_sockets:
                        assert spec.ipv6 is not None
                        v6 = str(spec.ipv6)
                        six = bind_loopback(socket.AF_INET6, v6, wanted)
                        pair.append((socket.AF_INET6, v6, six))
                    port = pair[0][2].getsockname()[1] if pair else wanted
                    pair.append((socket.AF_INET, v4, bind_loopback(socket.AF_INET, v4, port)))
                except OSError:
                    for _family, _host, sock in pair:
                        sock.close()
                    if wanted != 0:
                        raise
                    continue
                for family, host, sock in pair:
                    listener = _Listener(family, host, sock.getsockname()[1], number == 0)
                    listener.sock = sock
                    self._add_reader(sock)
                    self._listeners.append(listener)
                break
            else:
                raise SimError(f"{self.name}: no free port for both ::1 and {v4}")

    def close(self) -> None:
        """Close every socket; faults changed afterwards reopen nothing (`open` again does)."""
        for listener in self._listeners:
            self._close_listener(listener)
        self._loop = None

    def sync_sockets(self) -> None:
        """Open and close sockets to match the faults (down, ports, vanish)."""
        if self._loop is None:
            return
        faults = self.faults
        gone = FaultKind.DOWN in faults or (self.vanished and FaultKind.VANISH in faults)
        for listener in self._listeners:
            wanted = not gone and (listener.main or FaultKind.PORTS not in faults)
            if wanted and listener.sock is None:
                listener.sock = bind_loopback(listener.family, listener.host, listener.port)
                self._add_reader(listener.sock)
            elif not wanted and listener.sock is not None:
                self._close_listener(listener)

    def _add_reader(self, sock: socket.socket) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._readable, sock)

    def _close_listener(self, listener: _Listener) -> None:
        sock = listener.sock
        if sock is None:
            return
        listener.sock = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()

    # -- faults

    def set_faults(self, faults: Iterable[SimFault]) -> None:
        self.faults = FaultSet(faults)
        self._faults_changed()

    def add_fault(self, fault: SimFault) -> None:
        self.faults.add(fault)
        self._faults_changed()

    def heal(self, kind: FaultKind | None = None) -> None:
        """Remove one fault kind, or all."""
        self.faults.remove(kind)
        self._faults_changed()

    def _faults_changed(self) -> None:
        if FaultKind.VANISH not in self.faults:
            self.vanished = False
        self.sync_sockets()

    # -- receiving

    def _readable(self, sock: socket.socket) -> None:
        stats = self.stats
        while sock.fileno() != -1:
            try:
                data, address = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:
                continue  # an ICMP error about an earlier reply: that client is gone
            except OSError:
                return
            faults = self.faults
            if faults.loss and random.random() < faults.loss:
                stats.lost += 1
            elif faults.delay:
                assert self._loop is not None
                self._loop.call_later(faults.delay, self._handle, sock, data, address)
            else:
                self._handle(sock, data, address)

    def _handle(self, sock: socket.socket, data: bytes, address: SockAddr) -> None:
        if sock.fileno() == -1:
            return  # closed while the datagram was delayed
        try:
            kind = data[0] if len(data) >= 4 and data[1:4] == b"\0\0\0" else 0
            if kind == MESSAGE_TRANSPORT:
                self._transport(sock, data, address)
            elif kind == MESSAGE_INITIATION:
                self._initiation(sock, data, address)
            else:
                self.stats.rejected += 1
        except Exception as exc:  # the relay must keep serving; the error is reported, never lost
            self.stats.errors += 1
            if len(self.errors) < MAX_KEPT_ERRORS:
                self.errors.append(exc)
                if self.on_error is not None:
                    self.on_error(self, exc)

    def _initiation(self, sock: socket.socket, data: bytes, address: SockAddr) -> None:
        stats = self.stats
        stats.initiations += 1
        faults = self.faults
        now = time.time()
        try:
            if FaultKind.COOKIE_ONLY in faults:
                self._cookie_only(sock, data, address, now)
                return
            result = self.responder.consume_initiation(
                data, now, source=_source(sock, address), under_load=FaultKind.COOKIE in faults
            )
        except ProtocolError:
            stats.rejected += 1
            return
        if isinstance(result, CookieRequired):
            stats.cookies += 1
            self.transmit(sock, address, result.cookie_reply, RAW)
            return
        conv = self._conversation(result.initiator)
        mono = time.monotonic()
        if mono - conv.last_initiation <= self.flood_limit:
            stats.flood_dropped += 1  # as wireguard-go: a second initiation within the limit is ignored
            return
        conv.last_initiation = mono
        if FaultKind.FORGE_HANDSHAKE in faults:
            for junk in forged_handshake_answers(data, result.initiator):
                self.transmit(sock, address, junk, RAW)
            return
        conv.install(result.session, sock, address)
        if FaultKind.GARBAGE in faults:
            for junk in handshake_noise(result.response):
                conv.send_raw(junk)
        conv.send_raw(result.response)
        stats.handshakes += 1
        if FaultKind.GARBAGE in faults:
            conv.send_bad(result.response)  # a duplicate: the client, established by now, must reject it

    def _cookie_only(self, sock: socket.socket, data: bytes, address: SockAddr, now: float) -> None:
        if len(data) != INITIATION_SIZE or not verify_mac1(data, self.public_key.raw):
            self.stats.rejected += 1
            return
        # A new secret for every reply: the cookie the client gets never validates its next initiation.
        reply = CookieChecker(self.public_key).create_reply(data, _source(sock, address), now)
        self.stats.cookies += 1
        self.transmit(sock, address, reply, RAW)

    def _transport(self, sock: socket.socket, data: bytes, address: SockAddr) -> None:
        stats = self.stats
        entry = self._sessions.get(int.from_bytes(data[4:8], "little")) if len(data) >= TRANSPORT_MIN_SIZE else None
        if entry is None:
            stats.rejected += 1
            return
        conv, session = entry
        if session.expired(time.time()):  # as wireguard-go: keys past REJECT_AFTER_TIME decrypt nothing
            self.expire(conv, session)
            stats.rejected += 1
            return
        try:
            plain = session.decrypt(data)
        except ProtocolError:
            stats.rejected += 1
            return
        stats.received += 1
        conv.confirm(session, sock, address)
        if plain:  # else a keepalive
            self._deliver(conv, plain)

    def _deliver(self, conv: Conversation, plain: bytes) -> None:
        """One inner packet from the client: check it as WireGuard does, then let the behaviour answer it."""
        try:
            ip = parse_ip(plain)
        except PacketError:
            ip = None
        if ip is None or not conv.allows(ip):
            self.stats.inner_dropped += 1
            return
        if self.record:
            self.inner.append(ip)
        faults = self.faults
        if FaultKind.VANISH in faults:
            self.vanished = True
            self.sync_sockets()
        elif FaultKind.SILENT in faults:
            pass
        elif self.behaviour is not None:
            self.behaviour(conv, ip)
        else:
            conv.reply(ip)

    def _conversation(self, key: PublicKey) -> Conversation:
        conv = self._conversations.get(key.raw)
        if conv is None:
            conv = self._conversations[key.raw] = Conversation(self, key, self.clients.get(key))
        return conv

    def conversation(self, key: PublicKey) -> Conversation | None:
        return self._conversations.get(key.raw)

    def remember(self, conv: Conversation, session: TransportSession) -> None:
        self._sessions[session.local_index] = (conv, session)

    def forget(self, session: TransportSession) -> None:
        self._sessions.pop(session.local_index, None)

    def expire(self, conv: Conversation, session: TransportSession) -> None:
        conv.drop(session)
        self.forget(session)

    def prune(self, now: float) -> int:
        """Forget every session past REJECT_AFTER_TIME (`now`: Unix time), so an idle fleet gives its memory back
        (each session holds two cipher contexts, about 5 kB). Returns how many went."""
        expired = [entry for entry in self._sessions.values() if entry[1].expired(now)]
        for conv, session in expired:
            self.expire(conv, session)
        return len(expired)

    # -- sending

    def transmit(
        self,
        sock: socket.socket | None,
        address: SockAddr | None,
        data: bytes,
        kind: int,
        hops: int = LOCAL,
    ) -> None:
        """Send one datagram through the relay's public link: the loss and delay faults apply."""
        if sock is None or address is None:
            raise SimError("no endpoint to send to yet")
        faults = self.faults
        if faults.loss and random.random() < faults.loss:
            self.stats.lost += 1
            return
        wait = faults.delay * (hops - 1)
        if wait > 0:
            if self._loop is None:  # closed meanwhile: nothing leaves a closed relay
                self.stats.send_errors += 1
                return
            self._loop.call_later(wait, self._send_now, sock, address, data, kind)
        else:
            self._send_now(sock, address, data, kind)

    def _send_now(self, sock: socket.socket, address: SockAddr, data: bytes, kind: int) -> None:
        try:
            sock.sendto(data, address)
        except OSError:  # closed by a fault meanwhile, or the socket buffer is full: lost, as on a wire
            self.stats.send_errors += 1
            return
        self.sent_to.add(address[0])
        if kind == VALID:
            self.stats.valid_sent += 1
        elif kind == BAD:
            self.stats.bad_sent += 1
        else:
            self.stats.raw_sent += 1


def _source(sock: socket.socket, address: SockAddr) -> bytes:
    """The source as cookies bind to it: address and port (wireguard-go's endpoint bytes)."""
    packed: bytes = socket.inet_pton(sock.family, address[0])
    return packed + int(address[1]).to_bytes(2, "big")
