"""Which servers a `probe verify` is about, and the units its options are given in. Errors are ConfigErrors (exit 2)
that name every bad value at once, with close names suggested, so a pipeline's typo is fixed in one go."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from pathlib import Path

from probe.errors import ConfigError
from probe.inputs import InputError, read_regular_file
from probe.inventory import Inventory, Relay
from probe.term import clean

SERVERS_FILE_MAX_BYTES = 1 << 20
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str, *, what: str, longest: float = float("inf")) -> float:
    """Seconds from "90s", "10m", "1h30m", "250ms", "1d" (or plain seconds, "30"), at most `longest`."""
    stripped = text.strip().lower()
    try:
        seconds = float(stripped)
    except ValueError:
        parts = _DURATION.findall(stripped)
        if not parts or "".join(number + unit for number, unit in parts) != stripped:
            raise ConfigError(
                f"{what}: {clean(text[:40])!r} is not a duration (as 90s, 10m, 1h, 1h30m, 250ms)"
            ) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise ConfigError(f"{what}: {clean(text[:40])!r} is not a finite duration")
    if seconds <= 0:
        raise ConfigError(f"{what}: must be longer than 0, got {clean(text[:40])!r}")
    if seconds > longest:
        raise ConfigError(f"{what}: {clean(text[:40])!r} is longer than the {_spoken(longest)} it may be here")
    return seconds


def _spoken(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_ratio(text: str, *, what: str) -> float:
    """A share of 0..1, as 0.05 or 5%."""
    stripped = text.strip()
    try:
        value = float(stripped[:-1]) / 100 if stripped.endswith("%") else float(stripped)
    except ValueError:
        raise ConfigError(f"{what}: {clean(text[:40])!r} is not a share (as 0.05 or 5%)") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"{what}: must be between 0 and 1 (or 0% and 100%), got {clean(text[:40])!r}")
    return value


def read_servers_file(path: Path) -> list[str]:
    """One server name per line; `#` starts a comment; blank lines are skipped."""
    try:
        data = read_regular_file(path, max_bytes=SERVERS_FILE_MAX_BYTES)
    except InputError as exc:
        raise ConfigError(f"--servers-file {clean(path)}: {exc}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"--servers-file {clean(path)}: not UTF-8 text") from None
    names = []
    for line in text.splitlines():
        name = line.partition("#")[0].strip()
        if name:
            names.append(name)
    if not names:
        raise ConfigError(f"--servers-file {clean(path)}: names no server (one name per line, # for comments)")
    return names


def in_location(relay: Relay, code: str) -> bool:
    """Prefix match on Mullvad's location codes, whole parts only: "se" and "se-got" match "se-got", "s" does not."""
    site = relay.location or ""
    return site == code or site.startswith(code + "-")


def select_servers(
    inventory: Inventory, names: Sequence[str], locations: Sequence[str], files: Sequence[Path]
) -> list[Relay]:
    """The relays named, those at the locations and those listed in the files, each once, in that order."""
    wanted = list(names)
    for path in files:
        wanted += read_servers_file(path)
    unknown = [name for name in dict.fromkeys(wanted) if inventory.get(name) is None]
    if unknown:
        raise ConfigError(_unknown_message(inventory, unknown))
    chosen: dict[str, Relay] = {}
    for name in wanted:
        relay = inventory.get(name)
        if relay is not None:
            chosen.setdefault(relay.name, relay)
    for code in locations:
        matched = [relay for relay in inventory.relays if in_location(relay, code)]
        if not matched:
            raise ConfigError(_location_message(inventory, code))
        for relay in matched:
            chosen.setdefault(relay.name, relay)
    if not chosen:
        raise ConfigError("name the servers to verify: SERVER..., --location CODE or --servers-file FILE")
    return list(chosen.values())


def _unknown_message(inventory: Inventory, unknown: list[str]) -> str:
    parts = []
    for name in unknown[:20]:
        if name in inventory.inactive_skipped:
            parts.append(f"{clean(name)!r} (marked inactive; include_inactive = true probes it)")
            continue
        close = inventory.suggest(name)
        parts.append(f"{clean(name[:80])!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
    source = clean(inventory.source)
    return f"unknown server(s) in {source} ({len(inventory.relays)} relays): {', '.join(parts)}{more}"


def _location_message(inventory: Inventory, code: str) -> str:
    sites = sorted({relay.location for relay in inventory.relays if relay.location})
    close = difflib.get_close_matches(code, sites, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; locations: {', '.join(sites[:20]) or 'none'}"
    return f"--location {clean(code[:40])!r}: no relay of {clean(inventory.source)} is there{hint}"
