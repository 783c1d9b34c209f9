"""A client key as one relay knows it, and the API a relay's behaviour answers with.

A `Conversation` keeps what a WireGuard peer keeps on a relay: up to three sessions (previous, current, next: a new
handshake's session becomes current when the client first sends on it, as wireguard-go rotates its keypairs) and one
endpoint, the socket and address the client was last heard from. A behaviour gets the conversation and the inner
packet, and answers with `reply` (what the simulated inside answers) or by hand with `send_inner`, `send_valid`,
`send_bad` and `send_raw`, which the relay counts so a test can balance its books.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Final

from probe.errors import WgProbeError
from probe.packets import IPPacket
from probe.sim.faults import FaultKind
from probe.sim.world import LOCAL, corrupt, respond
from probe.wireguard import PublicKey, TransportSession
from probe.wireguard.constants import TRANSPORT_HEADER_SIZE

if TYPE_CHECKING:
    from probe.sim.relay import SimRelay

RAW, BAD, VALID = 0, 1, 2  # how a sent datagram is counted


class SimError(WgProbeError):
    """The simulated fleet itself failed (not the client under test)."""


@dataclass(slots=True)
class RelayStats:
    initiations: int = 0  # initiation-type datagrams that arrived
    handshakes: int = 0  # responses sent
    cookies: int = 0  # cookie replies sent
    flood_dropped: int = 0  # initiations ignored: within the flood limit of the key's last accepted one
    rejected: int = 0  # datagrams that did not parse or authenticate
    received: int = 0  # authenticated transport messages (keepalives included)
    inner_dropped: int = 0  # not IP, or a source outside the client's allowed tunnel addresses
    unanswered: int = 0  # inner packets nothing answered (faults, unknown destinations)
    valid_sent: int = 0  # authenticated inner packets sent
    bad_sent: int = 0  # datagrams sent after a handshake that an honest client must reject
    raw_sent: int = 0  # other datagrams: handshake responses, cookie replies, noise, keepalives
    lost: int = 0  # dropped by the loss fault, either way
    send_errors: int = 0
    errors: int = 0  # exceptions in the relay itself

    def add(self, other: RelayStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Allowed:
    """The tunnel addresses a client key may send from (WireGuard's allowed IPs). A key registered without an
    `Allowed`, or with neither address, may send from any; otherwise only from the addresses given."""

    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None


# (host, port) for IPv4, (host, port, flowinfo, scope) for IPv6, as recvfrom returns them.
SockAddr = tuple[Any, ...]
Clients = Mapping[PublicKey, Allowed | None] | Iterable[PublicKey]
Behaviour = Callable[["Conversation", IPPacket], None]


class Conversation:
    """One client key on one relay: its sessions, its endpoint, and what a behaviour uses to answer it."""

    __slots__ = (
        "address",
        "allowed_v4",
        "allowed_v6",
        "current",
        "key",
        "last_initiation",
        "last_valid",
        "next",
        "previous",
        "relay",
        "sock",
    )

    def __init__(self, relay: SimRelay, key: PublicKey, allowed: Allowed | None) -> None:
        self.relay: Final = relay
        self.key: Final = key
        self.allowed_v4 = allowed.ipv4.packed if allowed and allowed.ipv4 else None
        self.allowed_v6 = allowed.ipv6.packed if allowed and allowed.ipv6 else None
        self.previous: TransportSession | None = None
        self.current: TransportSession | None = None
        self.next: TransportSession | None = None
        self.sock: socket.socket | None = None
        self.address: SockAddr | None = None
        self.last_valid: bytes | None = None  # the last authenticated datagram sent (garbage replays it)
        self.last_initiation = -1e9  # loop time of the last accepted initiation (flood limit)

    @property
    def session(self) -> TransportSession | None:
        """The session replies are encrypted with."""
        return self.current

    def allows(self, ip: IPPacket) -> bool:
        allowed = self.allowed_v4 if ip.version == 4 else self.allowed_v6
        if allowed is None:
            return self.allowed_v4 is None and self.allowed_v6 is None
        return ip.src == allowed

    def install(self, session: TransportSession, sock: socket.socket, address: SockAddr) -> None:
        """A new handshake's session: usable once the client sends on it."""
        if self.next is not None:
            self.relay.forget(self.next)
        self.next = session
        self.relay.remember(self, session)
        self.sock, self.address = sock, address

    def confirm(self, session: TransportSession, sock: socket.socket, address: SockAddr) -> None:
        """The client sent on `session` from `address`: rotate keys if it is the new one, and roam there."""
        if session is self.next:
            if self.previous is not None:
                self.relay.forget(self.previous)
            self.previous, self.current, self.next = self.current, session, None
        self.sock, self.address = sock, address

    def drop(self, session: TransportSession) -> None:
        if self.previous is session:
            self.previous = None
        if self.current is session:
            self.current = None
        if self.next is session:
            self.next = None

    def seal(self, inner: bytes) -> bytes:
        if self.current is None:
            raise SimError("no session the client has used yet: nothing can be sent to it")
        return self.current.encrypt(inner)

    def send_raw(self, data: bytes, *, hops: int = LOCAL) -> None:
        self.relay.transmit(self.sock, self.address, data, RAW, hops)

    def send_bad(self, data: bytes, *, hops: int = LOCAL) -> None:
        self.relay.transmit(self.sock, self.address, data, BAD, hops)

    def send_valid(self, sealed: bytes, *, hops: int = LOCAL) -> None:
        self.last_valid = sealed
        self.relay.transmit(self.sock, self.address, sealed, VALID, hops)

    def send_inner(self, inner: bytes, *, hops: int = LOCAL) -> None:
        """Encrypt and send one inner packet; under `garbage`, everything a client must refuse goes first."""
        sealed = self.seal(inner)
        if FaultKind.GARBAGE in self.relay.faults:
            self._noise(inner, sealed, hops)
        self.send_valid(sealed, hops=hops)

    def reply(self, ip: IPPacket) -> None:
        """What a relay with this relay's faults answers (the default behaviour)."""
        relay = self.relay
        if relay.outside_down and ip.dst != relay.world.gateway(ip.version):
            answers = []  # the outside hosts are gone for everyone: only the relay itself answers
        else:
            answers = respond(ip, relay.world, relay.egress, relay.faults)
        if not answers:
            relay.stats.unanswered += 1
        for hops, packet in answers:
            self.send_inner(packet, hops=hops)

    def _noise(self, inner: bytes, sealed: bytes, hops: int) -> None:
        assert self.current is not None
        self.send_bad(os.urandom(random.randint(1, 200)), hops=hops)
        self.send_bad(self.seal(inner)[:20], hops=hops)  # shorter than any transport message
        self.send_bad(self.seal(inner)[:-5], hops=hops)  # long enough, but the tag is cut
        wrong_index = bytearray(self.seal(corrupt(inner)))  # accepted, it would fail the stage
        wrong_index[4:8] = struct.pack("<I", (self.current.remote_index + 1) & 0xFFFFFFFF)
        self.send_bad(bytes(wrong_index), hops=hops)
        if self.last_valid is not None:
            self.send_bad(self.last_valid, hops=hops)  # a replay of the previous authenticated message
        flipped = bytearray(sealed)
        flipped[min(TRANSPORT_HEADER_SIZE + 30, len(sealed) - 1)] ^= 0x01
        self.send_bad(bytes(flipped), hops=hops)  # same counter as the real one, sent first: only the tag refuses it
        self.send_raw(self.seal(b""), hops=hops)  # a keepalive: authenticated, neither delivered nor rejected
