"""Fault kinds the lab can inject into a relay, each reproducing a failure seen on real fleets.

A fault is written `KIND` or `KIND:ARG` (`loss:20`, `delay:150`); on the command line it is prefixed with the relay
name (`se-got-wg-003:nat`). Parsing is pure so the CLI, the state file and the tests share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from probe.errors import ConfigError


class FaultKind(StrEnum):
    NAT = "nat"  # no masquerade: forwarded packets leave with the tunnel source address
    FORWARD = "forward"  # IP forwarding off (both families)
    DROP = "drop"  # the firewall drops every forwarded packet
    PORTS = "ports"  # extended entry port ranges not redirected; the main port still works
    EGRESS = "egress"  # traffic leaves through NAT with a wrong public address
    DOWN = "down"  # the WireGuard process is gone
    LOSS = "loss"  # loss:PCT - PCT% of packets leaving the public interface dropped at random
    DELAY = "delay"  # delay:MS - packets arriving on the public interface held MS milliseconds
    MTU = "mtu"  # large forwarded packets dropped
    V6NAT = "v6nat"  # IPv6 masquerade missing, IPv4 fine


_NEEDS_ARG = {FaultKind.LOSS, FaultKind.DELAY}
# A forwarded packet longer than this is dropped under `mtu`; small probes pass, a 1400-byte one does not.
MTU_FAULT_LIMIT = 1200
MAX_DELAY_MS = 10_000


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    arg: int | None = None

    def __str__(self) -> str:
        return self.kind.value if self.arg is None else f"{self.kind.value}:{self.arg}"

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind_text, sep, arg_text = text.strip().partition(":")
        try:
            kind = FaultKind(kind_text)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise ConfigError(f"unknown fault kind {kind_text!r} (known: {known})") from None
        if kind not in _NEEDS_ARG:
            if sep:
                raise ConfigError(f"fault {kind.value!r} takes no argument, got {text!r}")
            return cls(kind)
        if not (arg_text.isascii() and arg_text.isdecimal()):
            unit = "percent" if kind is FaultKind.LOSS else "milliseconds"
            raise ConfigError(f"fault {kind.value!r} needs a number of {unit}, as {kind.value}:20")
        arg = int(arg_text)
        if kind is FaultKind.LOSS and not 0 < arg <= 100:
            raise ConfigError(f"loss must be 1..100 percent, got {arg}")
        if kind is FaultKind.DELAY and not 0 < arg <= MAX_DELAY_MS:
            raise ConfigError(f"delay must be 1..{MAX_DELAY_MS} ms, got {arg}")
        return cls(kind, arg)


def parse_relay_fault(text: str) -> tuple[str, Fault]:
    """Parse `RELAY:KIND[:ARG]` as given to `probe lab up --fault`."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise ConfigError(f"--fault wants NAME:KIND (as se-got-wg-001:nat), got {text!r}")
    return name, Fault.parse(rest)
