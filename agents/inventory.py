"""The inventory as the services (`probe agent`, `probe aggregator`, `probe serve`) load it: the first load waited
for while the source cannot be fetched, and the labels source's problems said in the log, each once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
            return await asyncio.to_thread(loader(source, log))
        except UnavailableError as exc:
            log.warning("inventory_unavailable", reason=str(exc), retry_seconds=delay)
        await wait_event(stopping, delay)
        delay = min(longest, delay * 2)
    return None


def loader(source: ConfiguredInventory, log: Log) -> Callable[[], Inventory]:
    """`source.load`, saying what is wrong with its labels (entries skipped, hostnames the inventory lacks) once
    each: a typo in configuration management's labels file otherwise leaves a relay unlabelled without a word."""

    def load() -> Inventory:
        inventory = source.load()
        for line in source.new_label_lines():
            log.warning("labels_problem", problem=line)
        return inventory

    return load
