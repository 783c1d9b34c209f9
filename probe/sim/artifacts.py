"""Files a simulated fleet writes for its users, the way the lab does (probe/lab/artifacts.py): agent keys (mode
0600, kept across runs), the relay list, and a ready agent config per vantage point (`agent.toml`, `agent-2.toml`,
...). The probe reads the simulated fleet exactly as it reads production: through the inventory and config loaders.

The relays' own keys are derived from one seed (`relays.seed`, mode 0600), so a restarted fleet keeps its relays'
public keys and an agent's cached inventory stays right.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from probe.errors import ConfigError
from probe.inventory import DEFAULT_MAIN_PORT
from probe.lab.artifacts import write_private_key
from probe.sim.fleet import SimFleet
from probe.sim.plan import AgentSpec
from probe.sim.relay import Allowed
from probe.wireguard import PublicKey

SEED_FILE = "relays.seed"
MULLVAD_FILE = "relays.json"
TOML_FILE = "relays.toml"


def prepare_dir(directory: Path) -> None:
    """The fleet directory, private to its user: it holds keys and the control socket."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}") from exc
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")


def read_seed(directory: Path) -> bytes:
    """The relays' key seed, made on first use."""
    path = directory / SEED_FILE
    if path.exists():
        try:
            seed = base64.b64decode(path.read_text().strip(), validate=True)
        except (OSError, binascii.Error, ValueError):
            seed = b""
        if len(seed) != 32:
            raise ConfigError(f"{path} is not a relay key seed; remove it to make a new one (relay keys will change)")
        return seed
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(seed).decode() + "\n")
    return seed


def agent_clients(directory: Path, agents: tuple[AgentSpec, ...]) -> dict[PublicKey, Allowed]:
    """Create (or keep) every agent key and return them with the tunnel addresses the relays allow each."""
    clients: dict[PublicKey, Allowed] = {}
    for agent in agents:
        for ident in agent.identities:
            public = PublicKey.from_base64(write_private_key(directory / ident.key_file))
            clients[public] = Allowed(ident.ipv4, ident.ipv6)
    return clients


def write_inventory(directory: Path, fleet: SimFleet) -> str:
    """relays.json in Mullvad's app format, or relays.toml when relays have ports of their own; returns the name."""
    if fleet.uniform_ports:
        import json

        _write(directory / MULLVAD_FILE, json.dumps(fleet.relay_list(), indent=2) + "\n")
        return MULLVAD_FILE
    _write(directory / TOML_FILE, fleet.fleet_toml())
    return TOML_FILE


def agent_toml(
    agent: AgentSpec, fleet: SimFleet, inventory_file: str, probe: Mapping[str, float | int] | None = None
) -> str:
    """One agent's config; `probe` adds keys to its [probe] table (tests shorten the timeouts)."""
    world = fleet.world
    lines = [
        "# Written by `probe sim up`: a ready agent config for the simulated fleet in this directory.",
        "[agent]",
        f'name = "{agent.name}"',
        "",
    ]
    for ident in agent.identities:
        lines += [
            "[[identities]]",
            f'private_key_file = "{ident.key_file}"',
            f'ipv4 = "{ident.ipv4}"',
            f'ipv6 = "{ident.ipv6}"',
            "",
        ]
    lines += [
        "[inventory]",
        f'source = "{inventory_file}"',
        "",
        "[checks]",
        f'forward_target = "{world.forward_v4}"',
        f'forward_target_v6 = "{world.forward_v6}"',
        f'reflector = "{world.reflector_v4[0]}:{world.reflector_v4[1]}"',
        f'reflector_v6 = "[{world.reflector_v6[0]}]:{world.reflector_v6[1]}"',
        "",
    ]
    settings = dict(probe or {})
    if fleet.uniform_ports and fleet.main_port != DEFAULT_MAIN_PORT:
        # Mullvad's list always means 51820; the agent is told the simulated fleet's main port instead.
        settings.setdefault("main_port", fleet.main_port)
    if settings:
        lines += ["[probe]", *(f"{key} = {value!r}" for key, value in settings.items()), ""]
    return "\n".join(lines)


def write_agent_configs(
    directory: Path,
    agents: tuple[AgentSpec, ...],
    fleet: SimFleet,
    probe: Mapping[str, float | int] | None = None,
) -> list[Path]:
    inventory_file = write_inventory(directory, fleet)
    paths = []
    for agent in agents:
        path = directory / agent.config_file
        _write(path, agent_toml(agent, fleet, inventory_file, probe))
        paths.append(path)
    return paths


def _write(path: Path, text: str) -> None:
    # Written whole and renamed: an agent reloading the inventory never reads half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
