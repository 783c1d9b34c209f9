"""`probe agent --config agent.toml [--log-format json]`: the long-running probe agent.

Start-up refuses what the operator must fix (exit 2: a bad config, an unreadable password file, a key another
process holds, a spool file that is not ours) before anything runs; an inventory that cannot be fetched is waited
for, with backoff, since a service should outlast its inventory's outage. After that the agent runs until SIGTERM
or SIGINT and exits 0; SIGHUP reloads the inventory.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

from probe.errors import EXIT_OK, ConfigError

if TYPE_CHECKING:
    from agents.agent import Agent
    from agents.log import Log
    from probe.agent_config import AgentConfig
    from probe.cli import Commands
    from probe.service_config import MqttSection


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "agent",
        help="probe every relay continuously and publish the results over MQTT",
        description="Probe every relay of the inventory continuously from this vantage point and publish every "
        "result to the MQTT broker of [mqtt], with nothing lost while the broker is away (a spool on disk). "
        "SIGHUP reloads the inventory; SIGTERM stops in order and exits 0.",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="agent config (default: $WGPROBE_CONFIG, then ./agent.toml)"
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines (default text)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agents.log import Log, forwarding
    from probe.agent_config import load_config
    from probe.config import find_config
    from probe.keylock import lock_keys
    from probe.service_config import load_mqtt_secrets

    config = load_config(find_config(args.config))
    if config.mqtt is None:
        raise ConfigError(f"{config.path}: [mqtt] is required by `probe agent` (url, username, password_file)")
    try:
        load_mqtt_secrets(config.mqtt)
    except ConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    if config.agent.netns is not None:
        from probe.sockets import require_namespace

        require_namespace(config.agent.netns)
    log = Log(json_lines=args.log_format == "json", agent=config.agent.name)
    warn_foreign_username(config.mqtt, config.agent.name, log)
    with lock_keys([identity.private_key_file for identity in config.identities]), forwarding(log):
        asyncio.run(_serve(config, log))
    return EXIT_OK


def warn_foreign_username(mqtt: MqttSection, agent: str, log: Log) -> None:
    """Say at start when the broker user is not the agent's name: the shipped ACL (deploy/mosquitto/acl) lets a user
    publish only under its own name, so every result would be refused, one log line per reason, hours later."""
    if mqtt.username is not None and mqtt.username != agent:
        log.warning(
            "mqtt_username_not_agent_name",
            username=mqtt.username,
            hint=f"the shipped broker ACL lets user {mqtt.username} publish only under wgprobe/v1/results/"
            f"{mqtt.username}/; this agent publishes under wgprobe/v1/results/{agent}/: unless your ACL allows it, "
            "every result will be refused (name the broker user after [agent] name)",
        )


async def _serve(config: AgentConfig, log: Log) -> None:
    from agents.agent import Agent, run_agent
    from agents.inventory import first_inventory
    from agents.outbox import MqttOutbox
    from agents.spool import Spool
    from probe import signals
    from probe.inventory.configured import ConfiguredInventory

    assert config.mqtt is not None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if signals.take(signal.SIGTERM, signal.SIGINT):  # a stop asked for while the process started
        stopping.set()
    source = ConfiguredInventory(config.inventory)
    inventory = await first_inventory(source, log, stopping)
    if inventory is None:
        return  # stopped before the inventory could ever be loaded
    with Spool.open(config.spool, now=time.time) as spool:
        outbox = MqttOutbox(config.mqtt, config.agent.name, spool, log=log.event)
        agent = Agent(
            config,
            inventory,
            outbox=outbox,
            load_inventory=source.load,
            skipped=source.skipped,
            log=log,
            http=_http(config),
        )
        outbox.on_command = agent.take_command  # `probe verify --aggregator`: relays probed now, on command
        loop.add_signal_handler(signal.SIGHUP, agent.reload)
        if signals.take(signal.SIGHUP):  # a reload asked for while starting
            agent.reload()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, agent.stop)
        if stopping.is_set():
            agent.stop()
        await run_agent(agent)


def _http(config: AgentConfig) -> Callable[[Agent, Callable[[], None]], Coroutine[object, object, None]]:
    """The agent's /metrics and /probe endpoints on [http] listen (agents/http.py)."""
    from agents.http import serve_agent_http

    return serve_agent_http
