"""The aggregator's shell: the tasks around the sans-I/O store that `probe aggregator` and `probe serve` share.

- `judging`: once the first burst of retained messages is in (the subscriber's `settled`; at once for the
  in-process bus), the store judges every second, and every health change is logged, whoever's call found it.
- `following_inventory`: the inventory (with its labels) is loaded again every `refresh_seconds` and on SIGHUP;
  a failed load keeps the last good one and says so. `probe serve` runs its agent's loads instead, each handed to
  `adopt`: one load and one log line per reload, not one from each.
"""

from __future__ import annotations

import asyncio

from agents.agent import wait_event
from agents.inventory import say_skipped
from agents.log import Log
from probe.aggregator.records import AgentChange, HealthChange
from probe.aggregator.store import ResultStore
from probe.errors import WgProbeError
from probe.inventory import Inventory
from probe.inventory.configured import ConfiguredInventory

JUDGE_EVERY = 1.0  # seconds: staleness and changes show within a second


class AggregatorShell:
    def __init__(self, store: ResultStore, source: ConfiguredInventory, log: Log) -> None:
        self.store = store
        self.source = source
        self.log = log
        self._reload = asyncio.Event()

    def reload(self) -> None:
        self._reload.set()

    async def judging(self, settled: asyncio.Event) -> None:
        await settled.wait()
        self.log.info("judging", servers=len(self.store.servers), agents=len(self.store.agents))
        while True:
            self.store.refresh()
            for change in self.store.drain_changes():
                if isinstance(change, HealthChange):
                    self.log.event(
                        "warning" if change.state == "down" else "info",
                        "server_health",
                        server=change.server,
                        state=str(change.state),
                        was=str(change.previous),
                        reason=str(change.reason or ""),
                    )
                elif isinstance(change, AgentChange):
                    self.log.info("agent_state", agent=change.agent, state=str(change.state), was=str(change.previous))
                elif change.off:
                    self.log.warning(
                        "agent_clock_off",
                        agent=change.agent,
                        offset_seconds=round(change.offset, 1),
                        hint="its clock (or the delivery of its messages) is off by this much against this host's: "
                        "results are judged by the times they carry, and commands expire by the agent's clock",
                    )
                else:
                    self.log.info("agent_clock_ok", agent=change.agent, offset_seconds=round(change.offset, 1))
            await asyncio.sleep(JUDGE_EVERY)

    def adopt(self, inventory: Inventory | None) -> None:
        """A load's outcome for the store: the new inventory, or None when the load failed (the last good one stays
        in use, and wgprobe_inventory_ok is 0 until a load succeeds)."""
        if inventory is None:
            self.store.inventory_ok = False
        else:
            self.store.set_inventory(inventory)

    async def following_inventory(self) -> None:
        while True:
            await wait_event(self._reload, self.source.section.refresh_seconds)
            asked = self._reload.is_set()  # a SIGHUP is answered in the log even when nothing changed
            self._reload.clear()
            try:
                inventory = await asyncio.to_thread(self.source.load)
            except WgProbeError as exc:
                self.log.warning("inventory_kept", reason=str(exc), relays=len(self.store.inventory.relays))
                self.adopt(None)
                continue
            say_skipped(self.source, inventory, self.log)
            before = set(self.store.inventory.names)
            self.adopt(inventory)
            after = set(inventory.names)
            if before != after:
                added, removed = len(after - before), len(before - after)
                self.log.info("inventory_changed", relays=len(after), added=added, removed=removed)
            elif asked:
                self.log.info("inventory_reloaded", relays=len(after), changed=False)
