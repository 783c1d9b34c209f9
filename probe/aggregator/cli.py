"""`probe aggregator --config aggregator.toml` and `probe serve --config agent.toml`.

The aggregator subscribes to every agent's results and status over MQTT, judges each relay's health by quorum and
serves /metrics, the JSON API and the status page on `[http] listen`; a verification (`probe verify --aggregator`)
is published to the agents over the same connection. `probe serve` is the embedded default: an agent and an
aggregator in one process, the agent's outbox handing the very same payloads and topics to the store over an
in-process bus instead of a broker, and a verification's command handed to the agent the same way; the same HTTP
endpoints, the agent's own under /agent/.

Both stop in order on SIGTERM/SIGINT and exit 0; SIGHUP reloads the inventory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

from probe.errors import EXIT_OK

if TYPE_CHECKING:
    from agents.agent import Agent
    from agents.log import Log
    from probe.addresses import Endpoint
    from probe.agent_config import AgentConfig
    from probe.aggregator.config import AggregatorConfig
    from probe.aggregator.verifications import Tagged
    from probe.cli import Commands


GC_GEN0_THRESHOLD = 20_000  # allocations between young collections in `probe aggregator` (see run_aggregator)


def register(commands: Commands) -> None:
    aggregator = commands.add_parser(
        "aggregator",
        help="one verdict per relay from many agents: /metrics, the API and the status page",
        description="Subscribe to every agent's results over MQTT, decide each relay's health by quorum across the "
        "agents, and serve /metrics, the JSON API (/api/v1/...) and the status page on [http] listen.",
    )
    aggregator.add_argument("--config", type=Path, required=True, metavar="FILE", help="aggregator.toml")
    _log_format(aggregator)
    aggregator.set_defaults(handler=run_aggregator)

    serve = commands.add_parser(
        "serve",
        help="agent and aggregator in one process, no broker: probe, judge, serve the status page",
        description="An agent and an aggregator in one process, joined by an in-process bus instead of a broker: "
        "every relay probed on the [schedule], judged, and shown on the status page and /metrics at [http] listen.",
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="agent config (default: $WGPROBE_CONFIG, then ./agent.toml)"
    )
    _log_format(serve)
    serve.set_defaults(handler=run_serve)


def _log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines (default text)")


def run_aggregator(args: argparse.Namespace) -> int:
    from agents.log import Log, forwarding
    from probe.aggregator.config import load_aggregator_config

    config = load_aggregator_config(args.config)
    log = Log(json_lines=args.log_format == "json", aggregator=config.aggregator.name)
    # Each result leaves a few hundred short-lived container objects behind (the parsed model, its stages, the
    # records built from it): at the default gen0 threshold (700) a young collection ran every few results and the
    # collector took ~20% of the store's ingest time (bench_aggregator's payloads). Nothing here lives in reference
    # cycles that must go quickly; 20,000 makes young collections ~30 times rarer for a few MB more garbage at
    # most. The older generations keep their defaults (counted in young collections, so they run rarer too).
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    with forwarding(log):
        asyncio.run(_aggregator(config, log))
    return EXIT_OK


async def _aggregator(config: AggregatorConfig, log: Log) -> None:
    from agents.inventory import first_inventory
    from probe import signals
    from probe.aggregator.http import make_app
    from probe.aggregator.service import AggregatorShell
    from probe.aggregator.store import ResultStore
    from probe.aggregator.subscriber import Subscriber
    from probe.aggregator.verifications import Tagged, Verifications
    from probe.http import serve
    from probe.inventory.configured import ConfiguredInventory

    stopping = _stop_on_signals()
    source = ConfiguredInventory(config.inventory)
    inventory = await first_inventory(source, log, stopping)
    if inventory is None:
        return
    store = ResultStore(inventory, now=time.time, health=config.health)
    verifications = Verifications(now=time.time)
    subscriber = Subscriber(config.mqtt, config.aggregator.name, Tagged(store, verifications), log=log.event)
    shell = AggregatorShell(store, source, log)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, shell.reload)
    if signals.take(signal.SIGHUP):  # a reload asked for while starting
        shell.reload()
    app = make_app(
        store,
        ready=lambda: None if subscriber.connected else "not connected to the broker",
        verifications=verifications,
        send=subscriber.send_command,
    )

    def started(bound: Endpoint) -> None:
        # Said once listening: a [http] listen that cannot be bound ends the start with its own error, not after a
        # line claiming it started.
        log.info("aggregator_started", relays=len(inventory.relays), listen=str(bound))

    try:
        async with asyncio.TaskGroup() as tree:
            tree.create_task(subscriber.run(), name="subscriber")
            tree.create_task(shell.judging(subscriber.settled), name="judging")
            tree.create_task(shell.following_inventory(), name="inventory")
            tree.create_task(serve(app, config.http.listen, ready=started), name="http")
            tree.create_task(_until(stopping), name="stop")
    except* _Done:
        pass
    log.info("aggregator_stopped")


def run_serve(args: argparse.Namespace) -> int:
    from agents.log import Log, forwarding
    from probe.agent_config import load_config
    from probe.config import find_config
    from probe.keylock import lock_keys

    config = load_config(find_config(args.config))
    if config.agent.netns is not None:
        from probe.sockets import require_namespace

        require_namespace(config.agent.netns)
    log = Log(json_lines=args.log_format == "json", agent=config.agent.name)
    with lock_keys([identity.private_key_file for identity in config.identities]), forwarding(log):
        asyncio.run(_serve(config, log))
    return EXIT_OK


async def _serve(config: AgentConfig, log: Log) -> None:
    from agents.agent import Agent, run_agent
    from agents.http import agent_http
    from agents.inventory import first_inventory
    from probe import signals
    from probe.aggregator.config import HealthSection
    from probe.aggregator.http import make_app
    from probe.aggregator.service import AggregatorShell
    from probe.aggregator.store import ResultStore
    from probe.aggregator.verifications import Tagged, Verifications
    from probe.bus import LocalOutbox
    from probe.http import serve
    from probe.inventory.configured import ConfiguredInventory

    stopping = _stop_on_signals()
    source = ConfiguredInventory(config.inventory)
    inventory = await first_inventory(source, log, stopping)
    if inventory is None:
        return
    # One agent: a relay is down when it fails from here (a quorum of one); stale after 3 of the agent's rounds.
    health = HealthSection(interval_seconds=config.schedule.interval_seconds)
    store = ResultStore(inventory, now=time.time, health=health)
    shell = AggregatorShell(store, source, log)
    verifications = Verifications(now=time.time)
    sink = Tagged(store, verifications)
    bus = LocalOutbox(config.agent.name, lambda topic, payload: _deliver(sink, topic, payload))
    # The agent loads the inventory for both (on its schedule and on SIGHUP) and hands each load to the shell.
    agent = Agent(
        config, inventory, outbox=bus, load_inventory=source.load, skipped=source.skipped, log=log, adopted=shell.adopt
    )
    app = make_app(store, verifications=verifications, send=_local_commands(agent))
    app.add_subapp("/agent/", agent_http(agent))
    loop = asyncio.get_running_loop()

    loop.add_signal_handler(signal.SIGHUP, agent.reload)
    if signals.take(signal.SIGHUP):  # a reload asked for while starting
        agent.reload()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.stop)
    if stopping.is_set():
        agent.stop()
    settled = asyncio.Event()
    settled.set()  # no retained burst to wait for: the bus starts empty

    def serving(bound: Endpoint) -> None:  # said once listening (see _aggregator)
        relays = len(inventory.relays)
        log.info("serving", status_page=f"http://{bound}/", metrics=f"http://{bound}/metrics", relays=relays)

    try:
        async with asyncio.TaskGroup() as tree:
            tree.create_task(shell.judging(settled), name="judging")
            tree.create_task(serve(app, config.http.listen, ready=serving), name="http")
            tree.create_task(_after(run_agent(agent)), name="agent")
    except* _Done:
        pass


def _deliver(sink: Tagged, topic: str, payload: bytes) -> None:
    if "/results/" in topic:
        sink.ingest_result(payload, topic)
    else:
        sink.ingest_status(payload, topic)


def _local_commands(agent: Agent) -> Callable[[str, bytes], Awaitable[None]]:
    """`probe serve`'s way to an agent's command topic: the payload handed to the agent in this process."""
    from probe.errors import UnavailableError
    from probe.messages import command_topic

    async def send(name: str, payload: bytes) -> None:
        if name != agent.config.agent.name:
            raise UnavailableError(f"agent {name} is not in this process")
        agent.take_command(payload, command_topic(name))

    return send


def _stop_on_signals() -> asyncio.Event:
    """Set on SIGTERM or SIGINT, including one that came while the process started (probe/signals.py)."""
    from probe import signals

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if signals.take(signal.SIGTERM, signal.SIGINT):
        stopping.set()
    return stopping


class _Done(Exception):
    """Ends a service's task group once its stop has run in order."""


async def _until(stopping: asyncio.Event) -> None:
    await stopping.wait()
    raise _Done


async def _after(work: Coroutine[object, object, None]) -> None:
    """Run `work` (the agent, which stops in order by itself), then end the rest of the tree."""
    await work
    raise _Done
