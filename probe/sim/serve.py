"""`probe sim up`: run a simulated fleet in the foreground until SIGTERM or SIGINT, then exit 0.

One process, one event loop, one task tree: the relays' and the reflector's sockets and the control server all wait
in the loop's selector. Start-up writes the keys, the relay list and the agent configs, then prints a line starting
with `ready`, which is the moment scripts and tests may start probing (no polling for files needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probe.errors import ConfigError
from probe.sim import artifacts, control
from probe.sim.faults import SimFault
from probe.sim.fleet import SimFleet
from probe.sim.plan import (
    DEFAULT_IDENTITIES,
    DEFAULT_MAIN_PORT,
    DEFAULT_PORT_RANGES,
    V6Mode,
    address_text,
    plan_agents,
)
from probe.sim.relay import SimRelay

STATE_FILE = "sim.json"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class UpOptions:
    directory: Path
    relays: int = 3
    faults: Sequence[tuple[str, SimFault]] = ()
    agents: int = 1
    identities: int = DEFAULT_IDENTITIES
    v6: V6Mode = V6Mode.MAPPED
    block: int | None = None
    main_port: int = DEFAULT_MAIN_PORT
    port_ranges: tuple[tuple[int, int], ...] = field(default=DEFAULT_PORT_RANGES)


def run(options: UpOptions) -> None:
    asyncio.run(serve(options))


async def serve(options: UpOptions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _SIGNALS:  # from the start: a SIGTERM during start-up, or right after `ready`, ends cleanly too
        loop.add_signal_handler(signum, stop.set)
    try:
        await _serve(options, stop)
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


async def _serve(options: UpOptions, stop: asyncio.Event) -> None:
    directory = options.directory
    artifacts.prepare_dir(directory)
    if control.running(directory):
        raise ConfigError(f"a simulated fleet is already running in {directory}; stop it first (SIGTERM to its pid)")
    with contextlib.suppress(FileNotFoundError):
        (directory / control.CONTROL_SOCKET).unlink()  # stale: its process is gone
    agents = plan_agents(options.agents, options.identities)
    fleet = SimFleet(
        options.relays,
        clients=artifacts.agent_clients(directory, agents),
        v6=options.v6,
        block=options.block,
        main_port=options.main_port,
        port_ranges=options.port_ranges,
        faults=options.faults,
        seed=artifacts.read_seed(directory),
        strict=False,
    )
    server = control.ControlServer(fleet, directory, log=_say)
    state = directory / STATE_FILE
    try:
        await fleet.start()
        for relay in fleet.relays:
            relay.on_error = _report_error
        configs = artifacts.write_agent_configs(directory, agents, fleet)
        await server.start()
        state.write_text(json.dumps(_state(fleet, directory), indent=2) + "\n")
        _announce(fleet, directory, configs)
        await stop.wait()
    finally:
        await server.close()
        fleet.stop()
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
    totals = fleet.stats()
    _say(f"stopped: {totals.handshakes} handshakes, {totals.valid_sent} answers sent, {totals.errors} relay errors")


def _state(fleet: SimFleet, directory: Path) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "control_socket": str(directory / control.CONTROL_SOCKET),
        **fleet.status(),
    }


def _announce(fleet: SimFleet, directory: Path, configs: list[Path]) -> None:
    first, last = fleet.relays[0], fleet.relays[-1]
    status = fleet.status()
    ports = " ".join(str(port) for port in status["ports"])
    world = fleet.world
    _say(
        f"simulated fleet: {len(fleet.relays)} relays {first.name}..{last.name} on {first.address}..{last.address}, "
        f"ports {ports}, IPv6 {fleet.v6.value}" + (f" ({address_text(first.ipv6)}...)" if first.ipv6 else "")
    )
    _say(
        f"outside: forward target {world.forward_v4} and {world.forward_v6}, reflector {' '.join(status['reflector'])}"
    )
    _say(f"agent configs: {' '.join(str(path) for path in configs)}")
    _say(f"change it live: probe sim break|heal|status --dir {directory}")
    _say(f"ready (pid {os.getpid()}); SIGTERM or Ctrl-C stops it")


def _say(line: str) -> None:
    print(line, flush=True)


def _report_error(relay: SimRelay, error: BaseException) -> None:
    print(f"{relay.name}: simulator error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
