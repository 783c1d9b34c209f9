"""The inventory an `[inventory]` table describes: its source, reloaded with an ETag when it is a URL, with labels
from a second source merged in (probe/inventory/labels.py). The agent, the aggregator and the CLI all load it here,
so a relay carries the same labels in every result and on every page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.inventory.model import Inventory
from probe.inventory.source import InventorySource

if TYPE_CHECKING:
    from probe.config import InventorySection

FETCH_TIMEOUT = 10.0  # one deadline for a whole HTTP fetch (see probe/inventory/fetch.py)


class ConfiguredInventory:
    def __init__(self, section: InventorySection, *, timeout: float = FETCH_TIMEOUT) -> None:
        self.section = section
        self.source = InventorySource(section.source, include_inactive=section.include_inactive, timeout=timeout)
        self.timeout = timeout
        self.label_problems: tuple[str, ...] = ()

    def load(self) -> Inventory:
        """The inventory now; InventoryError (malformed) or InventoryUnavailable (cannot fetch) otherwise, from the
        labels source as from the inventory: a half-labelled fleet would group failures wrongly."""
        inventory = self.source.load()
        if self.section.labels is None:
            return inventory
        from probe.inventory.labels import load_labels, merge_labels  # here: most inventories have no labels source

        labels = load_labels(self.section.labels, timeout=self.timeout)
        self.label_problems = labels.problems
        return merge_labels(inventory, labels.labels)
