"""Fault kinds a simulated relay can be given, live: the lab's (same names, same symptoms) plus hostile ones.

A fault is written `KIND` or `KIND:ARG` (`loss:20`, `delay:150`); on the command line it is prefixed with the relay
name (`se-got-wg-003:nat`). A relay holds at most one fault of each kind, as in the lab. Parsing is pure so the
CLI, the control channel and the tests share one definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from probe.errors import ConfigError
from probe.lab.faults import MAX_DELAY_MS, MTU_FAULT_LIMIT

__all__ = ["MTU_FAULT_LIMIT", "FaultKind", "FaultSet", "SimFault", "parse_kind", "parse_relay_fault"]


class FaultKind(StrEnum):
    # The lab's kinds (probe/lab/faults.py, README "The lab"): the same symptom, simulated.
    NAT = "nat"  # nothing beyond the NAT answers; the in-tunnel gateway does
    FORWARD = "forward"  # as nat: forwarding off
    DROP = "drop"  # as nat: forwarded packets dropped
    PORTS = "ports"  # extended-range sockets closed: ICMP port unreachable there; the main port works
    EGRESS = "egress"  # the reflector sees a wrong public address
    DOWN = "down"  # every socket closed: ICMP port unreachable on every port
    LOSS = "loss"  # loss:PCT - PCT% of datagrams dropped each way (arriving at and leaving the relay)
    DELAY = "delay"  # delay:MS - every datagram arriving at the relay waits MS ms (a NAT round trip enters twice)
    MTU = "mtu"  # forwarded packets over MTU_FAULT_LIMIT bytes vanish
    V6NAT = "v6nat"  # IPv6 forwarding fails, IPv4 fine
    # Hostile kinds: a relay that lies, for testing that the client never believes it.
    GARBAGE = "garbage"  # noise, truncated, replayed, flipped, wrong-index datagrams before every real answer
    FORGE_HANDSHAKE = "forge_handshake"  # forged responses and cookie replies, never a real response
    CORRUPT = "corrupt"  # forward-target replies authenticate but do not parse as IP
    FORGE_PAYLOAD = "forge_payload"  # forward-target echo replies with a changed payload
    FORGE_SOURCE = "forge_source"  # forward-target echo replies from another address
    ICMP_UNREACHABLE = "icmp_unreachable"  # forward-target echoes draw "host unreachable" from the gateway
    ICMP_FOREIGN = "icmp_foreign"  # an ICMP error about someone else's packet (with our echo id) before each reply
    MTU_ICMP = "mtu_icmp"  # forwarded packets over MTU_FAULT_LIMIT draw "fragmentation needed / packet too big"
    REFLECTOR_CLOSED = "reflector_closed"  # reflector requests draw ICMP port unreachable
    SILENT = "silent"  # handshakes complete, nothing inside the tunnel is answered
    VANISH = "vanish"  # every socket closes at the first packet after a handshake (heal reopens them)
    COOKIE = "cookie"  # under load: a cookie reply first, then the initiation carrying mac2 is accepted
    COOKIE_ONLY = "cookie_only"  # cookie replies forever, no initiation ever accepted


LAB_KINDS = frozenset(
    {
        FaultKind.NAT,
        FaultKind.FORWARD,
        FaultKind.DROP,
        FaultKind.PORTS,
        FaultKind.EGRESS,
        FaultKind.DOWN,
        FaultKind.LOSS,
        FaultKind.DELAY,
        FaultKind.MTU,
        FaultKind.V6NAT,
    }
)
_NEEDS_ARG = frozenset({FaultKind.LOSS, FaultKind.DELAY})
# Faults that change which sockets are open (the rest only change what the relay does with what arrives).
SOCKET_KINDS = frozenset({FaultKind.DOWN, FaultKind.PORTS, FaultKind.VANISH})


@dataclass(frozen=True, slots=True)
class SimFault:
    kind: FaultKind
    arg: int | None = None

    def __str__(self) -> str:
        return self.kind.value if self.arg is None else f"{self.kind.value}:{self.arg}"

    @classmethod
    def parse(cls, text: str) -> SimFault:
        _, sep, arg_text = text.strip().partition(":")
        kind = parse_kind(text)
        if kind not in _NEEDS_ARG:
            if sep:
                raise ConfigError(f"fault {kind.value!r} takes no argument, got {text[:60]!r}")
            return cls(kind)
        if not (arg_text.isascii() and arg_text.isdecimal() and len(arg_text) <= 6):
            unit = "percent" if kind is FaultKind.LOSS else "milliseconds"
            raise ConfigError(f"fault {kind.value!r} needs a number of {unit}, as {kind.value}:20")
        arg = int(arg_text)
        if kind is FaultKind.LOSS and not 0 < arg <= 100:
            raise ConfigError(f"loss must be 1..100 percent, got {arg}")
        if kind is FaultKind.DELAY and not 0 < arg <= MAX_DELAY_MS:
            raise ConfigError(f"delay must be 1..{MAX_DELAY_MS} ms, got {arg}")
        return cls(kind, arg)


def parse_kind(text: str) -> FaultKind:
    """A fault kind alone (`heal NAME loss`); an argument, if given, is ignored."""
    kind_text = text.strip().partition(":")[0]
    try:
        return FaultKind(kind_text)
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ConfigError(f"unknown fault kind {kind_text[:40]!r} (known: {known})") from None


def parse_relay_fault(text: str) -> tuple[str, SimFault]:
    """`RELAY:KIND[:ARG]` as given to `probe sim up --fault`."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise ConfigError(f"--fault wants NAME:KIND (as se-got-wg-001:nat), got {text[:80]!r}")
    return name, SimFault.parse(rest)


class FaultSet:
    """A relay's current faults, one per kind, with the flags the packet path reads precomputed."""

    __slots__ = ("_faults", "delay", "inner", "loss")

    def __init__(self, faults: Iterable[SimFault] = ()) -> None:
        self._faults: dict[FaultKind, SimFault] = {}
        self.loss = 0.0  # probability of dropping a datagram, each way
        self.delay = 0.0  # seconds each arriving datagram waits
        self.inner = False  # any fault that changes what the inside of the relay answers
        for fault in faults:
            self._faults[fault.kind] = fault
        self._refresh()

    def _refresh(self) -> None:
        loss = self._faults.get(FaultKind.LOSS)
        delay = self._faults.get(FaultKind.DELAY)
        self.loss = (loss.arg or 0) / 100 if loss else 0.0
        self.delay = (delay.arg or 0) / 1000 if delay else 0.0
        self.inner = any(kind not in SOCKET_KINDS | _NEEDS_ARG for kind in self._faults)

    def __contains__(self, kind: object) -> bool:
        return kind in self._faults

    def __iter__(self) -> Iterator[SimFault]:
        return iter(self._faults.values())

    def __bool__(self) -> bool:
        return bool(self._faults)

    def add(self, fault: SimFault) -> None:
        self._faults[fault.kind] = fault
        self._refresh()

    def remove(self, kind: FaultKind | None = None) -> None:
        """Remove one kind, or every fault."""
        if kind is None:
            self._faults.clear()
        else:
            self._faults.pop(kind, None)
        self._refresh()

    def names(self) -> list[str]:
        return [str(fault) for fault in self._faults.values()]

    def blocks_forwarding(self, version: int) -> bool:
        """Whether packets to beyond the NAT never come back (nat, forward, drop; v6nat for IPv6)."""
        faults = self._faults
        if FaultKind.NAT in faults or FaultKind.FORWARD in faults or FaultKind.DROP in faults:
            return True
        return version == 6 and FaultKind.V6NAT in faults
