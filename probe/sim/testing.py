"""A simulated fleet with ready agent configs, for tests of anything that probes (the agent, the aggregator, the CLI).

    async with agent_fleet(tmp_path, relays=3, faults=[("se-got-wg-002", SimFault.parse("nat"))]) as sim:
        prober = Prober(sim.config(), sim.inventory())
        result = await prober.probe_relay(sim.inventory().require("se-got-wg-002"))
        sim.fleet.heal_relay("se-got-wg-002")

The configs are the files `probe sim up` writes, read back through the real loaders, with shorter probe timeouts by
default so failing paths end quickly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.agent_config import AgentConfig, load_config
from probe.inventory import Inventory, load_inventory
from probe.sim import artifacts
from probe.sim.faults import SimFault
from probe.sim.fleet import SimFleet
from probe.sim.plan import DEFAULT_IDENTITIES, AgentSpec, plan_agents

# Loopback round trips are well under a millisecond: half a second is long, and a failing path ends in it.
FAST_PROBE: Mapping[str, float | int] = {"timeout": 0.5, "handshake_timeout": 0.3, "handshake_attempts": 2}


@dataclass
class SimSetup:
    fleet: SimFleet
    directory: Path
    agents: tuple[AgentSpec, ...]
    config_paths: list[Path]

    def config(self, agent: int = 1) -> AgentConfig:
        return load_config(self.config_paths[agent - 1])

    def inventory(self, agent: int = 1) -> Inventory:
        return load_inventory(self.config(agent).inventory.source)


@asynccontextmanager
async def agent_fleet(
    directory: Path,
    relays: int = 3,
    *,
    agents: int = 1,
    identities: int = DEFAULT_IDENTITIES,
    faults: Iterable[tuple[str, SimFault]] = (),
    probe: Mapping[str, float | int] | None = FAST_PROBE,
    **fleet_options: Any,
) -> AsyncIterator[SimSetup]:
    """A started `SimFleet` whose relays accept the agents' keys, with keys and configs written to `directory`."""
    artifacts.prepare_dir(directory)
    specs = plan_agents(agents, identities)
    fleet = SimFleet(
        relays,
        clients=artifacts.agent_clients(directory, specs),
        faults=faults,
        seed=artifacts.read_seed(directory),
        **fleet_options,
    )
    async with fleet:
        paths = artifacts.write_agent_configs(directory, specs, fleet, probe)
        yield SimSetup(fleet, directory, specs, paths)
