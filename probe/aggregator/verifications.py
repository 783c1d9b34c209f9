"""The verifications the aggregator has sent (`POST /api/v1/verifications`) and the results that answered them.
Sans-I/O like the store: a clock in, no MQTT or HTTP inside.

Theory of operation. `open` makes a request id and the `Command` for the agents; the HTTP shell publishes it to each
agent (probe/aggregator/http.py) and `sent` records which of them the broker acknowledged. Results come in through
`Tagged`, a MessageSink around the store: a result the store accepted (so re-sends are already gone) whose
`request_id` names an open verification, from an agent it asked, for a server it named, is kept here too, once per
agent and server, in arrival order; GET reads them back after a cursor. The same results are ordinary results for the
store: they are newer than the scheduled ones before them, and replace nothing newer (the store orders by when a
result was taken).

Bounded: at most `capacity` verifications, each forgotten `keep_seconds` after it was issued, and at most
`max_results` answers expected (servers x agents) over all of them: the oldest are forgotten first to make room,
and one that alone expects more is refused. At most `per_minute` are opened in any minute, since each one costs
every agent a probe of every path of every server named.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from probe.aggregator.intake import Ingested
from probe.aggregator.store import ResultStore
from probe.messages import Command, ResultMessage
from probe.verify.api import AgentWord, NotAsked, Quorum, VerificationAgent, VerificationView

DEFAULT_CAPACITY = 64
KEEP_SECONDS = 3600.0
# Answers expected over every verification kept (servers x agents): a deploy batch of 1,000 relays from five
# vantage points; ~150 MB of parsed results at the very worst, a few MB for a canary.
MAX_RESULTS = 5_000
PER_MINUTE = 60
# How a result that answers no command serialises its request id (pydantic's compact JSON): such a payload, nearly
# every one, is not parsed a second time.
_UNTAGGED = b'"request_id":null'


class TooMany(Exception):
    """More verifications in the last minute than allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"more than the allowed verifications a minute; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


class TooLarge(Exception):
    """A verification that would expect more answers than allowed."""


@dataclass
class Verification:
    request_id: str
    issued_at: float
    servers: tuple[str, ...]
    all_paths: bool
    agents: tuple[str, ...]  # asked: those the command is sent to, then those the broker acknowledged
    not_asked: dict[str, str] = field(default_factory=dict)  # agent -> why no command went to it
    results: list[ResultMessage] = field(default_factory=list)  # arrival order
    answered: dict[str, set[str]] = field(default_factory=dict)  # agent -> servers it has answered for

    def command(self) -> Command:
        return Command(
            request_id=self.request_id,
            servers=self.servers,
            all_paths=self.all_paths,
            issued_at=datetime.fromtimestamp(self.issued_at, UTC),
        )

    @property
    def expected(self) -> int:
        """Answers this verification can hold at most: one per server and agent asked."""
        return len(self.servers) * len(self.agents)

    @property
    def complete(self) -> bool:
        return all(len(self.answered.get(agent, ())) == len(self.servers) for agent in self.agents)

    def not_asked_list(self) -> tuple[NotAsked, ...]:
        return tuple(NotAsked(agent=agent, reason=why) for agent, why in sorted(self.not_asked.items()))


class Verifications:
    def __init__(
        self,
        *,
        now: Callable[[], float],
        capacity: int = DEFAULT_CAPACITY,
        keep_seconds: float = KEEP_SECONDS,
        max_results: int = MAX_RESULTS,
        per_minute: int = PER_MINUTE,
    ) -> None:
        self.now = now
        self.capacity = capacity
        self.keep_seconds = keep_seconds
        self.max_results = max_results
        self.per_minute = per_minute
        self._open: OrderedDict[str, Verification] = OrderedDict()
        self._opened: deque[float] = deque()  # when the verifications of the last minute were opened

    def open(self, servers: Sequence[str], agents: Sequence[str], *, all_paths: bool = True) -> Verification:
        """A new verification of `servers` by `agents`: TooLarge or TooMany when it may not be sent."""
        now = self.now()
        self._expire(now)
        if len(servers) * len(agents) > self.max_results:
            raise TooLarge(
                f"{len(servers)} servers x {len(agents)} agents is more than {self.max_results} answers to wait for"
            )
        while self._opened and self._opened[0] <= now - 60.0:
            self._opened.popleft()
        if len(self._opened) >= self.per_minute:
            raise TooMany(retry_after=max(1.0, self._opened[0] + 60.0 - now))
        self._opened.append(now)
        verification = Verification(uuid.uuid4().hex, now, tuple(servers), all_paths, tuple(agents))
        while self._open and (
            len(self._open) >= self.capacity or self._expected() + verification.expected > self.max_results
        ):
            self._open.popitem(last=False)
        self._open[verification.request_id] = verification
        return verification

    def _expected(self) -> int:
        return sum(verification.expected for verification in self._open.values())

    def sent(self, request_id: str, refused: Mapping[str, str]) -> None:
        """The command reached every agent asked but those in `refused` (agent -> why)."""
        verification = self._open.get(request_id)
        if verification is None:
            return
        verification.agents = tuple(agent for agent in verification.agents if agent not in refused)
        verification.not_asked.update(refused)

    def forget(self, request_id: str) -> None:
        self._open.pop(request_id, None)

    def get(self, request_id: str) -> Verification | None:
        self._expire(self.now())
        return self._open.get(request_id)

    def record(self, message: ResultMessage) -> bool:
        """Keep `message` if it answers an open verification (once per agent and server); whether it was kept."""
        if message.request_id is None:
            return False
        verification = self._open.get(message.request_id)
        if verification is None or message.agent not in verification.agents:
            return False
        if message.server not in verification.servers:
            return False
        done = verification.answered.setdefault(message.agent, set())
        if message.server in done:
            return False
        done.add(message.server)
        verification.results.append(message)
        return True

    def _expire(self, now: float) -> None:
        while self._open:
            oldest = next(iter(self._open.values()))
            if now - oldest.issued_at <= self.keep_seconds:
                return
            self._open.popitem(last=False)


def view(
    verification: Verification, states: Mapping[str, AgentWord], quorum: Quorum, *, after: int = 0
) -> VerificationView:
    """What GET answers: the answers so far, those after the first `after`."""
    agents = tuple(
        VerificationAgent(
            agent=agent, state=states.get(agent, "unknown"), answered=len(verification.answered.get(agent, ()))
        )
        for agent in verification.agents
    )
    return VerificationView(
        request_id=verification.request_id,
        issued_at=datetime.fromtimestamp(verification.issued_at, UTC),
        servers=verification.servers,
        all_paths=verification.all_paths,
        quorum=quorum,
        agents=agents,
        complete=verification.complete,
        results_total=len(verification.results),
        results=tuple(verification.results[after:]),
    )


class Tagged:
    """A MessageSink (probe/aggregator/subscriber.py) around the store: every message to the store, and a result
    the store accepted that answers a verification to `verifications` as well."""

    def __init__(self, store: ResultStore, verifications: Verifications) -> None:
        self.store = store
        self.verifications = verifications

    def ingest_result(self, payload: bytes | bytearray, topic: str) -> Ingested:
        ingested = self.store.ingest_result(payload, topic)
        # rfind, not `in`: request_id is the payload's last field, and a forward search through ~10 KB of JSON full of
        # the pattern's letters costs ~8 us a result against ~0.1 us from the end.
        if ingested.accepted and payload.rfind(_UNTAGGED) < 0:
            # Parsed a second time, but only for the few results that may answer a command; the store has just
            # accepted it, so it is a valid ResultMessage.
            self.verifications.record(ResultMessage.model_validate_json(payload))
        return ingested

    def ingest_status(self, payload: bytes | bytearray, topic: str, *, live: bool = True) -> Ingested:
        return self.store.ingest_status(payload, topic, live=live)

    def broker_connection(self, up: bool) -> int:
        return self.store.broker_connection(up)
