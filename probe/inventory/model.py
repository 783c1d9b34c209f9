"""What a probe needs to know about a relay, and a loaded fleet of them.

The loaders (`mullvad.py`, `fleet.py`) translate each source's own words into `Relay`; this module owns the rules a
relay must satisfy whatever it came from. A relay's name ends up in metric labels, MQTT topics and evidence file
names, so it is held to a hostname-like alphabet here, once, rather than escaped at every use.
"""

import re
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from probe.addresses import IPv4Field, IPv6Field
from probe.errors import ConfigError, UnavailableError
from probe.gateways import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.wireguard.errors import InvalidKeyError
from probe.wireguard.keys import decode_base64_key

# The full Mullvad app list is ~340 kB; a source past this, file or URL, is not a relay list and would only eat memory.
MAX_BODY = 32 * 1024 * 1024
DEFAULT_MAIN_PORT = 51820
# Relay fields that default to another field's value (see Relay._egress_defaults_to_entry).
DERIVED_FIELDS = frozenset({"egress_ipv4", "egress_ipv6"})

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")
# Labels become Prometheus label names, so they follow Prometheus' alphabet.
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InventoryError(ConfigError):
    """An inventory source is unreadable, of an unknown shape, or holds no usable relay."""


class InventoryUnavailable(UnavailableError):
    """The inventory source could not be reached (connection refused, name not found, timeout, TLS failure, HTTP
    5xx, 408 or 429): nothing can be said about the relays, so commands exit with "could not judge", not "failed"
    and not "config error"."""


class UnknownRelayError(InventoryError):
    """A relay name that the inventory does not hold; the message suggests close names."""


class InventoryFormat(StrEnum):
    MULLVAD_APP = "mullvad-app"  # api.mullvad.net/app/v1/relays
    MULLVAD_WEB = "mullvad-web"  # api.mullvad.net/www/relays/wireguard/
    TOML = "toml"  # our hand-written format for other fleets (fleet.py)


def decode_public_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 WireGuard key; ValueError saying why not (what pydantic validators raise)."""
    try:
        return decode_base64_key(text, "public")
    except InvalidKeyError as e:
        raise ValueError(str(e)) from None


def _check_public_key(text: str) -> str:
    decode_public_key(text)
    return text


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError("a relay name is letters, digits, '.', '_' and '-', starting and ending alphanumeric")
    return name


def check_label_names(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        if not _LABEL_NAME.fullmatch(key):
            raise ValueError(f"label name {key!r} is not a Prometheus label name ([A-Za-z_][A-Za-z0-9_]*)")
    return labels


def _single_ports_as_ranges(value: Any) -> Any:
    # Hand-written inventories may list a lone port as `53` rather than `[53, 53]`.
    if isinstance(value, list | tuple):
        return [[v, v] if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _check_range(port_range: tuple[int, int]) -> tuple[int, int]:
    low, high = port_range
    if low > high:
        raise ValueError(f"port range {low}-{high} is reversed: write [low, high]")
    return port_range


# strict: a port written as "51820" or `true` is a typo in the source, not something to coerce.
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
PortRange = Annotated[tuple[Port, Port], AfterValidator(_check_range)]
PortRanges = Annotated[tuple[PortRange, ...], BeforeValidator(_single_ports_as_ranges)]


class Relay(BaseModel):
    """One WireGuard relay as a probe sees it: where to send the handshake and what should come back."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    name: Annotated[str, AfterValidator(_check_name)]
    public_key: Annotated[str, AfterValidator(_check_public_key)]
    ipv4_addr_in: IPv4Field
    ipv6_addr_in: IPv6Field | None = None
    # The address the outside world should see traffic come from; on Mullvad it is the entry address.
    # _egress_defaults_to_entry fills it in; the None default only tells type checkers it may be left out, and is
    # refused by validation (validate_default) if nothing replaced it.
    egress_ipv4: IPv4Field = Field(default=None, validate_default=True)
    egress_ipv6: IPv6Field | None = None
    active: bool = True
    location: str | None = None  # site code, e.g. "se-got"
    main_port: Port = DEFAULT_MAIN_PORT
    port_ranges: PortRanges = ()  # inclusive; empty = only main_port is known to be open
    labels: Annotated[dict[str, str], AfterValidator(check_label_names)] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _egress_defaults_to_entry(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("egress_ipv4") is None and "ipv4_addr_in" in data:
            data["egress_ipv4"] = data["ipv4_addr_in"]
        if data.get("egress_ipv6") is None:
            data["egress_ipv6"] = data.get("ipv6_addr_in")
        return data

    def __hash__(self) -> int:
        # pydantic's frozen hash would hash `labels`, a dict, and fail; equal relays share these fields anyway.
        return hash((self.name, self.public_key, self.ipv4_addr_in))

    @property
    def public_key_bytes(self) -> bytes:
        return decode_public_key(self.public_key)

    def accepts_port(self, port: int) -> bool:
        """Whether the inventory says the relay listens on `port`."""
        return port == self.main_port or any(low <= port <= high for low, high in self.port_ranges)


class InventoryProblem(BaseModel):
    """One thing wrong in a source; the entry it is in was skipped, the rest loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    relay: str | None  # the entry's hostname, when it has a usable one
    index: int | None  # position in the source's relay list; None for a list-wide problem
    field: str  # in the source's own words ("pubkey" in the web list); "" for the entry as a whole
    message: str

    def __str__(self) -> str:
        if self.index is None:
            where = self.field
        else:
            # Counted from 1 for people ("entry 1" is the first relay of the list); `index` itself stays 0-based.
            number = self.index + 1
            where = f"relay {self.relay} (entry {number})" if self.relay else f"relay entry {number}"
            if self.field:
                where += f" {self.field}"
        return f"{where}: {self.message}"


class Inventory(BaseModel):
    """The relays of one source, by name, with what could not be loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    source: str
    format: InventoryFormat
    relays: tuple[Relay, ...]
    ipv4_gateway: IPv4Address = MULLVAD_IPV4_GATEWAY
    ipv6_gateway: IPv6Address = MULLVAD_IPV6_GATEWAY
    problems: tuple[InventoryProblem, ...] = ()
    # Names of relays the source marks inactive that were left out, so "unknown relay" can say why.
    inactive_skipped: tuple[str, ...] = ()

    _by_name: dict[str, Relay] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_unique(self) -> "Inventory":
        by_name: dict[str, Relay] = {}
        for relay in self.relays:
            if relay.name in by_name:
                raise ValueError(f"relay name {relay.name!r} appears twice")
            by_name[relay.name] = relay
        self._by_name = by_name
        return self

    @property
    def names(self) -> list[str]:
        return [relay.name for relay in self.relays]

    def get(self, name: str) -> Relay | None:
        return self._by_name.get(name)

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Relay names close to `name`, best first, for "unknown relay" messages."""
        import difflib  # here: only a name that is not found needs it

        return difflib.get_close_matches(name, self._by_name, n=limit, cutoff=0.6)

    def require(self, name: str) -> Relay:
        """The relay called `name`, or an UnknownRelayError that says what the user may have meant."""
        relay = self._by_name.get(name)
        if relay is not None:
            return relay
        if name in self.inactive_skipped:
            raise UnknownRelayError(
                f"relay {name} is marked inactive in {self.source}; set include_inactive = true to probe it"
            )
        close = self.suggest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownRelayError(f"unknown relay {name!r} in {self.source} ({len(self.relays)} relays){hint}")
