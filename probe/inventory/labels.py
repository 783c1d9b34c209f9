"""Relay labels from a second source, keyed by hostname, merged into an inventory.

Public relay lists carry no kernel or OS version; configuration management knows them. It writes a file (or serves
a URL) that maps hostnames to labels, and the labels land on the inventory's relays, where the fleet view counts
which values the failing relays share:

    {"se-got-wg-001": {"kernel": "5.15.0-91", "os": "ubuntu-22.04"}, "se-got-wg-002": {...}}     (JSON)

    ["se-got-wg-001"]                                                                           (TOML)
    kernel = "5.15.0-91"
    os = "ubuntu-22.04"

A bad entry is reported and skipped, the rest load (as in inventories). Labels here win over the inventory's own
for the same name: the operator's own records are the more specific source. Pure functions except `load_labels`.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from probe.inputs import InputError, read_regular_file
from probe.inventory.model import Inventory, InventoryError, check_label_names
from probe.inventory.source import is_url

MAX_LABELS_PER_RELAY = 32
MAX_LABEL_VALUE = 256
_MAX_FILE = 32 * 1024 * 1024


class RelayLabels(NamedTuple):
    """Labels by hostname, and the entries that were skipped (one line each, naming the host and the label)."""

    source: str
    labels: dict[str, dict[str, str]]
    problems: tuple[str, ...] = ()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # Prometheus convention, as the Mullvad loader writes owned=false
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f'is the number {value}; quote it ("{value}") so 4.10 does not become 4.1')
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_LABEL_VALUE:
        raise ValueError(f"is longer than {MAX_LABEL_VALUE} characters")
    return value


def _relay_labels(host: str, raw: Any) -> tuple[dict[str, str], list[str]]:
    if not isinstance(raw, Mapping):
        return {}, [f'{host}: must be a table of labels, e.g. {{"kernel": "5.15"}}']
    if len(raw) > MAX_LABELS_PER_RELAY:
        return {}, [f"{host}: {len(raw)} labels; at most {MAX_LABELS_PER_RELAY} per relay"]
    labels: dict[str, str] = {}
    problems: list[str] = []
    for key, value in raw.items():
        try:
            check_label_names({key: ""})
            labels[key] = _value(value)
        except ValueError as e:
            problems.append(f"{host}: labels.{key}: {e}")
    return labels, problems


def parse_labels(content: str | bytes, *, source: str, suffix: str = "") -> RelayLabels:
    """Labels by hostname from JSON or TOML content (the suffix picks which to try first); InventoryError if the
    content as a whole is unusable."""
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InventoryError(f"{source}: not UTF-8 text ({e})") from None
    data: Any = None
    errors: list[str] = []
    for kind in ("toml", "json") if suffix.lower() == ".toml" else ("json", "toml"):
        try:
            data = json.loads(content) if kind == "json" else tomllib.loads(content)
            break
        except (ValueError, tomllib.TOMLDecodeError) as e:  # JSONDecodeError is a ValueError
            errors.append(f"{kind.upper()}: {e}")
        except RecursionError:
            errors.append(f"{kind.upper()}: nested too deeply")
    else:
        raise InventoryError(f"{source}: labels are neither JSON nor TOML ({'; '.join(errors)})")
    if not isinstance(data, Mapping):
        raise InventoryError(f"{source}: labels must be an object of hostname -> labels, got a {type(data).__name__}")
    labels: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for host, raw in data.items():
        host_labels, host_problems = _relay_labels(str(host), raw)
        problems += host_problems
        if host_labels:
            labels[str(host)] = host_labels
    return RelayLabels(source=source, labels=labels, problems=tuple(problems))


def merge_labels(inventory: Inventory, labels: Mapping[str, Mapping[str, str]]) -> Inventory:
    """The inventory with each relay's labels merged with `labels[relay.name]`, which wins on a clash."""
    relays = tuple(
        relay.model_copy(update={"labels": {**relay.labels, **labels[relay.name]}}) if relay.name in labels else relay
        for relay in inventory.relays
    )
    # Rebuilt rather than model_copy'd: the inventory's name index is made by its validator.
    return Inventory.model_validate({**dict(inventory), "relays": relays})


def unmatched_hosts(inventory: Inventory, labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Hostnames that have labels but are not in the inventory (decommissioned, or a typo), for one log line."""
    return sorted(host for host in labels if inventory.get(host) is None)


def load_labels(location: str, *, timeout: float = 10.0) -> RelayLabels:
    """Labels from a file path or an http(s) URL."""
    if is_url(location):
        from probe.inventory.fetch import fetch

        result = fetch(location, etag=None, timeout=timeout)
        suffix = ".toml" if "toml" in result.content_type else ".json" if "json" in result.content_type else ""
        return parse_labels(result.body, source=location, suffix=suffix)
    path = Path(location)
    try:
        content = read_regular_file(path, max_bytes=_MAX_FILE)  # a FIFO or /dev/zero is refused, not read
    except InputError as e:
        raise InventoryError(f"{path}: cannot read labels: {e}") from None
    return parse_labels(content, source=str(path), suffix=path.suffix)
