"""A simulated fleet: many `SimRelay`s and a real reflector on one event loop, with faults changed live.

    async with SimFleet(5, clients=[agent_key.public_key]) as fleet:
        inventory = fleet.inventory()              # or fleet.relay_list(): Mullvad's app format
        fleet.break_relay("se-got-wg-002", SimFault.parse("nat"))
        relay = fleet.relay("se-got-wg-002")      # its stats, conversations, faults

The fleet picks a free 127.B.0.0/16 block at start (see plan.py), so fleets in several processes do not collide.
Besides the relays it runs one real UDP reflector (probe/reflector.py's wire format) on 127.B.0.1 and ::1 with the
same port: what a relay answers on the reflector's behalf from inside the tunnel names that port, and an agent's
control check, which goes to the reflector through no relay, finds it there.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import random
import resource
import socket
import time
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address
from typing import Any

from probe import reflector
from probe.errors import ConfigError
from probe.inventory import Inventory, InventoryFormat, Relay
from probe.sim.faults import FaultKind, SimFault
from probe.sim.plan import (
    BLOCKS,
    DEFAULT_MAIN_PORT,
    DEFAULT_PORT_RANGES,
    LOCATION,
    LOOPBACK_V6,
    SimPlan,
    V6Mode,
    address_text,
    expand_ranges,
    plan_fleet,
    relay_key,
)
from probe.sim.relay import Behaviour, Clients, RelayStats, SimError, SimRelay, bind_loopback
from probe.sim.world import World
from probe.wireguard.constants import HANDSHAKE_INITIATION_RATE

__all__ = ["SimFleet"]

_BLOCK_ATTEMPTS = 12
# Files a fleet needs besides its relays' sockets: the reflector, the control socket and its clients, key and
# config files, the interpreter's own.
_SPARE_FILES = 256
PRUNE_INTERVAL = 60.0  # seconds between sweeps for expired sessions: one pass over the fleet, a few ms
PLACE = {"country": "Sweden", "city": "Gothenburg", "latitude": 57.70887, "longitude": 11.97456}


class Reflector:
    """The real reflector the agent's control check reaches directly: loopback sockets on one port."""

    def __init__(self, v4: IPv4Address) -> None:
        self.v4 = v4
        self.port = 0
        self.answered = 0
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, port: int = 0) -> None:
        """Bind the reflector's sockets: on a free port, or again on `port` once it had one."""
        self._loop = asyncio.get_running_loop()
        for _ in range(1 if port else 8):  # the port the kernel gives on 127.B.0.1 may be taken on ::1
            first = bind_loopback(socket.AF_INET, str(self.v4), port)
            got = first.getsockname()[1]
            try:
                socks = [first, bind_loopback(socket.AF_INET6, str(LOOPBACK_V6), got)]
            except OSError as exc:
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    first.close()
                    continue
                socks = [first]  # a host without IPv6 on lo: the IPv4 reflector still serves the control check
            self.port, self._socks = got, socks
            for sock in self._socks:
                self._loop.add_reader(sock.fileno(), self._answer, sock)
            return
        raise SimError("no port free on both 127.B.0.1 and ::1 for the reflector")

    def close(self) -> None:
        for sock in self._socks:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []

    def bound(self) -> list[tuple[str, int]]:
        return [(sock.getsockname()[0], self.port) for sock in self._socks]

    def _answer(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(reflector.MESSAGE_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:
                continue
            except OSError:
                return
            nonce = reflector.parse_request(data)
            source = ipaddress.ip_address(peer[0])
            if nonce is None or not source.is_loopback:
                continue
            try:
                sock.sendto(reflector.build_response(nonce, source, peer[1]), peer)
            except OSError:
                continue
            self.answered += 1


class SimFleet:
    """Relays `se-got-wg-001`... on loopback, every one accepting `clients`; start with `async with`."""

    def __init__(
        self,
        relays: int = 3,
        *,
        clients: Clients,
        v6: V6Mode = V6Mode.MAPPED,
        block: int | None = None,
        main_port: int = DEFAULT_MAIN_PORT,
        port_ranges: tuple[tuple[int, int], ...] = DEFAULT_PORT_RANGES,
        faults: Iterable[tuple[str, SimFault]] = (),
        seed: bytes | None = None,
        with_reflector: bool = True,
        flood_limit: float = HANDSHAKE_INITIATION_RATE,
        record: bool = False,
        strict: bool = True,
    ) -> None:
        self.count = relays
        self.clients = dict(clients) if isinstance(clients, Mapping) else dict.fromkeys(clients)
        self.v6 = v6
        self.block = block
        self.main_port = main_port
        self.port_ranges = port_ranges
        self.initial_faults = list(faults)
        self.seed = seed if seed is not None else os.urandom(32)
        self.with_reflector = with_reflector
        self.flood_limit = flood_limit
        self.record = record
        self.strict = strict
        # Validate everything that does not depend on the block before binding anything.
        plan_fleet(relays, block=BLOCKS.start, v6=v6, main_port=main_port, port_ranges=port_ranges)
        self.plan: SimPlan | None = None
        self.world = World()
        self.reflector: Reflector | None = None
        self.relays: list[SimRelay] = []
        self._by_name: dict[str, SimRelay] = {}
        self._prune_handle: asyncio.TimerHandle | None = None
        self.outside_up = True

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        errors = [error for relay in self.relays for error in relay.errors]
        if self.strict and errors and exc[0] is None:
            raise SimError(f"the simulated fleet itself failed: {errors[0]!r}") from errors[0]

    async def start(self) -> None:
        raise_open_files(self.sockets_needed())
        blocks = [self.block] if self.block is not None else random.sample(BLOCKS, _BLOCK_ATTEMPTS)
        for block in blocks:
            try:
                self._start_on(block)
                self._prune_handle = asyncio.get_running_loop().call_later(PRUNE_INTERVAL, self._prune)
                return
            except OSError as exc:
                self.stop()
                if exc.errno != errno.EADDRINUSE:
                    raise SimError(f"cannot open the simulated fleet's sockets: {exc.strerror or exc}") from exc
                if self.block is not None:
                    raise ConfigError(f"127.{block}.0.0/16 is in use ({exc.strerror}); pick another --block") from exc
        raise SimError(f"no free 127.B.0.0/16 block in {_BLOCK_ATTEMPTS} tries")

    def sockets_needed(self) -> int:
        per_relay = 1 + len(expand_ranges(self.port_ranges))
        return self.count * per_relay * (2 if self.v6 is V6Mode.LOOPBACK else 1) + _SPARE_FILES

    def _start_on(self, block: int) -> None:
        plan = plan_fleet(self.count, block=block, v6=self.v6, main_port=self.main_port, port_ranges=self.port_ranges)
        faults: dict[str, list[SimFault]] = {}
        names = {spec.name for spec in plan.relays}
        for name, fault in self.initial_faults:
            if name not in names:
                raise ConfigError(f"no relay {name!r} in the simulated fleet ({plan.relays[0].name}..)")
            faults.setdefault(name, []).append(fault)
        self.plan = plan
        reflector_port = reflector.DEFAULT_PORT
        if self.with_reflector:
            self.reflector = Reflector(plan.outside_v4)
            self.reflector.open()
            reflector_port = self.reflector.port
        self.world = World(
            forward_v4=plan.outside_v4,
            forward_v6=plan.outside_v6,
            reflector_v4=(plan.outside_v4, reflector_port),
            reflector_v6=(plan.outside_v6, reflector_port),
        )
        self.relays = []
        for spec in plan.relays:
            relay = SimRelay(
                self.clients,
                spec=spec,
                key=relay_key(self.seed, spec.name),
                world=self.world,
                faults=faults.get(spec.name, ()),
                flood_limit=self.flood_limit,
                record=self.record,
                strict=self.strict,
            )
            self.relays.append(relay)
            relay.open()
        self._by_name = {relay.name: relay for relay in self.relays}

    def _prune(self) -> None:
        now = time.time()
        for relay in self.relays:
            relay.prune(now)
        self._prune_handle = asyncio.get_running_loop().call_later(PRUNE_INTERVAL, self._prune)

    def stop(self) -> None:
        if self._prune_handle is not None:
            self._prune_handle.cancel()
            self._prune_handle = None
        for relay in self.relays:
            relay.close()
        if self.reflector is not None:
            self.reflector.close()

    # -- lookup and faults

    def relay(self, name: str) -> SimRelay:
        relay = self._by_name.get(name)
        if relay is None:
            first, last = self.relays[0].name, self.relays[-1].name
            raise ConfigError(f"no relay {name[:80]!r} in the simulated fleet (it has {first}..{last})")
        return relay

    def break_relay(self, name: str, fault: SimFault) -> SimRelay:
        relay = self.relay(name)
        relay.add_fault(fault)
        return relay

    def heal_relay(self, name: str, kind: FaultKind | None = None) -> SimRelay:
        relay = self.relay(name)
        relay.heal(kind)
        return relay

    def set_outside(self, up: bool) -> None:
        """Take the outside hosts down (or back up) for everyone: the real reflector's sockets close, and no relay's
        forward target or reflector answers any more. What an agent's own network outage looks like from the sim:
        every relay fails alike, and only the agent's control check, which goes through no relay, can tell."""
        self.outside_up = up
        for relay in self.relays:
            relay.outside_down = not up
        if self.reflector is not None:
            if up and not self.reflector.bound():
                self.reflector.open(self.reflector.port)
            elif not up:
                self.reflector.close()

    def set_behaviour(self, name: str, behaviour: Behaviour | None) -> None:
        self.relay(name).behaviour = behaviour

    # -- what it looks like from outside

    @property
    def reflector_port(self) -> int:
        return self.world.reflector_v4[1]

    def bound(self) -> list[tuple[str, int]]:
        """(host, port) of every open socket the fleet holds."""
        out = [pair for relay in self.relays for pair in relay.bound()]
        return out + (self.reflector.bound() if self.reflector else [])

    def sent_to(self) -> set[str]:
        """Every host any relay sent a datagram to."""
        return set().union(*(relay.sent_to for relay in self.relays))

    def stats(self) -> RelayStats:
        total = RelayStats()
        for relay in self.relays:
            total.add(relay.stats)
        return total

    @property
    def uniform_ports(self) -> bool:
        """Whether every relay listens on the same ports (then Mullvad's list format can describe the fleet)."""
        return self.v6 is not V6Mode.LOOPBACK

    def port_ranges_of(self, relay: SimRelay) -> tuple[tuple[int, int], ...]:
        if self.uniform_ports:
            return self.port_ranges
        return tuple((port, port) for port in relay.ports[1:])

    def inventory(self) -> Inventory:
        """The fleet as wgprobe's inventory model, with the labels Mullvad's list would give."""
        relays = [
            Relay(
                name=relay.name,
                public_key=relay.public_key.to_base64(),
                ipv4_addr_in=relay.address,
                ipv6_addr_in=relay.ipv6,
                location=LOCATION,
                main_port=relay.port,
                port_ranges=self.port_ranges_of(relay),
                labels={**relay.spec.labels, "country": str(PLACE["country"]), "city": str(PLACE["city"])},
            )
            for relay in self.relays
        ]
        kind = InventoryFormat.MULLVAD_APP if self.uniform_ports else InventoryFormat.TOML
        return Inventory(source="simulated fleet", format=kind, relays=tuple(relays))

    def relay_list(self) -> dict[str, Any]:
        """The fleet as Mullvad's `/app/v1/relays` document; only for uniform ports (not IPv6 `loopback`)."""
        if not self.uniform_ports:
            raise SimError("relays on ::1 have ports of their own, which Mullvad's list cannot say: use fleet_toml()")
        return {
            "locations": {LOCATION: PLACE},
            "wireguard": {
                "port_ranges": [[low, high] for low, high in self.port_ranges],
                "ipv4_gateway": str(self.world.gateway_v4),
                "ipv6_gateway": str(self.world.gateway_v6),
                "relays": [
                    {
                        "hostname": relay.name,
                        "location": LOCATION,
                        "active": True,
                        "owned": relay.spec.labels.get("owned") == "true",
                        "provider": relay.spec.labels.get("provider"),
                        "ipv4_addr_in": str(relay.address),
                        "include_in_country": True,
                        "weight": 100,
                        "public_key": relay.public_key.to_base64(),
                        "ipv6_addr_in": address_text(relay.ipv6) if relay.ipv6 else None,
                    }
                    for relay in self.relays
                ],
            },
        }

    def fleet_toml(self) -> str:
        """The fleet in wgprobe's own TOML inventory format, which allows ports per relay."""
        lines = [
            "# Written by `probe sim up`: relays on ::1 have ports of their own, which Mullvad's list cannot say.",
            "[defaults]",
            f'ipv4_gateway = "{self.world.gateway_v4}"',
            f'ipv6_gateway = "{self.world.gateway_v6}"',
            "",
        ]
        for relay in self.relays:
            labels = ", ".join(f'{key} = "{value}"' for key, value in sorted(relay.spec.labels.items()))
            ranges = ", ".join(f"[{low}, {high}]" for low, high in self.port_ranges_of(relay))
            lines += [
                "[[relays]]",
                f'name = "{relay.name}"',
                f'public_key = "{relay.public_key.to_base64()}"',
                f'ipv4 = "{relay.address}"',
                *([f'ipv6 = "{address_text(relay.ipv6)}"'] if relay.ipv6 else []),
                f"main_port = {relay.port}",
                f"port_ranges = [{ranges}]",
                f'location = "{LOCATION}"',
                f"labels = {{ {labels} }}",
                "",
            ]
        return "\n".join(lines)

    def status(self, name: str | None = None) -> dict[str, Any]:
        """What `probe sim status` shows: the fleet's totals and faulted relays, or one relay in detail."""
        if name is not None:
            relay = self.relay(name)
            return {
                "relay": relay.name,
                "public_key": relay.public_key.to_base64(),
                "ipv4": str(relay.address),
                "ipv6": address_text(relay.ipv6) if relay.ipv6 else None,
                "ports": list(relay.ports),
                "open_sockets": relay.open_sockets,
                "faults": relay.faults.names(),
                "stats": relay.stats.as_dict(),
            }
        plan = self.plan
        return {
            "relays": len(self.relays),
            "block": plan.block if plan else None,
            "ipv6": self.v6.value,
            "ports": [self.main_port, *(f"{low}-{high}" if low != high else low for low, high in self.port_ranges)]
            if self.uniform_ports
            else ["per relay (on ::1 each relay has its own)"],
            "reflector": [_endpoint(host, port) for host, port in self.reflector.bound()] if self.reflector else [],
            "reflector_answered": self.reflector.answered if self.reflector else 0,
            "open_sockets": sum(relay.open_sockets for relay in self.relays),
            "outside": "up" if self.outside_up else "down",
            "faults": {relay.name: relay.faults.names() for relay in self.relays if relay.faults},
            "totals": self.stats().as_dict(),
        }


def raise_open_files(needed: int) -> None:
    """Every port of every relay is a socket: lift the soft limit on open files to what is needed (up to the hard
    limit, which needs no privilege)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ConfigError(
            f"this fleet needs about {needed} sockets but the open-file limit is {hard} (ulimit -Hn): "
            "use fewer relays or port ranges"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
