"""Relay inventories: Mullvad's app and web relay lists and a hand-written TOML format, loaded into `Relay`s.

    inventory = load_inventory("relays.json")           # or an http(s) URL; format recognised from the content
    relay = inventory.require("se-got-wg-001")          # UnknownRelayError suggests close names
    # InventoryError (a ConfigError): the source is wrong; InventoryUnavailable: it could not be reached
    for problem in inventory.problems: ...              # entries that were skipped, and why

Importing this package imports no HTTP library; `InventorySource` fetches lazily.
"""

from probe.gateways import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.inventory.model import (
    DEFAULT_MAIN_PORT,
    Inventory,
    InventoryError,
    InventoryFormat,
    InventoryProblem,
    InventoryUnavailable,
    Relay,
    UnknownRelayError,
    decode_public_key,
)
from probe.inventory.source import InventorySource, is_url, load_inventory, parse_inventory

__all__ = [
    "DEFAULT_MAIN_PORT",
    "MULLVAD_IPV4_GATEWAY",
    "MULLVAD_IPV6_GATEWAY",
    "Inventory",
    "InventoryError",
    "InventoryFormat",
    "InventoryProblem",
    "InventorySource",
    "InventoryUnavailable",
    "Relay",
    "UnknownRelayError",
    "decode_public_key",
    "is_url",
    "load_inventory",
    "parse_inventory",
]
