"""The inventory as the services (`probe agent`, `probe aggregator`, `probe serve`) load it first: waited for while
the source cannot be fetched, and what it left out said in the log (each reload says it again)."""

from __future__ import annotations

import asyncio

from agents.agent import wait_event
from agents.log import Log
from probe.errors import UnavailableError
from probe.inventory import Inventory
from probe.inventory.configured import ConfiguredInventory

FIRST_LOAD_BACKOFF = (2.0, 60.0)  # seconds: first and longest wait between start-up attempts to load the inventory


async def first_inventory(source: ConfiguredInventory, log: Log, stopping: asyncio.Event) -> Inventory | None:
    """The inventory to start with. A source that cannot be fetched is tried again with backoff until it can (or
    the service is told to stop): a service should outlast its inventory's outage. A malformed one is a config
    error, raised: nothing good comes of waiting for it."""
    delay, longest = FIRST_LOAD_BACKOFF
    while not stopping.is_set():
        try:
            inventory = await asyncio.to_thread(source.load)
        except UnavailableError as exc:
            log.warning("inventory_unavailable", reason=str(exc), retry_seconds=delay)
        else:
            say_skipped(source, inventory, log)
            return inventory
        await wait_event(stopping, delay)
        delay = min(longest, delay * 2)
    return None


def say_skipped(source: ConfiguredInventory, inventory: Inventory, log: Log) -> None:
    # A relay left out of the inventory is absent from every view, and its results are dropped as unknown_server:
    # the log says which entry, and why, at every load (as `probe server` warns).
    for event, problem in source.skipped(inventory):
        log.warning(event, problem=problem)
