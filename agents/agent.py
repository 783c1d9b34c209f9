"""The probe agent: every relay of the inventory probed continuously from this vantage point, every result handed
to the outbox, which delivers it with nothing lost.

Theory of operation. One tree of tasks per agent (`run`), each with one job:
- probing: the schedule (agents/schedule.py) says which relay is due; each due relay is probed in a task of its
  own, under a concurrency cap, and must be done within one interval. Its result goes to the outbox with a
  `result_id` (made once, so a re-send carries the same one), its round, and whether the control check held.
- inventory: reloaded every `refresh_seconds` and at once on SIGHUP (`reload()`); a failed or malformed load keeps
  the last good inventory and says so in the log, the metrics and the status. Relays added start at their next
  slot, removed ones stop, and their retained results are cleared on the broker (a probe in flight at the removal
  publishes nothing); at start, so are those of relays removed while the agent was not running (the spool keeps
  which relays it has published results for).
- control: the control check (probe/control.py) every interval: the agent's own reach, through no relay.
- status: the agent's status to the outbox every interval (the outbox's last will says offline).
- the outbox itself, and the HTTP endpoints when given.

Commands (`take_command`, called by the outbox for each message on wgprobe/v1/commands/<agent>): a verification's
relays probed now, on every path, beside the schedule and under a concurrency cap of their own (agents/commands.py
says which commands are taken). Their results are ordinary results tagged with the command's request id and the
round the schedule is in, delivered through the same outbox; they leave the schedule and its rounds alone. The
aggregator keeps whichever result of a relay was taken last, so a command's result stands until the next scheduled
one, and a late command result never hides a newer scheduled one.

`stop()` (SIGTERM) ends the tree in order: no new probe starts; probes in flight get `STOP_GRACE` seconds to finish
(their results are still delivered), then are cancelled; the outbox then flushes within its own deadline; the rest
is cancelled. A task that fails for a bug takes the tree down with its error logged, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agents.commands import CommandIntake, CommandOutcome
from agents.log import Log
from agents.schedule import Job, Schedule, paths_for
from probe import __version__
from probe.agent_config import AgentConfig
from probe.bus import Outbox
from probe.control import control_check
from probe.errors import WgProbeError
from probe.inputs import redact_url
from probe.inventory import Inventory, Relay
from probe.inventory.configured import entry_problems
from probe.messages import AgentStatus, ControlCheck, ResultMessage
from probe.results import ServerResult
from probe.runner import PathSpec, Prober, plan_paths, rotation_now, settings_from

STOP_GRACE = 3.0  # seconds in-flight probes get to finish after SIGTERM
COMMAND_CONCURRENCY = 16  # command probes at once, at most (and never more than [schedule] concurrency)
COMMAND_SECONDS = 30.0  # a command probe is over by then: `probe verify --aggregator` waits 30 s by default
Loader = Callable[[], Inventory]  # loads the inventory (blocking I/O: run in a thread)


@dataclass
class Counters:
    """What the agent has done, for its /metrics and status."""

    probes: dict[str, int] = field(default_factory=dict)  # by outcome: ok, failed, overrun, error
    probe_seconds: float = 0.0  # summed, with `probes` the mean
    inventory_failures: int = 0
    inventory_loaded_at: float | None = None
    inventory_error: str | None = None
    last_round: int | None = None
    last_round_seconds: float | None = None
    commands: dict[CommandOutcome, int] = field(default_factory=lambda: dict.fromkeys(CommandOutcome, 0))

    def count(self, outcome: str) -> None:
        self.probes[outcome] = self.probes.get(outcome, 0) + 1


@dataclass
class _Round:
    started: float
    ended: float
    jobs: int = 0


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        inventory: Inventory,
        *,
        outbox: Outbox,
        load_inventory: Loader,
        log: Log,
        now: Callable[[], float] = time.time,
        http: Callable[[Agent, Callable[[], None]], Coroutine[object, object, None]] | None = None,
        skipped: Callable[[Inventory], list[tuple[str, str]]] = entry_problems,
        adopted: Callable[[Inventory | None], None] | None = None,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.outbox = outbox
        self.load_inventory = load_inventory
        self.skipped = skipped  # what a load left out, to log: ConfiguredInventory.skipped, with its labels'
        # Told of every load, on the event loop: the inventory, or None when the load failed. `probe serve`'s
        # aggregator follows the agent's loads this way rather than loading (and logging) each one a second time.
        self.adopted = adopted
        self.log = log
        self.now = now
        self.http = http
        self.prober = Prober(config, inventory)
        self.schedule = Schedule(config.schedule.interval_seconds)
        self.counters = Counters(inventory_loaded_at=now())
        self.control: ControlCheck | None = None
        # The control check run for failing probes, and when it began (event-loop time).
        self._control_task: asyncio.Task[None] | None = None
        self._control_began = float("-inf")
        self.started_at = datetime.fromtimestamp(now(), UTC)
        # The round it started in holds only the relays whose slots were still ahead: never reported as a round.
        self.started_round = math.floor(now() / config.schedule.interval_seconds)
        self._gate = asyncio.Semaphore(config.schedule.concurrency)
        self._reload = asyncio.Event()
        self._stopping = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()
        self._rounds: dict[int, _Round] = {}
        self.commands = CommandIntake(config.agent.name)
        self._command_gate = asyncio.Semaphore(min(COMMAND_CONCURRENCY, config.schedule.concurrency))
        self._command_queued = 0
        self._command_rounds: dict[str, int] = {}  # command probes per relay: their port rotation walks on
        self._commands_logged: set[CommandOutcome] = set()

    @property
    def interval(self) -> float:
        return self.config.schedule.interval_seconds

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    # --- the tree of tasks -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; returns once everything is stopped in order."""
        self.schedule.set_relays(self.inventory.names, self.now())
        self.log.info(
            "agent_started",
            version=__version__,
            relays=len(self.inventory.relays),
            inventory=redact_url(self.inventory.source),
            interval_seconds=self.interval,
            identities=len(self.config.identities),
        )
        self._clear_retired()
        await self._check_control()  # the first results must already know whether the agent's network works
        try:
            async with asyncio.TaskGroup() as tree:
                if self.http is not None:
                    # [http] listen is bound before the outbox connects: a bind that fails (another process has
                    # the port: exit 2) ends this agent before it is on the broker under the agent's name, where it
                    # would take a running agent's session (same client id) away on its way out.
                    # If the bind fails, the task group cancels this wait and raises the task's error.
                    bound = asyncio.Event()
                    tree.create_task(self.http(self, bound.set), name="http")
                    await bound.wait()
                # The outbox is in the tree too: if it fails, the agent fails with it, loudly. On the orderly stop
                # it is cancelled after probing has ended and the offline status is in, and flushes on its way out.
                tree.create_task(self.outbox.run(), name="outbox")
                tree.create_task(self._probing(), name="probing")
                tree.create_task(self._inventory_loop(), name="inventory")
                tree.create_task(self._control_loop(), name="control")
                tree.create_task(self._status_loop(), name="status")
                tree.create_task(self._until_stopped(), name="stop")
        finally:
            self.log.info("agent_stopped", **self._probe_totals())

    async def _until_stopped(self) -> None:
        await self._stopping.wait()
        self.log.info("agent_stopping", in_flight=len(self._jobs))
        if self._jobs:
            _done, pending = await asyncio.wait(self._jobs, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.outbox.put_status(self.status(online=False))
        raise _Stopped  # ends the task group: every other task is cancelled, the outbox flushing as it goes

    def stop(self) -> None:
        """Begin the orderly stop (SIGTERM, SIGINT)."""
        self._stopping.set()

    def reload(self) -> None:
        """Reload the inventory now (SIGHUP)."""
        self._reload.set()

    # --- probing ----------------------------------------------------------------------------------------------

    async def _probing(self) -> None:
        while not self._stopping.is_set():
            for job in self.schedule.due(self.now()):
                task = asyncio.create_task(self._job(job), name=f"probe {job.relay}")
                self._jobs.add(task)
                task.add_done_callback(self._job_done)
            upcoming = self.schedule.next_due()
            delay = self.interval if upcoming is None else max(0.0, upcoming - self.now())
            await wait_event(self._stopping, min(delay, self.interval))

    def _job_done(self, task: asyncio.Task[None]) -> None:
        """A job's task ended. Jobs run beside the tree of tasks (one per relay and round), so an exception in one
        (a bug, or the spool refusing a result when the disk does) would reach nobody until the task was collected,
        as asyncio's 'exception was never retrieved': said here at once, with its traceback, and counted. The agent
        goes on with the other relays; the next round tries this one again."""
        self._jobs.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self.counters.count("error")
        self.log.error(
            "probe_job_failed",
            relay=task.get_name().removeprefix("probe "),
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )

    async def _job(self, job: Job) -> None:
        relay = self.inventory.get(job.relay)
        if relay is None or self._stopping.is_set():
            return  # removed from the inventory since it was scheduled
        async with self._gate:
            if self._stopping.is_set():
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.0, job.deadline - self.now())
            started = self.now()
            try:
                async with asyncio.timeout_at(deadline):
                    result = await self.probe(relay, job, finish_by=deadline)
            except TimeoutError:
                self.counters.count("overrun")
                self.log.warning("probe_overrun", relay=relay.name, round=job.round, seconds=self.interval)
                return
            except WgProbeError as exc:  # a config-level problem met while probing (evidence, sockets): logged
                self.counters.count("error")
                self.log.error("probe_error", relay=relay.name, error=str(exc))
                return
        self._book(job, started, self.now(), result)
        control_ok = await self._control_held(result)
        # dict(), not model_dump(): the result's paths and stages go in as the valid models they are, rather than
        # dumped and validated again (7x the CPU, for every result of every round).
        message = ResultMessage.model_validate(
            {**dict(result), "result_id": uuid.uuid4().hex, "round": job.round, "control_ok": control_ok}
        )
        self._put(message)

    def _put(self, message: ResultMessage) -> None:
        """Hand a result to the outbox, unless its relay left the inventory while it was probed: the removal
        cleared the relay's retained result, which this one would put back for good (`_clear_retired`)."""
        if self.inventory.get(message.server) is None:
            self.log.info("result_withheld", relay=message.server, reason="removed from the inventory")
            return
        self.outbox.put_result(message)

    def _clear_retired(self) -> None:
        """Clear this agent's retained result of every relay no longer in the inventory (at start, for relays removed
        while it was not running; at each load, for those it drops), so aggregators are not handed them as
        unknown servers at every start."""
        try:
            cleared = self.outbox.clear_except(self.inventory.names)
        except WgProbeError as exc:  # the spool refusing a write: those results stay retained; the next load retries
            self.log.warning("results_not_cleared", error=str(exc))
            return
        if cleared:
            self.log.info("results_cleared", relays=len(cleared), names=", ".join(cleared[:10]))

    async def probe(self, relay: Relay, job: Job | None = None, *, finish_by: float | None = None) -> ServerResult:
        """One probe of `relay`: this round's paths for a scheduled job, every path for an ad-hoc one. A path that
        could not end before `finish_by` (event-loop time) is not started: the others' result still goes out."""
        if job is None:
            return await self.prober.probe_relay(relay)
        specs = paths_for(
            relay, job, main_port=self.config.probe.main_port, rotation_rounds=self.schedule.rotation_rounds
        )
        return await self.prober.probe_paths(relay, specs, finish_by=finish_by)

    def _book(self, job: Job, started: float, ended: float, result: ServerResult) -> None:
        self.counters.count("ok" if result.ok else "failed")
        self.counters.probe_seconds += result.duration_seconds
        current = self._rounds.setdefault(job.round, _Round(started, ended))
        current.started, current.ended = min(current.started, started), max(current.ended, ended)
        current.jobs += 1
        for number in [n for n in self._rounds if n < job.round - 1]:  # a round is over once the next one ran
            done = self._rounds.pop(number)
            if number > self.started_round:
                self.counters.last_round, self.counters.last_round_seconds = number, done.ended - done.started

    def _probe_totals(self) -> dict[str, int]:
        return {f"probes_{outcome}": count for outcome, count in sorted(self.counters.probes.items())}

    # --- commands: probe these relays now ----------------------------------------------------------------------

    def take_command(self, payload: bytes | bytearray, topic: str) -> None:
        """A command from the bus. Never raises: a command that is not taken is counted, and logged once per
        outcome (the count goes on in the metrics)."""
        if self._stopping.is_set():
            return
        admitted = self.commands.admit(
            payload, topic, now=self.now(), inventory=frozenset(self.inventory.names), queued=self._command_queued
        )
        self.counters.commands[admitted.outcome] += 1
        command = admitted.command
        if not admitted.accepted or command is None:
            if admitted.outcome not in self._commands_logged:
                self._commands_logged.add(admitted.outcome)
                if admitted.unknown:
                    detail = f"{admitted.detail}: not in the inventory: {', '.join(admitted.unknown[:10])}"
                else:
                    detail = admitted.detail
                self.log.warning("command_dropped", outcome=str(admitted.outcome), detail=detail)
            return
        self.log.info("command", request_id=command.request_id, relays=len(admitted.known))
        if admitted.unknown:
            self.log.warning(
                "command_unknown_relays",
                request_id=command.request_id,
                count=len(admitted.unknown),
                relays=", ".join(admitted.unknown[:10]),
            )
        for name in admitted.known:
            self._command_queued += 1
            task = asyncio.create_task(
                self._command_job(name, command.request_id, all_paths=command.all_paths), name=f"command {name}"
            )
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _command_job(self, name: str, request_id: str, *, all_paths: bool) -> None:
        try:
            relay = self.inventory.get(name)
            if relay is None:
                return  # removed from the inventory since the command came
            async with self._command_gate:
                if self._stopping.is_set():
                    return
                deadline = asyncio.get_running_loop().time() + COMMAND_SECONDS
                try:
                    async with asyncio.timeout_at(deadline):
                        result = await self.prober.probe_paths(
                            relay, self._command_paths(relay, all_paths), finish_by=deadline
                        )
                except TimeoutError:
                    self.counters.count("overrun")
                    self.log.warning("probe_overrun", relay=name, request_id=request_id, seconds=COMMAND_SECONDS)
                    return
                except WgProbeError as exc:
                    self.counters.count("error")
                    self.log.error("probe_error", relay=name, request_id=request_id, error=str(exc))
                    return
        finally:
            self._command_queued -= 1
        self.counters.count("ok" if result.ok else "failed")
        self.counters.probe_seconds += result.duration_seconds
        control_ok = await self._control_held(result)
        fields = {"result_id": uuid.uuid4().hex, "round": self._round_now(), "control_ok": control_ok}
        message = ResultMessage.model_validate({**dict(result), **fields, "request_id": request_id})
        self._put(message)

    def _command_paths(self, relay: Relay, all_paths: bool) -> list[PathSpec]:
        """Every path (the main port and one port of each range, both families), or the main port only. Each
        command probe of a relay takes the next step of the port rotation, as `probe verify` does from one host."""
        done = self._command_rounds.get(relay.name, 0)
        self._command_rounds[relay.name] = done + 1
        main = self.config.probe.main_port
        specs = plan_paths(relay, rotation=rotation_now() + done, main_port=main)
        return specs if all_paths else [spec for spec in specs if spec.port == (main or relay.main_port)]

    def _round_now(self) -> int:
        """The schedule's round at this moment (agents/schedule.py: round r starts at r * interval)."""
        return math.floor(self.now() / self.interval)

    # --- inventory, control, status ---------------------------------------------------------------------------

    async def _inventory_loop(self) -> None:
        while True:
            await wait_event(self._reload, self.config.inventory.refresh_seconds)
            asked = self._reload.is_set()
            self._reload.clear()
            await self.refresh_inventory(asked=asked)

    async def refresh_inventory(self, *, asked: bool = False) -> None:
        """Load the inventory again; on any failure keep the last good one. `asked`: a SIGHUP, which is answered in
        the log even when nothing changed (whoever sent it is looking for a word)."""
        try:
            inventory = await asyncio.to_thread(self.load_inventory)
        except WgProbeError as exc:
            self.counters.inventory_failures += 1
            self.counters.inventory_error = str(exc)
            self.log.warning("inventory_kept", reason=str(exc), relays=len(self.inventory.relays))
            if self.adopted is not None:
                self.adopted(None)
            return
        self.inventory = inventory
        self.prober.inventory = inventory
        self.prober.settings = settings_from(self.config, inventory)
        self.counters.inventory_loaded_at, self.counters.inventory_error = self.now(), None
        added, removed = self.schedule.set_relays(inventory.names, self.now())
        self._clear_retired()
        for event, problem in self.skipped(inventory):
            self.log.warning(event, problem=problem)
        if self.adopted is not None:
            self.adopted(inventory)
        if added or removed:
            self.log.info("inventory_changed", relays=len(inventory.relays), added=len(added), removed=len(removed))
        elif asked:
            self.log.info("inventory_reloaded", relays=len(inventory.relays), changed=False)

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._check_control()

    async def _control_held(self, result: ServerResult) -> bool:
        """Whether the agent's own reach held while `result` was taken. A pass proves it did. A failure is the
        relay's only if a control check begun after it was seen holds: an earlier check is not enough, as the
        agent's own network may have gone down since, and every relay would then look broken. Failing probes that
        ask at once share one check."""
        if result.ok:
            return True
        seen = asyncio.get_running_loop().time()
        while True:
            task, began = self._control_task, self._control_began
            if task is not None and began >= seen:
                await asyncio.shield(task)
                return self.control is not None and self.control.ok
            if task is None or task.done():
                self._control_began = asyncio.get_running_loop().time()
                self._control_task = asyncio.create_task(self._check_control(), name="control (on a failure)")
            else:
                await asyncio.shield(task)  # an older check, begun before the failure was seen: wait, then ours

    async def _check_control(self) -> None:
        check = await control_check(self.prober.settings)
        # The broker's side of the agent's reach is its outbox's connection, which logs its own comings and goings.
        check = check.model_copy(update={"broker_ok": self.outbox.stats().connected})
        if self.control is None or check.ok != self.control.ok:
            level = "info" if check.ok else "warning"
            self.log.event(level, "control_check", ok=check.ok, detail=check.detail or "")
        self.control = check

    async def _status_loop(self) -> None:
        while True:
            self.outbox.put_status(self.status(online=True))
            await asyncio.sleep(self.interval)

    def status(self, *, online: bool) -> AgentStatus:
        loaded = self.counters.inventory_loaded_at
        return AgentStatus(
            agent=self.config.agent.name,
            online=online,
            version=__version__,
            started_at=self.started_at,
            updated_at=datetime.fromtimestamp(self.now(), UTC),
            interval_seconds=self.interval,
            rotation_rounds=self.schedule.rotation_rounds,
            inventory_size=len(self.inventory.relays),
            inventory_age_seconds=None if loaded is None else round(self.now() - loaded, 3),
            round=self.counters.last_round,
            round_seconds=None
            if self.counters.last_round_seconds is None
            else round(self.counters.last_round_seconds, 3),
            control=self.control,
        )


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds. asyncio.timeout, not wait_for: on Python 3.11 wait_for can
    swallow a cancellation that lands as the awaited future completes, and a task of the tree must stop when told."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


class _Stopped(Exception):
    """Raised inside the task group to end it once the orderly stop is done (caught by `run_agent`)."""


async def run_agent(agent: Agent) -> None:
    """Run `agent` until stopped; the orderly stop is a normal end, any other error propagates."""
    try:
        await agent.run()
    except* _Stopped:
        pass
