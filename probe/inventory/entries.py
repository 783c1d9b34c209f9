"""Turning a source's relay entries into `Relay`s one entry at a time, shared by every loader.

Mullvad adds fields to its lists and now and then publishes a half-provisioned relay. One bad entry must not take the
fleet's monitoring down with it (DESIGN.md), so each entry is validated alone and what is wrong with it becomes an
`InventoryProblem` in the source's own words (`pubkey`, not `public_key`, for the web list), and the entry is skipped.
"""

from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pydantic import ValidationError

from probe.inventory.model import (
    DERIVED_FIELDS,
    Inventory,
    InventoryError,
    InventoryFormat,
    InventoryProblem,
    Relay,
)
from probe.validation import describe_validation_error


class EntryProblem(Exception):
    """Raised by a loader's converter for a fault the Relay model cannot see, such as an unknown TOML key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# A loader's converter: one raw entry -> keyword arguments for Relay, or None for an entry that is not a WireGuard
# relay at all (the web list's /all/ variant mixes in OpenVPN servers) and is skipped without a problem.
Convert = Callable[[Mapping[str, Any]], dict[str, Any] | None]


class Collected:
    """What `collect_relays` gathered. A plain class: a dataclass is ~1 ms of start-up on CPython 3.11."""

    __slots__ = ("entries", "inactive", "problems", "relays")

    def __init__(self) -> None:
        self.relays: list[Relay] = []
        self.problems: list[InventoryProblem] = []
        self.inactive: list[str] = []
        self.entries = 0  # WireGuard entries seen, loaded or not


def collect_relays(
    entries: Sequence[Any],
    convert: Convert,
    *,
    source_names: Mapping[str, str],
    include_inactive: bool,
) -> Collected:
    """Validate each entry alone; keep the good ones, report the rest."""
    out = Collected()
    first_index: dict[str, int] = {}
    name_key = source_names.get("name", "name")
    for index, raw in enumerate(entries):
        if not isinstance(raw, Mapping):
            out.entries += 1
            out.problems.append(_problem(None, index, "", f"expected an object, got {type(raw).__name__}"))
            continue
        name = raw.get(name_key) if isinstance(raw.get(name_key), str) else None
        try:
            fields = convert(raw)
        except EntryProblem as e:
            out.entries += 1
            out.problems.append(_problem(name, index, e.field, e.message))
            continue
        if fields is None:
            continue
        out.entries += 1
        # Checked before validation: a relay nobody will probe is not worth a problem report.
        if fields.get("active") is False and not include_inactive:
            out.inactive.append(name or f"#{index}")
            continue
        try:
            relay = Relay.model_validate(fields)
        except ValidationError as e:
            derived = DERIVED_FIELDS - set(fields)
            for where, message in describe_validation_error(e, source_names=source_names, derived=derived):
                out.problems.append(_problem(name, index, where, message))
            continue
        if not relay.active and not include_inactive:  # `active` written as "false" or 0
            out.inactive.append(relay.name)
            continue
        if relay.name in first_index:
            message = f"duplicate: entry {first_index[relay.name] + 1} has the same name; this entry was skipped"
            out.problems.append(_problem(name, index, name_key, message))
            continue
        first_index[relay.name] = index
        out.relays.append(relay)
    return out


def _problem(relay: str | None, index: int | None, field: str, message: str) -> InventoryProblem:
    return InventoryProblem(relay=relay, index=index, field=field, message=message)


def build_inventory(
    collected: Collected,
    *,
    source: str,
    format: InventoryFormat,
    list_name: str,
    ipv4_gateway: IPv4Address,
    ipv6_gateway: IPv6Address,
    problems: Sequence[InventoryProblem] = (),
) -> Inventory:
    """The Inventory, or an InventoryError when not one relay is usable: probing nothing is never what was meant."""
    all_problems = [*problems, *collected.problems]
    if not collected.relays:
        if collected.entries == 0:
            reason = f"{list_name} holds no WireGuard relays"
        elif len(collected.inactive) == collected.entries:
            reason = (
                f"all {collected.entries} relays in {list_name} are inactive "
                "(set include_inactive = true to load them anyway)"
            )
        else:
            shown = "; ".join(str(p) for p in all_problems[:3])
            more = f" (and {len(all_problems) - 3} more)" if len(all_problems) > 3 else ""
            reason = f"no usable relay among {collected.entries} entries in {list_name}: {shown}{more}"
        raise InventoryError(f"{source}: {reason}")
    return Inventory(
        source=source,
        format=format,
        relays=tuple(collected.relays),
        ipv4_gateway=ipv4_gateway,
        ipv6_gateway=ipv6_gateway,
        problems=tuple(all_problems),
        inactive_skipped=tuple(collected.inactive),
    )
