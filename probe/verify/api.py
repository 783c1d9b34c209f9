"""The aggregator's verification API, as both ends speak it: the aggregator answers with these models
(probe/aggregator/http.py) and `probe verify --aggregator` reads them back (probe/verify/aggregator.py).

    POST /api/v1/verifications             VerificationRequest -> 202 VerificationStarted
    GET  /api/v1/verifications/{id}[?after=N]                    -> 200 VerificationView
    GET  /api/v1/inventory                                       -> 200 InventoryView

POST publishes a `Command` (probe/messages.py) to every agent that is online with a good control check, QoS 1 and
not retained, on wgprobe/v1/commands/<agent>; each agent probes the servers at once on every path and answers with
ordinary results tagged with the request id. GET hands back those results as they come in. Field names are a
contract, as the messages': add fields, never rename them. Importing this module imports pydantic and the message
models only, so `probe verify` does not load the aggregator.
"""

from __future__ import annotations

import re
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator

from probe.configfile import _NAME as _AGENT_NAME  # the config's own rule for agent names
from probe.inventory import Inventory, InventoryFormat, Relay
from probe.inventory.model import _NAME as _RELAY_NAME  # the inventory's own rule for relay names
from probe.messages import ResultMessage

MAX_SERVERS = 1000  # servers one verification may name: a deploy step's canary or batch, not the whole fleet
REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
AgentWord = Literal["ok", "control_failed", "offline", "silent", "unknown"]  # the aggregator's AgentState, or unknown
Quorum = int | Literal["majority"]


def _quorum(value: object) -> Quorum:
    if value == "majority" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError('"majority" or a number of agents (1 or more)')


def _once(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))  # a name given twice is asked once


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ServerName = Annotated[str, Field(min_length=1, max_length=253, pattern=f"^{_RELAY_NAME.pattern}$")]
AgentName = Annotated[str, Field(min_length=1, max_length=63, pattern=f"^{_AGENT_NAME.pattern}$")]


class VerificationRequest(_Shape):
    """Ask every online agent to probe these servers now."""

    servers: Annotated[tuple[ServerName, ...], Field(min_length=1, max_length=MAX_SERVERS), AfterValidator(_once)]
    all_paths: bool = True  # every entry port range and both families; false: the main port on both families
    # Only these agents (each still only if online with a good control check); None: every such agent.
    agents: Annotated[tuple[AgentName, ...], Field(max_length=256), AfterValidator(_once)] | None = None


class NotAsked(_Shape):
    agent: str
    reason: str  # why no command went to it: its state, or the broker's refusal


class VerificationStarted(_Shape):
    """The verification as sent: whom it asked, and where to follow it."""

    request_id: str
    issued_at: datetime
    servers: tuple[str, ...]
    all_paths: bool
    agents: tuple[str, ...]  # the agents the command went to (the broker acknowledged it)
    not_asked: tuple[NotAsked, ...]  # agents known to the aggregator that were not asked, and why
    quorum: Annotated[Quorum, PlainValidator(_quorum)]  # the aggregator's [health] quorum, to judge the answers by
    location: str  # the URL path of the verification, for GET


class VerificationAgent(_Shape):
    agent: str
    state: AgentWord  # the agent's state now, as /api/v1/agents has it
    answered: int  # servers it has answered for so far


class VerificationView(_Shape):
    """The answers so far: every result tagged with the request id, in arrival order (`after` skips the first)."""

    request_id: str
    issued_at: datetime
    servers: tuple[str, ...]
    all_paths: bool
    quorum: Annotated[Quorum, PlainValidator(_quorum)]
    agents: tuple[VerificationAgent, ...]
    complete: bool  # every agent asked has answered for every server
    results_total: int  # results received so far; `results` holds those after the first `after` of them
    results: tuple[ResultMessage, ...]


class RelayView(_Shape):
    """A relay as the aggregator's inventory has it (probe.inventory.Relay's fields)."""

    name: str
    public_key: str
    ipv4_addr_in: IPv4Address
    ipv6_addr_in: IPv6Address | None
    egress_ipv4: IPv4Address
    egress_ipv6: IPv6Address | None
    active: bool
    location: str | None
    main_port: int
    port_ranges: tuple[tuple[int, int], ...]
    labels: dict[str, str]

    @classmethod
    def of(cls, relay: Relay) -> RelayView:
        return cls.model_validate(relay.model_dump())


class InventoryView(_Shape):
    """The relays the aggregator knows, for `probe verify --aggregator` to select from (locations, control groups)."""

    generated_at: datetime
    source: str  # where the aggregator loads it from (credentials never shown)
    format: InventoryFormat
    relays: tuple[RelayView, ...]

    @classmethod
    def of(cls, inventory: Inventory, *, source: str, at: datetime) -> InventoryView:
        relays = tuple(RelayView.of(relay) for relay in inventory.relays)
        return cls(generated_at=at, source=source, format=inventory.format, relays=relays)

    def inventory(self) -> Inventory:
        """As an Inventory again, every relay validated by the inventory's own model."""
        relays = tuple(Relay.model_validate(relay.model_dump()) for relay in self.relays)
        return Inventory(source=self.source, format=self.format, relays=relays)
