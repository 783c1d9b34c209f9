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
        # Hostnames the labels source has and the inventory does not (decommissioned, or a typo that leaves a relay
        # unlabelled): said, since such a relay is missing from the labels failures are grouped by.
        self.unmatched_labels: tuple[str, ...] = ()
        self._said: frozenset[str] = frozenset()

    def load(self) -> Inventory:
        """The inventory now; InventoryError (malformed) or InventoryUnavailable (cannot fetch) otherwise, from the
        labels source as from the inventory: a half-labelled fleet would group failures wrongly."""
        inventory = self.source.load()
        if self.section.labels is None:
            return inventory
        # Here: most inventories have no labels source.
        from probe.inventory.labels import load_labels, merge_labels, unmatched_hosts

        labels = load_labels(self.section.labels, timeout=self.timeout)
        self.label_problems = labels.problems
        self.unmatched_labels = tuple(unmatched_hosts(inventory, labels.labels))
        return merge_labels(inventory, labels.labels)

    def label_lines(self) -> list[str]:
        """What is wrong with the labels of the last load, one line each: entries skipped, then the hostnames the
        inventory does not have (one line, the first ten named)."""
        lines = list(self.label_problems)
        if self.unmatched_labels:
            shown = ", ".join(self.unmatched_labels[:10])
            more = f" and {len(self.unmatched_labels) - 10} more" if len(self.unmatched_labels) > 10 else ""
            lines.append(f"labels for {len(self.unmatched_labels)} host(s) not in the inventory: {shown}{more}")
        return lines

    def new_label_lines(self) -> list[str]:
        """`label_lines` not already returned by an earlier call: a service reloading every few minutes says each
        problem once, and again only after it was gone."""
        lines = self.label_lines()
        new = [line for line in lines if line not in self._said]
        self._said = frozenset(lines)
        return new
