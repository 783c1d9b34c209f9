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

    def skipped(self, inventory: Inventory) -> list[tuple[str, str]]:
        """What the load that returned `inventory` left out, as (log event, line) pairs for the services' log: its
        relay entries that did not validate, then its labels' (`probe server` prints the same as warnings). Without
        them a relay the agent never probes, or whose results the aggregator drops as unknown_server, goes unsaid."""
        return [*entry_problems(inventory), *(("labels_entry_skipped", line) for line in self.label_problems)]


def entry_problems(inventory: Inventory) -> list[tuple[str, str]]:
    """The relay entries an inventory left out, as `ConfiguredInventory.skipped` gives them (no labels source)."""
    return [("inventory_entry_skipped", str(problem)) for problem in inventory.problems]
