"""A small hand-written TOML inventory, for fleets that are not Mullvad's (a lab, a staging site, another provider).

    # Every key of [defaults] is optional; the values shown are the defaults.
    [defaults]
    main_port = 51820
    port_ranges = []                     # inclusive; a lone port or [low, high]: [53, [4000, 33433]]
    ipv4_gateway = "10.64.0.1"           # the relays' address inside the tunnel
    ipv6_gateway = "fc00:bbbb:bbbb:bb01::1"
    labels = {}                          # e.g. { provider = "acme" }; every relay gets them

    [[relays]]
    name = "lab-wg-001"                  # required
    public_key = "base64 WireGuard key"  # required
    ipv4 = "192.0.2.10"                  # required: the address handshakes go to
    ipv6 = "2001:db8::10"                # optional
    egress_ipv4 = "198.51.100.10"        # optional: what the outside sees; default ipv4
    egress_ipv6 = "2001:db8:1::10"       # optional; default ipv6
    main_port = 51820                    # optional; default [defaults].main_port
    port_ranges = [[4000, 4100]]         # optional; replaces [defaults].port_ranges
    active = true                        # optional; inactive relays are skipped unless asked for
    location = "lab-a"                   # optional site code
    labels = { kernel = "4.15", os = "ubuntu-18.04" }   # optional; merged over [defaults].labels

It is our own format, so unlike Mullvad's lists an unknown key is an error: a misspelt `egress_ipv4` would otherwise
silently fall back to the entry address and make the egress check fail for a reason nobody can see.
"""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from probe.addresses import IPv4Field, IPv6Field
from probe.gateways import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.inventory.entries import EntryProblem, build_inventory, collect_relays
from probe.inventory.model import (
    DEFAULT_MAIN_PORT,
    Inventory,
    InventoryError,
    InventoryFormat,
    Port,
    PortRanges,
    check_label_names,
)
from probe.validation import describe_validation_error

# TOML key -> Relay field, for the keys whose names differ; the rest are the same word.
_RENAMED = {"ipv4": "ipv4_addr_in", "ipv6": "ipv6_addr_in"}
_RELAY_KEYS = (
    "name",
    "public_key",
    "ipv4",
    "ipv6",
    "egress_ipv4",
    "egress_ipv6",
    "main_port",
    "port_ranges",
    "active",
    "location",
    "labels",
)
_SOURCE_NAMES = {field: key for key, field in _RENAMED.items()}


class _Defaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    main_port: Port = DEFAULT_MAIN_PORT
    port_ranges: PortRanges = ()
    ipv4_gateway: IPv4Field = MULLVAD_IPV4_GATEWAY
    ipv6_gateway: IPv6Field = MULLVAD_IPV6_GATEWAY
    labels: dict[str, Any] = Field(default_factory=dict)


def _label_values(labels: Any, where: str) -> dict[str, str]:
    """Label values as strings; EntryProblem for a value that would not survive the trip."""
    if not isinstance(labels, Mapping):
        raise EntryProblem(where, 'must be a table, e.g. labels = { os = "debian-12" }')
    out: dict[str, str] = {}
    for key, value in labels.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int):
            out[key] = str(value)
        elif isinstance(value, float):
            # kernel = 4.10 parses as 4.1: quoting is the only way to keep what was written.
            message = f'is the number {value}; quote it ({key} = "...") or TOML drops trailing zeros (4.10 is 4.1)'
            raise EntryProblem(f"{where}.{key}", message)
        else:
            raise EntryProblem(f"{where}.{key}", f"must be a string, number or boolean, got {type(value).__name__}")
    return out


def _defaults(data: Any, source: str) -> tuple[_Defaults, dict[str, str]]:
    try:
        defaults = _Defaults.model_validate(data if data is not None else {})
        labels = check_label_names(_label_values(defaults.labels, "labels"))
    except ValidationError as e:
        found = describe_validation_error(e, model=_Defaults)
        reasons = "; ".join(f"[defaults] {where}: {message}" for where, message in found)
        raise InventoryError(f"{source}: {reasons}") from None
    except (EntryProblem, ValueError) as e:  # ValueError: a label name Prometheus would refuse
        raise InventoryError(f"{source}: [defaults] {e}") from None
    return defaults, labels


def parse_fleet_toml(data: Mapping[str, Any], *, source: str, include_inactive: bool = False) -> Inventory:
    """Relays from a hand-written TOML inventory, already decoded with tomllib."""
    unknown = sorted(set(data) - {"defaults", "relays"})
    if unknown:
        raise InventoryError(
            f"{source}: unknown top-level key {unknown[0]!r}; an inventory has [defaults] and [[relays]]"
        )
    entries = data.get("relays")
    if not isinstance(entries, list):
        raise InventoryError(f"{source}: no [[relays]] tables; not a wgprobe TOML inventory")
    defaults, default_labels = _defaults(data.get("defaults"), source)

    def convert(raw: Mapping[str, Any]) -> dict[str, Any]:
        extra = [key for key in raw if key not in _RELAY_KEYS]
        if extra:
            raise EntryProblem(extra[0], f"unknown key; a relay has {', '.join(_RELAY_KEYS)}")
        fields = {_RENAMED.get(key, key): value for key, value in raw.items()}
        fields.setdefault("main_port", defaults.main_port)
        fields.setdefault("port_ranges", defaults.port_ranges)
        fields["labels"] = {**default_labels, **_label_values(raw.get("labels", {}), "labels")}
        return fields

    collected = collect_relays(entries, convert, source_names=_SOURCE_NAMES, include_inactive=include_inactive)
    return build_inventory(
        collected,
        source=source,
        format=InventoryFormat.TOML,
        list_name="[[relays]]",
        ipv4_gateway=defaults.ipv4_gateway,
        ipv6_gateway=defaults.ipv6_gateway,
    )
