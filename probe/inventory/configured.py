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

    def unmatched_line(self) -> str | None:
        """The hostnames of the last load's labels that the inventory does not have, in one line (ten named)."""
        if not self.unmatched_labels:
            return None
        shown = ", ".join(self.unmatched_labels[:10])
        more = f" and {len(self.unmatched_labels) - 10} more" if len(self.unmatched_labels) > 10 else ""
        return f"labels for {len(self.unmatched_labels)} host(s) not in the inventory: {shown}{more}"

    def skipped(self, inventory: Inventory) -> list[tuple[str, str]]:
        """What the load that returned `inventory` left out, as (log event, line) pairs for the services' log: its
        relay entries that did not validate, then its labels', then the labelled hosts it does not have (`probe
        server` prints the same as warnings). Without them a relay the agent never probes, or whose results the
        aggregator drops as unknown_server, or that a typo left unlabelled, goes unsaid."""
        unmatched = self.unmatched_line()
        return [
            *entry_problems(inventory),
            *(("labels_entry_skipped", line) for line in self.label_problems),
            *([("labels_host_not_in_inventory", unmatched)] if unmatched else []),
        ]


def entry_problems(inventory: Inventory) -> list[tuple[str, str]]:
    """The relay entries an inventory left out, as `ConfiguredInventory.skipped` gives them (no labels source)."""
    return [("inventory_entry_skipped", str(problem)) for problem in inventory.problems]
