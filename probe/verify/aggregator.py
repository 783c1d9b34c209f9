"""The aggregator source (`probe verify --aggregator URL`): every online agent probes the servers now, on the
aggregator's command, and each agent is a vantage point of its own, judged by the aggregator's quorum.

Theory of operation. A pass is a few rounds of commands, all within `timeout` seconds of its start:

- POST /api/v1/verifications with the servers (probe/verify/api.py): the aggregator publishes the command to every
  agent online with a good control check and answers whom it asked and its quorum. The first answer of a pass
  names the vantage points (`accept.expect`): a server's verdict then needs a quorum of them.
- GET /api/v1/verifications/{id}?after=N every `poll` seconds, for each command still owed answers: each new
  result is one round of that server from that agent (`accept`). An agent whose answer leaves a server wanting
  another round from it (as the judging rules say: two good rounds pass a server, two failed ones fail it) is asked
  again at once, in a command to just the agents wanting the same servers: a slow agent holds up no other.
- Whatever will not answer is given up, never waited for past the pass's time and never passed: an agent the
  aggregator reports offline or silent meanwhile (`give_up(agent)`), every answer still missing when `timeout` is
  up, everything when the aggregator asked no agent or cannot be reached for the rest of the pass. The verdicts
  left open are inconclusive (exit 3).

A refusal that retrying cannot cure (an unknown server, a request the aggregator does not understand) is a
ConfigError; the aggregator unreachable or busy (HTTP 429, 5xx but 503, a connection error) is tried again with
backoff until the pass's time is up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import ValidationError

from probe import __version__
from probe.errors import ConfigError, UnavailableError
from probe.inputs import redact_url
from probe.inventory import Inventory, Relay
from probe.term import clean
from probe.verify.api import InventoryView, VerificationRequest, VerificationStarted, VerificationView
from probe.verify.judge import Observation
from probe.verify.source import Sink

if TYPE_CHECKING:
    import aiohttp

DEFAULT_TIMEOUT = 30.0  # seconds a pass waits for the agents' answers
POLL_SECONDS = 0.2
REQUEST_SECONDS = 10.0  # one HTTP request, at most
GONE = ("offline", "silent")  # agent states that mean no answer will come
_RETRY = (0.5, 4.0)  # first and longest wait before trying the aggregator again
_SHOWN = 300  # characters of an error body quoted
# The largest answer read: an inventory of thousands of relays with their labels is a few MiB. Anything larger is
# not an aggregator's answer, and reading it whole would take the memory of the deploy pipeline's host.
MAX_ANSWER = 32 << 20


class AnswerTooLarge(Exception):
    """An answer over MAX_ANSWER bytes."""


async def _read(response: aiohttp.ClientResponse) -> bytes:
    """The body of `response`, at most MAX_ANSWER bytes: AnswerTooLarge beyond (read no further)."""
    if (response.content_length or 0) > MAX_ANSWER:
        raise AnswerTooLarge
    chunks, total = [], 0
    async for chunk in response.content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > MAX_ANSWER:
            raise AnswerTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def aggregator_url(text: str) -> str:
    """The base URL of an aggregator (http or https, a host, an optional path prefix); ConfigError otherwise."""
    shown = clean(redact_url(text[:100]))  # a password given in the URL never appears in a message
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as e:
        raise ConfigError(f"--aggregator {shown!r}: not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--aggregator {shown!r}: give http://HOST:PORT or https://HOST:PORT")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"--aggregator {shown!r}: no credentials, query or fragment")
    return text.strip().rstrip("/")


# Every request says allow_redirects=False: an aggregator answers itself, so a 3xx is an answer like any other, named
# as such, rather than a request the deploy pipeline's host sends on to wherever it points.
def _session(timeout: float) -> aiohttp.ClientSession:
    import aiohttp

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), headers={"User-Agent": f"wgprobe-verify/{__version__}"}
    )


async def fetch_inventory(base: str, *, timeout: float = REQUEST_SECONDS) -> Inventory:
    """The relays the aggregator knows: UnavailableError when it cannot be reached, ConfigError when what answers
    is not a wgprobe aggregator."""
    import aiohttp

    url = f"{base}/api/v1/inventory"
    try:
        async with _session(timeout) as http, http.get(url, allow_redirects=False) as response:
            body = await _read(response)
            status = response.status
    except AnswerTooLarge:
        too_large = f"{clean(url)} answered more than {MAX_ANSWER >> 20} MiB: is it a wgprobe aggregator?"
        raise ConfigError(too_large) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise UnavailableError(f"the aggregator at {clean(base)} cannot be reached: {_why(e)}") from None
    if status >= 500:
        raise UnavailableError(f"the aggregator at {clean(base)} answered HTTP {status}: {_quote(body)}")
    if status != 200:
        raise ConfigError(f"{clean(url)} answered HTTP {status}: is {clean(base)} a wgprobe aggregator?")
    try:
        return InventoryView.model_validate_json(body).inventory()
    except ValidationError:
        raise ConfigError(f"{clean(url)} did not answer with an inventory: is it a wgprobe aggregator?") from None


class AggregatorSource:
    mode = "aggregator"

    def __init__(self, base: str, *, timeout: float = DEFAULT_TIMEOUT, poll: float = POLL_SECONDS) -> None:
        self.base = base
        self.timeout = timeout
        self.poll = poll
        self.asked: list[str] = []  # the agents of the last pass's first command

    def vantage_points(self) -> list[str]:
        return list(self.asked)

    def describe(self) -> str:
        where = f"the aggregator at {self.base}"
        return f"{', '.join(self.asked)} via {where}" if self.asked else f"the agents of {where}"

    async def run(self, relays: Sequence[Relay], accept: Sink) -> None:
        deadline = time.monotonic() + self.timeout
        async with _session(min(REQUEST_SECONDS, self.timeout)) as http:
            await _Pass(self, http, accept, [relay.name for relay in relays], deadline).run()

    async def close(self) -> None:
        """Nothing held between passes: each pass opens and closes its own HTTP session."""


class _Pass:
    """One pass: the first command to every online agent, then another to each agent as soon as it has answered and
    a server still wants a round from it (agents wanting the same servers share a command)."""

    def __init__(
        self, source: AggregatorSource, http: aiohttp.ClientSession, accept: Sink, servers: list[str], deadline: float
    ) -> None:
        self.source = source
        self.http = http
        self.accept = accept
        self.servers = servers
        self.deadline = deadline
        self.owed: dict[str, set[tuple[str, str]]] = {}  # request id -> (server, agent) answers it still owes
        self.read: dict[str, int] = {}  # request id -> results read
        self.ready: set[tuple[str, str]] = set()  # answered, and wanting another round
        self.rounds: Counter[tuple[str, str]] = Counter()
        self.gone: set[str] = set()
        self.trouble: str | None = None  # why the last poll failed, for the give-up's message

    async def run(self) -> None:
        started = await self._start(self.servers, None)
        if started is None:
            return
        self.source.asked = list(started.agents)
        self.accept.expect(started.agents, started.quorum)
        self._owe(started, self.servers)
        while True:
            if self.ready and not await self._ask_again():
                return
            self.owed = {request: owed for request, owed in self.owed.items() if owed}
            if not self.owed:
                return
            if not await self._pause(self.source.poll):
                last = f"; last: {self.trouble}" if self.trouble else ""
                self.accept.give_up(None, f"no answer within {self.source.timeout:g} s{last}")
                return
            for request_id in list(self.owed):
                await self._poll(request_id)

    async def _ask_again(self) -> bool:
        """A command per set of servers wanted, to the agents wanting them; False when given up."""
        by_agent: dict[str, set[str]] = {}
        for server, agent in self.ready:
            by_agent.setdefault(agent, set()).add(server)
        self.ready = set()
        groups: dict[tuple[str, ...], list[str]] = {}
        for agent, servers in sorted(by_agent.items()):
            groups.setdefault(tuple(sorted(servers)), []).append(agent)
        for wanted, agents in groups.items():
            started = await self._start(list(wanted), agents)
            if started is None:
                return False
            why = {item.agent: item.reason for item in started.not_asked}
            for agent in agents:
                if agent not in started.agents:
                    self._give_up(agent, f"not asked again: {why.get(agent, 'no longer online')}")
            self._owe(started, wanted)
        return True

    def _owe(self, started: VerificationStarted, servers: Sequence[str]) -> None:
        agents = [agent for agent in started.agents if agent not in self.gone]
        self.owed[started.request_id] = {(server, agent) for server in servers for agent in agents}
        self.read[started.request_id] = 0

    async def _poll(self, request_id: str) -> None:
        view, trouble = await self._get(request_id, self.read[request_id])
        if view is None:
            self.trouble = trouble
            return
        self.read[request_id] += len(view.results)
        owed = self.owed.get(request_id, set())
        for message in view.results:
            key = (message.server, message.agent)
            if key not in owed:
                continue  # not owed: answered already, or from an agent given up
            owed.discard(key)
            self.rounds[key] += 1
            observation = Observation(
                vantage=message.agent, round=self.rounds[key], result=message, control_ok=message.control_ok
            )
            if self.accept(observation):
                self.ready.add(key)
        for agent in view.agents:
            if agent.state in GONE and agent.agent not in self.gone:
                self._give_up(agent.agent, f"went {agent.state} before answering")

    def _give_up(self, agent: str, why: str) -> None:
        self.gone.add(agent)
        for owed in self.owed.values():
            owed -= {key for key in owed if key[1] == agent}
        self.ready = {key for key in self.ready if key[1] != agent}
        self.accept.give_up(agent, why)

    async def _start(self, servers: list[str], agents: list[str] | None) -> VerificationStarted | None:
        """POST the command; None when given up (the aggregator asked no agent, or could not be reached in time)."""
        import aiohttp

        body = VerificationRequest(servers=tuple(servers), agents=None if agents is None else tuple(agents))
        url = f"{self.source.base}/api/v1/verifications"
        delay = _RETRY[0]
        while True:
            try:
                async with self.http.post(
                    url,
                    data=body.model_dump_json(),
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                ) as response:
                    text, status = await _read(response), response.status
                    retry_after = response.headers.get("Retry-After", "")
            except AnswerTooLarge:
                too_large = f"the aggregator at {self.source.base}: an answer over {MAX_ANSWER >> 20} MiB"
                self.accept.give_up(None, too_large)
                return None
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                problem = f"cannot be reached: {_why(e)}"
            else:
                if status in (200, 201, 202):  # 202 from wgprobe; a proxy in front may say 200 or 201
                    try:
                        return VerificationStarted.model_validate_json(text)
                    except ValidationError:
                        self.accept.give_up(None, f"the aggregator at {self.source.base}: not a verification answer")
                        return None
                if status in (400, 404, 413, 415):
                    raise ConfigError(f"the aggregator at {clean(self.source.base)} refused: {_quote(text)}")
                if status == 503:
                    self.accept.give_up(None, f"the aggregator asked no agent: {_quote(text)}")
                    return None
                problem = f"answered HTTP {status}: {_quote(text)}"
                if status == 429 and retry_after.isdecimal():
                    delay = max(delay, float(retry_after))
            if not await self._pause(delay):
                self.accept.give_up(None, f"the aggregator at {self.source.base} {problem}")
                return None
            delay = min(_RETRY[1], delay * 2)

    async def _get(self, request_id: str, after: int) -> tuple[VerificationView | None, str | None]:
        """The verification's answers after the first `after`, or why not this time."""
        import aiohttp

        url = f"{self.source.base}/api/v1/verifications/{request_id}"
        try:
            async with self.http.get(url, params={"after": str(after)}, allow_redirects=False) as response:
                text, status = await _read(response), response.status
        except AnswerTooLarge:
            return None, f"the aggregator's answer is over {MAX_ANSWER >> 20} MiB"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return None, f"the aggregator cannot be reached: {_why(e)}"
        if status == 404:
            return None, "the aggregator does not know the verification (restarted?)"
        if status != 200:
            return None, f"the aggregator answered HTTP {status}: {_quote(text)}"
        try:
            return VerificationView.model_validate_json(text), None
        except ValidationError:
            return None, "the aggregator's answer is not a verification"

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` unless that passes the deadline: whether there is time left to go on."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(seconds, left))
        return True


def _why(error: BaseException) -> str:
    return clean(str(error) or type(error).__name__)[:_SHOWN]


def _quote(body: bytes) -> str:
    """An error answer's detail (an ApiError's, or the start of the body), printable."""
    try:
        data = json.loads(body)
        text = str(data.get("detail", data)) if isinstance(data, dict) else str(data)
    except ValueError:
        text = body.decode(errors="replace")
    return clean(text.strip())[:_SHOWN] or "(no detail)"
