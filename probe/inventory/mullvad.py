"""Mullvad's two public relay lists, translated into `Relay`s.

- The app list (api.mullvad.net/app/v1/relays): `{"locations": {...}, "wireguard": {"port_ranges": [[lo, hi], ...],
  "ipv4_gateway", "ipv6_gateway", "relays": [{hostname, location, active, owned, provider, ipv4_addr_in,
  ipv6_addr_in, public_key, weight, include_in_country, ...}]}, "openvpn": ..., "bridge": ...}`. This is the list
  the Mullvad app connects with, and the only one that says which ports the relays listen on.
- The web list (api.mullvad.net/www/relays/wireguard/): a flat array of `{hostname, country_code, country_name,
  city_code, city_name, active, owned, provider, ipv4_addr_in, ipv6_addr_in (may be null), pubkey, type,
  status_messages, ...}`.

Both gain fields over time (stboot, daita, features, shadowsocks_extra_addr_in, ...): every field not read here is
ignored, never an error.
"""

import functools
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from probe.addresses import address_text
from probe.gateways import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.inventory.entries import build_inventory, collect_relays
from probe.inventory.model import (
    DEFAULT_MAIN_PORT,
    Inventory,
    InventoryError,
    InventoryFormat,
    InventoryProblem,
    PortRange,
)
from probe.validation import describe_validation_error

# Relay field -> the list's own name for it, so problems name what the user sees in the JSON.
APP_NAMES = {"name": "hostname", "public_key": "public_key"}
WEB_NAMES = {"name": "hostname", "public_key": "pubkey"}

# Copied into Relay.labels when present: facts worth slicing results by (a provider's network, rented vs owned).
_LABEL_FIELDS = ("provider", "owned", "stboot", "daita")


@functools.cache
def _port_range_adapter() -> TypeAdapter[tuple[int, int]]:
    # Built on first use: building a validator costs milliseconds that an import should not pay.
    return TypeAdapter(PortRange)


def port_range(item: Any) -> tuple[int, int]:
    """`item` validated as a PortRange. A well-formed [low, high] (what every real list holds) is taken as it is:
    building pydantic's validator for it was 4 ms of `probe server`'s cold start. Anything else goes through that
    validator, which words the problem; both ways agree on every input (tests/unit/test_inventory.py)."""
    if type(item) is list and len(item) == 2:
        low, high = item
        if type(low) is int and type(high) is int and 1 <= low <= high <= 65535:
            return (low, high)
    return _port_range_adapter().validate_python(item)


_A = TypeVar("_A", IPv4Address, IPv6Address)


def _label_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"  # Prometheus convention; str(True) would give "True"
    if isinstance(value, str | int):
        return str(value)
    return None


def _labels(raw: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, value in [*((k, raw.get(k)) for k in _LABEL_FIELDS), *extra.items()]:
        text = _label_value(value)
        if text is not None:
            labels[key] = text
    return labels


def _addresses(raw: Mapping[str, Any], *, key: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("hostname", "ipv4_addr_in", "ipv6_addr_in", "active"):
        if name in raw:
            fields["name" if name == "hostname" else name] = raw[name]
    if fields.get("ipv6_addr_in") == "":  # "no IPv6" is written both as null and as ""
        fields["ipv6_addr_in"] = None
    if key in raw:
        fields["public_key"] = raw[key]
    return fields


def _port_ranges(value: Any) -> tuple[list[tuple[int, int]], list[InventoryProblem]]:
    # The ranges are list-wide: a bad one is dropped and reported, the good ones and every relay still load.
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [InventoryProblem(relay=None, index=None, field="wireguard.port_ranges", message="not a list")]
    ranges: list[tuple[int, int]] = []
    problems: list[InventoryProblem] = []
    for i, item in enumerate(value):
        try:
            ranges.append(port_range(item))
        except ValidationError as e:
            for where, message in describe_validation_error(e):
                field = f"wireguard.port_ranges[{i}]" + (f".{where}" if where and not where.startswith("[") else where)
                problems.append(InventoryProblem(relay=None, index=None, field=field, message=message))
    return ranges, problems


def _gateway(kind: type[_A], value: Any, default: _A, field: str, problems: list[InventoryProblem]) -> _A:
    if value is None:
        return default
    try:
        return kind(address_text(value))
    except ValueError as e:
        message = f"{e}; using {default}"
        problems.append(InventoryProblem(relay=None, index=None, field=field, message=message))
        return default


def parse_app_list(data: Mapping[str, Any], *, source: str, include_inactive: bool = False) -> Inventory:
    """Relays from the app list (/app/v1/relays), already decoded from JSON."""
    wireguard = data.get("wireguard")
    if not isinstance(wireguard, Mapping):
        raise InventoryError(f"{source}: 'wireguard' is not an object; not a Mullvad app relay list")
    entries = wireguard.get("relays")
    if not isinstance(entries, list):
        raise InventoryError(f"{source}: wireguard.relays is missing or not a list")
    ranges, problems = _port_ranges(wireguard.get("port_ranges"))
    ipv4_gateway = _gateway(
        IPv4Address, wireguard.get("ipv4_gateway"), MULLVAD_IPV4_GATEWAY, "wireguard.ipv4_gateway", problems
    )
    ipv6_gateway = _gateway(
        IPv6Address, wireguard.get("ipv6_gateway"), MULLVAD_IPV6_GATEWAY, "wireguard.ipv6_gateway", problems
    )
    locations = data.get("locations")
    locations = locations if isinstance(locations, Mapping) else {}

    def convert(raw: Mapping[str, Any]) -> dict[str, Any]:
        fields = _addresses(raw, key="public_key")
        if "location" in raw:
            fields["location"] = raw["location"]  # a non-string is left for Relay to report
        place = locations.get(raw["location"]) if isinstance(raw.get("location"), str) else None
        place = place if isinstance(place, Mapping) else {}
        fields["labels"] = _labels(raw, {"country": place.get("country"), "city": place.get("city")})
        fields["main_port"] = DEFAULT_MAIN_PORT
        fields["port_ranges"] = ranges
        return fields

    collected = collect_relays(entries, convert, source_names=APP_NAMES, include_inactive=include_inactive)
    return build_inventory(
        collected,
        source=source,
        format=InventoryFormat.MULLVAD_APP,
        list_name="wireguard.relays",
        ipv4_gateway=ipv4_gateway,
        ipv6_gateway=ipv6_gateway,
        problems=problems,
    )


def parse_web_list(data: Sequence[Any], *, source: str, include_inactive: bool = False) -> Inventory:
    """Relays from the web list (/www/relays/wireguard/ or /www/relays/all/), already decoded from JSON.

    The web list says nothing about ports. Relays get the main port 51820 and no port ranges, rather than a copy of
    today's app-list ranges: a guessed range would have every agent probe ports nobody promised, and report the
    fleet down the day Mullvad changes them. Use the app list to probe the extended ranges.
    """

    def convert(raw: Mapping[str, Any]) -> dict[str, Any] | None:
        if raw.get("type", "wireguard") != "wireguard":
            return None
        fields = _addresses(raw, key="pubkey")
        country, city = raw.get("country_code"), raw.get("city_code")
        if isinstance(country, str) and isinstance(city, str):
            fields["location"] = f"{country}-{city}"
        fields["labels"] = _labels(raw, {"country": raw.get("country_name"), "city": raw.get("city_name")})
        fields["main_port"] = DEFAULT_MAIN_PORT
        return fields

    collected = collect_relays(data, convert, source_names=WEB_NAMES, include_inactive=include_inactive)
    return build_inventory(
        collected,
        source=source,
        format=InventoryFormat.MULLVAD_WEB,
        list_name="the web relay list",
        ipv4_gateway=MULLVAD_IPV4_GATEWAY,
        ipv6_gateway=MULLVAD_IPV6_GATEWAY,
    )
