"""The aggregator's result store: messages and a clock in, health and records out. No MQTT, HTTP or asyncio.

A thin shell feeds it: the MQTT subscriber (or `probe serve`'s in-process bus) calls `ingest_result` and
`ingest_status` from its message callback and logs the drops whose `first_from_sender` is set. Intake and judgement
are apart: `refresh()` judges, at the clock's time, every agent and every relay whose verdict may have moved, and
returns what changed, for the shell to log; the shell calls it about once a second, and the HTTP views and the
metrics collector call it before reading.
So a burst (the retained messages after a restart, a spool replayed after an outage) is judged once, whole, rather
than message by message with transient verdicts in between, and ingest stays cheap. Every method runs on one thread
(the event loop's); nothing locks.

What is kept, all bounded by the inventory and the agents: per relay and agent the newest result, per relay, agent,
port slot and family the newest path, per relay its health, since when, a short history and its last failure; per
agent its status; packet counters per relay, agent and stage; and the last `seen_ids` result ids, to drop re-sends.

`on_kept` holds callbacks told of every result kept, `(relay, agent, record)`, once the record and the packet
counters hold it: the HTTP app's metrics renderer writes that (relay, agent)'s lines then, on arrival, so a scrape
finds them written. They run inside `ingest_result` and must not raise (nor judge: that is `refresh`'s job).

A port slot is the inventory's name for a path's port: the main port ("51820"), or the range a rotated port was
taken from ("4000-33433"). Agents rotate through the ports of a range from round to round; keyed by slot, one
range is one path here and one series in Prometheus rather than a new one every round.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

from pydantic import ValidationError

from probe.aggregator.config import HealthSection
from probe.aggregator.health import AgentState, Exclusion, Vote, agent_vote, judge
from probe.aggregator.intake import (
    MAX_PAYLOAD,
    Ingested,
    Outcome,
    claimed_result_id,
    classify,
    printable,
    result_topic_names,
    status_topic_agent,
)
from probe.aggregator.records import (
    STAGE_RANK,
    AgentChange,
    AgentInfo,
    AgentJudgement,
    AgentRecord,
    Change,
    ClockChange,
    Failure,
    HealthChange,
    PacketCounts,
    PathRecord,
    PortSlots,
    ResultSummary,
    ServerRecord,
    Stage,
    epoch,
    worst_reason,
)
from probe.aggregator.wire import Read, WireResult, from_model, read_result
from probe.configfile import check_agent_name
from probe.inventory import Inventory
from probe.messages import DEFAULT_ROTATION_ROUNDS, MAX_ROTATION_ROUNDS, AgentStatus, ResultMessage
from probe.results import SCHEMA_VERSION, StageName
from probe.service_config import MAX_INTERVAL_SECONDS

# Result ids remembered for de-duplication: ~30 rounds of 1,000 relays x 3 agents, and every retained result a
# reconnect re-delivers. A re-send older than that is accepted again but, being older, replaces nothing (it only
# counts its packets twice).
DEFAULT_SEEN_IDS = 100_000
DEFAULT_MAX_AGENTS = 256
MAX_PATHS_PER_AGENT = 64  # per relay: 2 families x (main port + ranges); more can only come from a broken agent
_MAX_LOGGED = 4096  # (sender, outcome) pairs remembered for "log once per sender"
# A broker that shuts down publishes the last will of every client still connected (mosquitto 2.0 does, at once,
# whatever will delay the client asked for), keeps them retained, and after its restart hands them out again with
# the retained messages and the queued session: every agent would read as offline, every relay as unknown, and a
# `down` relay's alert would resolve, until the agents reconnect. So, with a broker, an offline status takes effect
# WILL_GRACE seconds after it came; if our own connection drops meanwhile, or it comes within REDELIVERY_WINDOW
# seconds after we reconnected, it is held until the agent's staleness limit instead, and dropped if anything newer
# comes from the agent first (by then the agent's results are stale anyway, so holding it changes no verdict an
# honest will would have made). The wills arrive some milliseconds before the broker closes our connection: a
# judging pass in between would otherwise flip every verdict for a moment, which a scrape or the log could catch.
WILL_GRACE = 3.0
REDELIVERY_WINDOW = 30.0
# An agent's clock is off when two of its live statuses in a row are dated more than this ahead of their arrival,
# or behind it, the same way: results are judged by their own times (a clock behind makes them stale early, one
# ahead is held to arrival), and commands expire by the agent's clock. One late status (queued while the agent or
# we were away) reads as behind by its wait: two in a row, and none in the REDELIVERY_WINDOW after we (re)connect,
# when the broker hands out what it queued. Transit is milliseconds; a backlog of seconds is itself worth a word.
CLOCK_TOLERANCE = 10.0


class _Refused(Exception):
    """Why a message is dropped; raised and caught within the store only."""

    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


_M = TypeVar("_M", ResultMessage, AgentStatus)


def _check_schema(version: int) -> None:
    if version != SCHEMA_VERSION:
        raise _Refused(Outcome.unknown_schema, f"schema_version {version}; this aggregator speaks {SCHEMA_VERSION}")


class _Schedule(NamedTuple):
    interval_seconds: float | None
    rotation_rounds: int | None


CHANGES_KEPT = 10_000
KeptHook = Callable[[str, str, AgentRecord], None]  # (relay, agent, the agent's record of it), after a result is kept


class ResultStore:
    def __init__(
        self,
        inventory: Inventory,
        *,
        now: Callable[[], float],
        health: HealthSection | None = None,
        seen_ids: int = DEFAULT_SEEN_IDS,
        max_agents: int = DEFAULT_MAX_AGENTS,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.now = now
        self.health = health or HealthSection()
        self._seen_capacity = seen_ids
        self._max_agents = max_agents
        self._max_payload = max_payload
        self._servers: dict[str, ServerRecord] = {}
        self._agents: dict[str, AgentInfo] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._logged: set[tuple[str | None, Outcome]] = set()
        self._accepted: dict[str, Ingested] = {}  # per agent: what ingest_result returns for an accepted result
        self._judgements: dict[tuple[str, Vote | None, Exclusion | None], AgentJudgement] = {}
        self.messages: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.packets: dict[tuple[str, str], PacketCounts] = {}  # (relay, agent)
        # Every change `refresh` found, whoever called it (a scrape, a page, the shell), until the shell drains them
        # for its log: bounded, the oldest go first if nobody drains.
        self._changes: deque[Change] = deque(maxlen=CHANGES_KEPT)
        self.on_kept: list[KeptHook] = []
        self.inventory = inventory
        self.inventory_ok = True  # False while the last (re)load failed: the inventory in use is the last good one
        self.inventory_loaded_at = now()
        # Our connection to the broker (the MQTT shell says, through broker_connection); None with no broker at all
        # (`probe serve`'s in-process bus).
        self.broker_connected: bool | None = None
        self._lost_broker = False  # the connection dropped at least once: what comes after a reconnect is suspect
        self._suspect_until = -math.inf  # offline statuses arriving before this are held (REDELIVERY_WINDOW)
        self._clock_from = -math.inf  # statuses arriving before this do not measure their agent's clock
        self.set_inventory(inventory)

    # -- reading ---------------------------------------------------------------------------------------------------

    @property
    def servers(self) -> Mapping[str, ServerRecord]:
        return self._servers

    @property
    def agents(self) -> Mapping[str, AgentInfo]:
        return self._agents

    def stale_after(self, agent: str) -> float:
        """Seconds after which this agent's results are stale: by its own interval when its status says it."""
        return self.health.stale_after(self._said(agent).interval_seconds)

    def rotation_grace(self, agent: str) -> float:
        """Seconds a rotated path waits between visits beyond a main-port path: (rotation_rounds - 1) intervals, by
        the agent's status where it says them (DEFAULT_ROTATION_ROUNDS and the configured interval otherwise)."""
        said = self._said(agent)
        return ((said.rotation_rounds or DEFAULT_ROTATION_ROUNDS) - 1) * (
            said.interval_seconds or self.health.interval_seconds
        )

    def _said(self, agent: str) -> _Schedule:
        """The schedule an agent's status says it keeps, each figure None when absent or out of bounds: a status
        cannot make its agent's results stale at once, or fresh for ever."""
        info = self._agents.get(agent)
        status = info.status if info is not None else None
        if status is None:
            return _Schedule(None, None)
        interval, rounds = status.interval_seconds, status.rotation_rounds
        return _Schedule(
            interval if interval is not None and 0 < interval <= MAX_INTERVAL_SECONDS else None,
            rounds if rounds is not None and 1 <= rounds <= MAX_ROTATION_ROUNDS else None,
        )

    def is_fresh(self, agent: str, taken_at: float, now: float) -> bool:
        return now - taken_at <= self.stale_after(agent)

    # -- inventory -------------------------------------------------------------------------------------------------

    def set_inventory(self, inventory: Inventory) -> None:
        """Adopt a (re)loaded inventory: new relays start unknown, removed ones are forgotten with their counters."""
        now = self.now()
        self.inventory = inventory
        self.inventory_ok, self.inventory_loaded_at = True, now
        servers: dict[str, ServerRecord] = {}
        for relay in inventory.relays:
            held = self._servers.get(relay.name)
            if held is None:
                held = ServerRecord(relay, PortSlots.of(relay), now, deque(maxlen=self.health.history))
            held.relay, held.slots, held.due = relay, PortSlots.of(relay), -math.inf
            servers[relay.name] = held
        self._servers = servers
        self.packets = {key: count for key, count in self.packets.items() if key[0] in servers}

    # -- ingesting -------------------------------------------------------------------------------------------------

    def ingest_result(self, payload: bytes | bytearray, topic: str) -> Ingested:
        """Validate and keep one result message from `topic`. Never raises: a bad message is counted and dropped."""
        names = result_topic_names(topic)
        try:
            message, started_at = self._admit_result(payload, topic, names)
        except _Refused as refused:
            return self._drop(refused.outcome, printable(names[0], 64) if names else None, refused.detail)
        self._remember((message.agent, message.result_id))
        server = self._servers[message.server]
        now = self.now()
        self._keep(server, message, epoch(started_at), now)
        self.messages[Outcome.accepted] += 1
        accepted = self._accepted.get(message.agent)
        if accepted is None:  # one per agent (they are bounded: max_agents), not one per result
            # The topic's agent, which the message's matched, in the agent config's alphabet: printable as it is.
            accepted = self._accepted[message.agent] = Ingested(Outcome.accepted, sender=message.agent)
        return accepted

    def ingest_status(self, payload: bytes | bytearray, topic: str, *, live: bool = True) -> Ingested:
        """Validate and keep one agent status (or last will). Never raises. `live`: published now, not a retained
        message handed out at subscription (only a live one says how the agent's clock stands against ours)."""
        agent = status_topic_agent(topic)
        sender = printable(agent, 64) if agent else None
        try:
            if agent is None:
                self._check_size(payload)
                raise _Refused(Outcome.topic_mismatch, f"not a status topic: {printable(topic, 120)}")
            if not payload:
                self._forget_status(agent)
                raise _Refused(Outcome.cleared, "an empty payload: a retained status cleared")
            status = self._parse(AgentStatus, payload)
            if status.agent != agent:
                raise _Refused(Outcome.topic_mismatch, f"payload is from {printable(status.agent, 64)}")
            self._check_agent(agent)
        except _Refused as refused:
            return self._drop(refused.outcome, sender, refused.detail)
        now = self.now()
        info = self._agent(agent, now)
        # The newest arrival wins, whatever its updated_at: a last will carries the time it was registered at. Held to
        # its arrival, as a result's time is: a status dated ahead would keep its agent from going silent for ever.
        status_at = min(epoch(status.updated_at), now) if status.updated_at else now
        info.held = None  # a held will is superseded by anything newer from its agent
        if live and status.online and status.updated_at is not None and now >= self._clock_from:
            self._clock(info, epoch(status.updated_at) - now, now)
        if status.online or self.broker_connected is None:  # no broker (`probe serve`): no will but the agent's own
            info.status, info.status_at = status, status_at
        else:
            wait = self.stale_after(agent) if now < self._suspect_until else WILL_GRACE
            info.held = (status, status_at, now + wait)
        self.messages[Outcome.accepted] += 1
        return Ingested(Outcome.accepted, sender=sender)

    def broker_connection(self, up: bool) -> int:
        """The MQTT shell's word that its connection to the broker is up (subscribed) or has dropped. Returns how
        many agents' last wills are held because of it (see WILL_GRACE): for the shell's log."""
        now = self.now()
        if not up and self.broker_connected is None:
            # Not connected yet (the shell says so before its first attempt, so that a broker unreachable from the
            # start shows as 0, not as an absent series no alert sees): nothing was lost.
            self.broker_connected = False
            return 0
        self.broker_connected = up
        if up:
            self._clock_from = now + REDELIVERY_WINDOW  # what the broker queued for us comes first, late
            if self._lost_broker:
                self._suspect_until = now + REDELIVERY_WINDOW
            return 0
        self._lost_broker = True
        held = 0
        for info in self._agents.values():
            # Still in its grace: the broker's shutdown sent it (one held since a reconnect stays as it is).
            if info.held is not None and now < info.held[2] <= now + WILL_GRACE:
                status, status_at, _ = info.held
                info.held = (status, status_at, now + self.stale_after(info.name))
                held += 1
        return held

    def _admit_result(self, payload: bytes | bytearray, topic: str, names: tuple[str, str] | None) -> Read:
        self._check_size(payload)
        if names is None:
            raise _Refused(Outcome.topic_mismatch, f"not a results topic: {printable(topic, 120)}")
        if not payload:
            self._forget_result(*names)
            raise _Refused(Outcome.cleared, "an empty payload: a retained result cleared")
        # A re-send (QoS 1 redelivery, the retained results on every resubscribe) is dropped before it costs a parse
        # (~12 us rather than ~200 us). The id is only read, not validated, so a malformed payload carrying an id
        # its agent already sent is counted as a duplicate, not as malformed: either way it is dropped, and only that
        # agent (the topic's, whom the broker's ACL lets publish there) can send it.
        claimed = claimed_result_id(payload)
        if claimed is not None and (names[0], claimed) in self._seen:
            raise _Refused(Outcome.duplicate, f"result_id {printable(claimed, 64)}")
        read = read_result(payload)
        if read is None:
            # What the compiled reader refuses, the contract's model decides: it refuses with its reason, or it
            # accepts what msgspec is too strict for (1.0 for an int, say). See probe/aggregator/wire.py.
            read = from_model(self._parse(ResultMessage, payload))
        message = read.message
        _check_schema(message.schema_version)
        if names != (message.agent, message.server):
            detail = f"payload is from {printable(message.agent, 64)} on {printable(message.server, 64)}"
            raise _Refused(Outcome.topic_mismatch, detail)
        if message.server not in self._servers:
            # Dropped, not kept: metric labels come only from the inventory, so an agent with a newer inventory (or
            # a broken one) cannot add series; the first round after our own inventory refresh brings it in.
            raise _Refused(Outcome.unknown_server, f"{printable(message.server, 64)} is not in the inventory")
        self._check_agent(message.agent)
        if (message.agent, message.result_id) in self._seen:
            raise _Refused(Outcome.duplicate, f"result_id {printable(message.result_id, 64)}")
        return read

    # -- forgetting what was cleared ---------------------------------------------------------------------------------

    def _forget_result(self, agent: str, relay: str) -> None:
        """An agent cleared its retained result of `relay` (it dropped the relay from its inventory, or an operator
        retired the agent): its record there is forgotten now rather than left to go stale, and the relay judged
        again at the next refresh."""
        server = self._servers.get(relay)
        if server is None or server.agents.pop(agent, None) is None:
            return
        server.due = -math.inf
        # New mappings, as set_inventory makes: the metrics renderer knows nothing moved while the store's servers
        # and counters are the same objects, and would go on showing the forgotten lines. Its packet counters go
        # too (a relay it may probe again starts them from 0: a counter reset, which rate() takes).
        self._servers = dict(self._servers)
        self.packets = {key: counts for key, counts in self.packets.items() if key != (relay, agent)}
        self._forget_agent_if_gone(agent)

    def _forget_status(self, agent: str) -> None:
        """An agent's retained status cleared (an operator retiring it): what it said is forgotten."""
        info = self._agents.get(agent)
        if info is None:
            return
        info.status, info.status_at, info.held = None, None, None
        self._forget_agent_if_gone(agent)

    def _forget_agent_if_gone(self, agent: str) -> None:
        """Forget an agent with neither a status nor a result left here: it leaves /api/v1/agents and its series
        (wgprobe_agent_up 0 would otherwise page for an agent retired on purpose, until the aggregator restarted)."""
        info = self._agents.get(agent)
        if info is None or info.status is not None or info.held is not None:
            return
        if any(agent in server.agents for server in self._servers.values()):
            return
        del self._agents[agent]
        self._accepted.pop(agent, None)
        self.packets = {key: counts for key, counts in self.packets.items() if key[1] != agent}
        self._judgements = {key: judged for key, judged in self._judgements.items() if key[0] != agent}

    def _clock(self, info: AgentInfo, offset: float, now: float) -> None:
        previous, info.clock_offset = info.clock_offset, offset
        if not info.clock_off:
            if (
                previous is not None
                and min(abs(previous), abs(offset)) > CLOCK_TOLERANCE
                and (previous > 0) == (offset > 0)
            ):
                info.clock_off = True
                self._changes.append(ClockChange(info.name, now, offset, off=True))
        elif abs(offset) <= CLOCK_TOLERANCE:
            info.clock_off = False
            self._changes.append(ClockChange(info.name, now, offset, off=False))

    def _check_size(self, payload: bytes | bytearray) -> None:
        if len(payload) > self._max_payload:
            raise _Refused(Outcome.oversized, f"{len(payload)} bytes; the limit is {self._max_payload}")

    def _parse(self, model: type[_M], payload: bytes | bytearray) -> _M:
        self._check_size(payload)
        try:
            message = model.model_validate_json(payload)
        except ValidationError as e:
            raise _Refused(*classify(payload, e)) from None
        _check_schema(message.schema_version)
        return message

    def _check_agent(self, agent: str) -> None:
        # Agent names become label values and log words: held to the agent config's alphabet, and bounded in number
        # so a misconfigured fleet cannot grow series without end.
        if agent in self._agents:
            return
        try:
            check_agent_name(agent)
        except ValueError as e:
            raise _Refused(Outcome.malformed, f"agent name {printable(agent, 64)!r}: {e}") from None
        if len(self._agents) >= self._max_agents:
            raise _Refused(Outcome.agent_limit, f"already {len(self._agents)} agents")

    def _drop(self, outcome: Outcome, sender: str | None, detail: str) -> Ingested:
        self.messages[outcome] += 1
        first = (sender, outcome) not in self._logged and len(self._logged) < _MAX_LOGGED
        if first:
            self._logged.add((sender, outcome))
        return Ingested(outcome, sender=sender, first_from_sender=first, detail=detail)

    def _remember(self, key: tuple[str, str]) -> None:
        self._seen[key] = None
        if len(self._seen) > self._seen_capacity:
            self._seen.popitem(last=False)

    def _agent(self, name: str, now: float) -> AgentInfo:
        info = self._agents.get(name)
        if info is None:
            info = self._agents[name] = AgentInfo(name=name, since=now)
        return info

    def _keep(self, server: ServerRecord, message: WireResult, started_at: float, now: float) -> None:
        # An agent whose clock runs ahead cannot make a result fresher than its arrival (nor fresh for ever).
        taken_at = min(started_at, now)
        info = self._agent(message.agent, now)
        info.results += 1
        if info.newest_taken_at is None or taken_at > info.newest_taken_at:
            info.newest_taken_at, info.newest_control_ok = taken_at, message.control_ok
        slot_of, main_port, grace = server.slots.slot, server.relay.main_port, self.rotation_grace(message.agent)
        paths = tuple(
            PathRecord.of(
                path,
                slot_of(path.port),
                taken_at,
                message.round,
                message.control_ok,
                taken_at if path.port == main_port else taken_at + grace,
            )
            for path in message.paths
        )
        server.due = -math.inf  # judge it again at the next refresh
        record = server.agents.get(message.agent)
        if record is None:
            record = server.agents[message.agent] = AgentRecord(ResultSummary.of(message, paths, taken_at, now))
        elif (taken_at, message.round) > (record.newest.taken_at, record.newest.round):
            # A replayed older result (spool after an outage) fills gaps below but never replaces a newer one.
            record.newest = ResultSummary.of(message, paths, taken_at, now)
        held_paths = record.paths
        for path in paths:
            held = held_paths.get((path.slot, path.family))
            if held is None or taken_at >= held.taken_at:
                held_paths[(path.slot, path.family)] = path
        if len(held_paths) > MAX_PATHS_PER_AGENT:
            oldest = sorted(held_paths.items(), key=lambda item: item[1].taken_at)
            for key, _ in oldest[: len(held_paths) - MAX_PATHS_PER_AGENT]:
                del held_paths[key]
        if message.control_ok:
            # Every result counts, replayed ones too, so loss over any window pools every packet. Unjudged stages
            # and results taken while the agent's control check failed say nothing about the relay: left out.
            counts = self.packets.get((message.server, message.agent))
            if counts is None:
                counts = self.packets[(message.server, message.agent)] = PacketCounts()
            counts.add_paths([path.stages for path in paths])
            self._note_failure(server, message.agent, paths, taken_at)
        for hook in self.on_kept:
            hook(message.server, message.agent, record)

    def _note_failure(self, server: ServerRecord, agent: str, paths: tuple[PathRecord, ...], taken_at: float) -> None:
        if server.last_failure is not None and taken_at <= server.last_failure.at:
            return
        worst: tuple[int, PathRecord, Stage] | None = None
        for path in paths:
            failed = None if path.ok else path.failed_stage
            if failed is not None and (worst is None or STAGE_RANK[failed.name] < worst[0]):
                worst = (STAGE_RANK[failed.name], path, failed)
        if worst is None:
            return
        _, path, stage = worst
        server.last_failure = Failure(
            at=taken_at,
            agent=agent,
            reason=path.reason,
            stage=StageName(stage.name),
            port=path.port,
            family=path.family,
            detail=stage.detail,
            evidence=path.evidence,
        )

    # -- judging ---------------------------------------------------------------------------------------------------

    def refresh(self) -> tuple[Change, ...]:
        """Judge every agent, and every relay whose verdict may have changed, at the clock's time; the changes, for
        the shell to log.

        A relay is re-judged when a result for it came in, when one of its inputs goes stale (`due`), or when an
        agent's standing changed (online, control check, schedule), which touches every relay. Judging 1,000 relays
        takes tens of milliseconds; a once-a-second refresh judges only the few that moved.
        """
        now = self.now()
        changes: list[Change] = []
        everything = False
        for info in self._agents.values():
            if info.held is not None and now >= info.held[2]:
                # Nothing newer came from the agent in all that time: the will was its own.
                info.status, info.status_at, _ = info.held
                info.held = None
            state = self._agent_state(info, now)
            if state is not info.state:
                changes.append(AgentChange(info.name, now, state, info.state))
                info.state, info.since = state, now
            standing = self._standing(info)
            if standing != info.standing:
                info.standing, everything = standing, True
        # Each agent's staleness limit once a pass, not once per relay and agent (it reads the agent's status).
        limits = {name: self.stale_after(name) for name in self._agents}
        for server in self._servers.values():
            if everything or now > server.due:
                change = self._settle(server, now, limits)
                if change is not None:
                    changes.append(change)
        self._changes.extend(changes)
        return tuple(changes)

    def drain_changes(self) -> list[Change]:
        """The changes found since the last drain, oldest first (for the shell's log)."""
        drained = list(self._changes)
        self._changes.clear()
        return drained

    def _standing(self, info: AgentInfo) -> tuple[bool, bool, float]:
        """What of an agent its votes on every relay depend on, besides its results and the clock."""
        online = info.status is None or info.status.online
        return (online, info.newest_control_ok and info.status_control_ok, self.stale_after(info.name))

    def _agent_state(self, info: AgentInfo, now: float) -> AgentState:
        if info.status is not None and not info.status.online:
            return AgentState.offline
        heard = max((t for t in (info.newest_taken_at, info.status_at) if t is not None), default=None)
        if heard is None or now - heard > self.stale_after(info.name):
            return AgentState.silent
        if not (info.newest_control_ok and info.status_control_ok):
            return AgentState.control_failed
        return AgentState.ok

    def _exclusion(self, agent: str, record: AgentRecord, now: float, limit: float) -> Exclusion | None:
        info = self._agents[agent]
        if info.status is not None and not info.status.online:
            return Exclusion.offline
        if now - record.newest.taken_at > limit:
            return Exclusion.stale
        if not (record.newest.control_ok and info.newest_control_ok and info.status_control_ok):
            return Exclusion.control_failed
        if not record.newest.paths:
            return Exclusion.no_paths
        return None

    def _settle(self, server: ServerRecord, now: float, limits: dict[str, float]) -> HealthChange | None:
        votes: list[Vote] = []
        judgements: list[AgentJudgement] = []
        failing: list[PathRecord] = []
        due = math.inf  # the first moment something counted here goes stale
        for agent, record in server.agents.items():
            limit = limits[agent]
            if now - record.newest.taken_at <= limit:
                due = min(due, record.newest.taken_at + limit)
            exclusion = self._exclusion(agent, record, now, limit)
            vote = None
            if exclusion is None:
                # One pass over the agent's paths: when the first fresh one goes stale, and which fresh ones fail
                # (all agent_vote needs of them: whether any fails).
                fresh_failing: list[PathRecord] = []
                for path in record.paths.values():
                    fresh_at = path.fresh_at
                    if path.control_ok and now - fresh_at <= limit:
                        due = min(due, fresh_at + limit)
                        if not path.ok:
                            fresh_failing.append(path)
                vote = agent_vote(record.newest.paths, fresh_failing)
                if vote is not None:
                    votes.append(vote)
                    failing += [path for path in record.newest.paths if not path.ok]
                    failing += fresh_failing
            judgement = self._judgements.get((agent, vote, exclusion))
            if judgement is None:  # a few per agent, immutable: made once rather than at every judging pass
                judgement = self._judgements[(agent, vote, exclusion)] = AgentJudgement(agent, vote, exclusion)
            judgements.append(judgement)
        verdict = judge(votes, self.health.quorum)
        server.verdict, server.judgements, server.due = verdict, tuple(judgements), due
        server.reason = worst_reason(failing)
        if verdict.state is server.state:
            return None
        change = HealthChange(server.relay.name, now, verdict.state, server.state, server.reason)
        server.history.append(change)
        server.state, server.since = verdict.state, now
        return change
