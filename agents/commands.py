"""Commands to the agent (probe these relays now: `probe verify --aggregator`), taken in: pure, clock-driven, no I/O.

A command arrives on wgprobe/v1/commands/<agent> from whoever the broker's ACL lets write there (the aggregator),
but it is read as hostile all the same: `admit` says what becomes of it, as one word of a closed set (the agent's
`wgprobe_agent_commands_total{outcome}`), and only an accepted command costs a probe. Accepted: a valid `Command`
of this schema on this agent's own topic, within the size bound, not seen before (a QoS 1 re-delivery carries the
same request id), not older than `max_age` (a command is for now: one that waited somewhere is not what its sender
waits for any more), naming at least one relay of the agent's inventory, and leaving the agent's queue of command
probes within its bound. Names the inventory does not hold are answered with nothing and reported in `unknown`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from probe.messages import Command, command_topic
from probe.results import SCHEMA_VERSION
from probe.term import clean

MAX_COMMAND_BYTES = 1024 * 1024  # the aggregator's 1,000 servers at their longest fit four times over
MAX_AGE_SECONDS = 300.0
REMEMBERED = 1024  # request ids kept to drop re-deliveries
MAX_QUEUED = 2000  # command probes queued or running at once; a command past that is refused whole


class CommandOutcome(StrEnum):
    """What became of a command. Closed, so it is safe as a metric label."""

    accepted = "accepted"
    malformed = "malformed"  # not JSON, or not the Command model
    oversized = "oversized"  # larger than MAX_COMMAND_BYTES
    unknown_schema = "unknown_schema"
    wrong_topic = "wrong_topic"  # not this agent's command topic
    duplicate = "duplicate"  # a request id already taken
    expired = "expired"  # issued more than MAX_AGE_SECONDS ago, or dated that far ahead
    no_known_server = "no_known_server"  # names no relay of this agent's inventory
    busy = "busy"  # would queue more than MAX_QUEUED command probes


COMMAND_OUTCOMES: tuple[CommandOutcome, ...] = tuple(CommandOutcome)


@dataclass(frozen=True, slots=True)
class Admitted:
    outcome: CommandOutcome
    command: Command | None = None
    known: tuple[str, ...] = ()  # the relays to probe, in the command's order
    unknown: tuple[str, ...] = ()  # names not in the inventory (printable, cut), answered with nothing
    detail: str = ""  # one printable line: why it was refused

    @property
    def accepted(self) -> bool:
        return self.outcome is CommandOutcome.accepted


class CommandIntake:
    def __init__(
        self,
        agent: str,
        *,
        max_bytes: int = MAX_COMMAND_BYTES,
        max_age: float = MAX_AGE_SECONDS,
        remembered: int = REMEMBERED,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.topic = command_topic(agent)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.remembered = remembered
        self.max_queued = max_queued
        self._seen: OrderedDict[str, None] = OrderedDict()

    def admit(
        self, payload: bytes | bytearray, topic: str, *, now: float, inventory: Collection[str], queued: int
    ) -> Admitted:
        """What becomes of this command, arriving at `now` (Unix seconds) while `queued` command probes wait."""
        try:
            command = self._parse(payload, topic)
        except _Dropped as dropped:
            return Admitted(dropped.outcome, detail=dropped.detail)
        request = printable(command.request_id, 64)
        if command.request_id in self._seen:
            return Admitted(CommandOutcome.duplicate, command, detail=f"request {request} taken already")
        age = now - command.issued_at.timestamp()
        # Dated ahead, a command would never expire: replayable for ever once its id is no longer remembered.
        if abs(age) > self.max_age:
            when = f"issued {age:.0f} s ago" if age > 0 else f"dated {-age:.0f} s ahead of this agent's clock"
            return Admitted(CommandOutcome.expired, command, detail=f"request {request} {when}")
        known = tuple(dict.fromkeys(name for name in command.servers if name in inventory))
        unknown = tuple(printable(name, 64) for name in dict.fromkeys(command.servers) if name not in inventory)
        if not known:
            return Admitted(CommandOutcome.no_known_server, command, unknown=unknown, detail=f"request {request}")
        if queued + len(known) > self.max_queued:
            detail = f"request {request}: {queued} command probes queued already, {len(known)} more asked"
            return Admitted(CommandOutcome.busy, command, detail=detail)
        self._remember(command.request_id)
        return Admitted(CommandOutcome.accepted, command, known=known, unknown=unknown)

    def _parse(self, payload: bytes | bytearray, topic: str) -> Command:
        if topic != self.topic:
            raise _Dropped(CommandOutcome.wrong_topic, f"on {printable(topic, 120)}")
        if len(payload) > self.max_bytes:
            raise _Dropped(CommandOutcome.oversized, f"{len(payload)} bytes; the limit is {self.max_bytes}")
        try:
            command = Command.model_validate_json(payload)
        except ValidationError as e:
            raise _Dropped(CommandOutcome.malformed, _why(e)) from None
        if command.schema_version != SCHEMA_VERSION:
            detail = f"schema_version {command.schema_version}; this agent speaks {SCHEMA_VERSION}"
            raise _Dropped(CommandOutcome.unknown_schema, detail)
        return command

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        while len(self._seen) > self.remembered:
            self._seen.popitem(last=False)


class _Dropped(Exception):
    def __init__(self, outcome: CommandOutcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _why(error: ValidationError) -> str:
    details = error.errors(include_url=False, include_input=False, include_context=False)
    first = details[0] if details else None
    if first is None:
        return "not a command"
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return printable(f"{where}: {first['msg']}", 200)


def printable(text: str, limit: int) -> str:
    """Outside text for a log line: control characters escaped, cut to `limit` characters."""
    return clean(text[:limit])
