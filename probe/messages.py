"""What agents and the aggregator say to each other over MQTT (or the in-process bus of `probe serve`).

Topics (all under one versioned root, so a v2 can run beside v1 on one broker):

    wgprobe/v1/results/<agent>/<server>    ResultMessage, QoS 1, retained: the latest result per agent and relay
    wgprobe/v1/agents/<agent>/status       AgentStatus, QoS 1, retained; the last will says online=false
    wgprobe/v1/commands/<agent>            Command (probe these relays now), QoS 1, not retained

A result message is the `probe server --json` object (`ServerResult`) plus the fields that make it a delivery:
`result_id` (unique, the same on every re-send, so the aggregator de-duplicates), the round it belongs to, and
whether the agent's own control check held when it was taken (a result taken while it did not is the agent's
problem, never the relay's). Field names are a contract: add fields, never rename them.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from probe.results import SCHEMA_VERSION, ServerResult

TOPIC_ROOT = "wgprobe/v1"
# Agent and server names are held to [A-Za-z0-9._-] by the config and inventory models, so they never carry the
# MQTT wildcards '+' and '#' or the level separator '/'.


def result_topic(agent: str, server: str) -> str:
    return f"{TOPIC_ROOT}/results/{agent}/{server}"


def status_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/status"


def command_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/commands/{agent}"


RESULTS_FILTER = f"{TOPIC_ROOT}/results/+/+"
STATUS_FILTER = f"{TOPIC_ROOT}/agents/+/status"


class ResultMessage(ServerResult):
    """One relay's result from one agent in one round, as published."""

    result_id: str = Field(min_length=1, max_length=64)
    round: int = Field(ge=0)
    control_ok: bool  # the agent's control check (its own reach, through no relay) held when this was taken
    request_id: str | None = Field(default=None, max_length=64)  # set when taken for a `probe verify` command


class ControlCheck(BaseModel):
    """The agent's own reach, through no relay: if this fails, its relay results say nothing about the relays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    checked_at: datetime
    detail: str | None = None  # what failed, e.g. "reflector 198.18.0.2:7777: no answer in 1s"
    # Whether the agent's link to the aggregator held at the check: its MQTT connection (`probe serve`'s in-process
    # bus always holds; None where there is none, as in `probe server`). Reported, and not part of `ok`: a result
    # taken while only the broker was out of reach measured the relay like any other; it waits in the spool and must
    # count when it arrives, which is what the spool is for. The agent's own network down fails `ok` through the
    # reflector and the forward target, which sit beyond the same network.
    broker_ok: bool | None = None


# An agent probes each extended port range one round in this many (agents/schedule.py); its status says so, and the
# aggregator assumes this for an agent whose status does not.
DEFAULT_ROTATION_ROUNDS = 4
MAX_ROTATION_ROUNDS = 100


class AgentStatus(BaseModel):
    """An agent's retained status; its last will is the same message with online=false."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    agent: str
    online: bool
    version: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None
    interval_seconds: float | None = None
    # One round in this many visits each extended port range (the aggregator keeps those paths fresh that long).
    rotation_rounds: int | None = None
    inventory_size: int = 0
    inventory_age_seconds: float | None = None
    round: int | None = None
    round_seconds: float | None = None  # how long the last round took
    control: ControlCheck | None = None


class Command(BaseModel):
    """Ask an agent to probe these relays now (the `probe verify --aggregator` path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    request_id: str = Field(min_length=1, max_length=64)
    servers: tuple[str, ...] = Field(min_length=1, max_length=10_000)
    all_paths: bool = True  # every entry port range and family, not only the round's rotation
    issued_at: datetime
