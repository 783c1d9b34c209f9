"""The probe result model: what `probe server --json` prints, what evidence files hold, and what agents will
publish over MQTT unchanged. Field names here are a contract (issue #4): add fields, never rename them.

Reasons are a closed set so they are safe as metric labels and readable in a table. A path's reason is its first
failing stage's; a server's is the reason of its worst path (the one that failed earliest in stage order).
"""

# No `from __future__ import annotations` here: pydantic would compile and evaluate every field's annotation string
# as the models are built at import (~2 M instructions of `probe server`'s cold start).
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class StageName(StrEnum):
    handshake = "handshake"  # initiation/response: the relay's WireGuard answers on this port
    tunnel = "tunnel"  # echo to the in-tunnel gateway: decryption and local delivery work
    forward = "forward"  # echo to the outside target through the relay's NAT
    egress = "egress"  # the reflector saw the relay's expected egress address
    mtu = "mtu"  # a large echo with DF set crosses the NAT: no MTU black hole

    @property
    def rank(self) -> int:
        return STAGE_ORDER.index(self)


STAGE_ORDER: tuple[StageName, ...] = (
    StageName.handshake,
    StageName.tunnel,
    StageName.forward,
    StageName.egress,
    StageName.mtu,
)


class Reason(StrEnum):
    """Why a stage failed. Closed: every failure maps to exactly one of these."""

    port_unreachable = "port_unreachable"  # ICMP port unreachable: nothing listens on the entry port
    handshake_timeout = "handshake_timeout"  # no valid response (wrong key, key not registered, filtered, down)
    cookie_failed = "cookie_failed"  # relay under load sent cookies but never accepted an initiation
    socket_error = "socket_error"  # the agent could not send at all (no route, namespace gone)
    tunnel_timeout = "tunnel_timeout"  # the in-tunnel gateway did not answer
    forward_timeout = "forward_timeout"  # the outside target did not answer through the NAT
    forward_unreachable = "forward_unreachable"  # the relay (or beyond) answered with an ICMP error
    reply_invalid = "reply_invalid"  # an answer came but was wrong (source, payload, checksum...)
    egress_timeout = "egress_timeout"  # the reflector did not answer
    egress_mismatch = "egress_mismatch"  # the reflector saw another address than the relay's expected egress
    mtu_blackhole = "mtu_blackhole"  # large packets vanish while small ones pass
    # A large DF packet drew "fragmentation needed / packet too big", or its answer came back fragmented.
    mtu_too_big = "mtu_too_big"
    tunnel_unreachable = "tunnel_unreachable"  # the in-tunnel gateway's echo drew an ICMP error
    egress_unreachable = "egress_unreachable"  # the reflector request drew an ICMP error (port closed, no route)
    internal_error = "internal_error"  # a bug in wgprobe: reported as a failed probe, never a crash


# Failures that are not the relay's: the vantage point could not send, or wgprobe has a bug.
NOT_THE_RELAYS: frozenset[Reason] = frozenset({Reason.socket_error, Reason.internal_error})


class _Model(BaseModel):
    # No NaN or Infinity: JSON has neither (pydantic writes them as null, which these models then refuse), so a
    # result holding one could not be read back from what the aggregator serves.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StageResult(_Model):
    name: StageName
    ok: bool
    reason: Reason | None = None
    # Median round-trip time of the stage's answered exchanges; when nothing was answered, the time waited.
    seconds: float
    loss: float = Field(ge=0.0, le=1.0)  # share of the stage's packets that got no answer
    # Never negative: the aggregator adds them to counters (wgprobe_stage_packets_*_total), which only go up.
    sent: int = Field(default=0, ge=0)
    received: int = Field(default=0, ge=0)
    detail: str | None = None  # one human line: what was seen (e.g. the egress address the reflector saw)
    # False when an earlier stage this one depends on failed (tunnel or forward): the stage ran or not, but its
    # outcome says nothing of its own, so `ok` is False, `reason` is None, and it counts as neither success nor
    # failure. A relay whose NAT is broken shows `forward_timeout` alone, not egress and mtu failures beside it
    # (a stage that got answers of its own through the NAT stays judged: its failure is its own).
    judged: bool = True
    # Datagrams from the relay for this stage that did not authenticate or parse (forged, corrupted, truncated):
    # for the handshake, answers that were not a valid response; afterwards, inner packets that did not parse.
    rejected: int = Field(default=0, ge=0)


class PathResult(_Model):
    port: int
    family: Literal["ipv4", "ipv6"]
    ok: bool
    reason: Reason | None = None
    stages: tuple[StageResult, ...]
    entry: str  # the relay address probed
    identity: int = 0  # which of the agent's identities (keys) probed this path, 0-based
    evidence: str | None = None  # pcap of the inner packets, saved when the path failed
    # Datagrams on this path no stage could take: transport messages that did not authenticate (forged,
    # corrupted, replayed) and inner packets that neither parsed nor carried one of our identifiers.
    rejected: int = Field(default=0, ge=0)

    @property
    def failed_stage(self) -> StageResult | None:
        return next((stage for stage in self.stages if not stage.ok), None)


class ServerResult(_Model):
    schema_version: int = SCHEMA_VERSION
    server: str
    agent: str
    ok: bool
    reason: Reason | None = None
    started_at: datetime
    duration_seconds: float
    paths: tuple[PathResult, ...]
    labels: dict[str, str] = Field(default_factory=dict)  # the relay's inventory labels (kernel, os, site...)
    evidence: str | None = None  # the JSON of this result, saved beside the pcaps when anything failed
    # Why evidence could not be saved (directory not writable, disk full): the result itself is never lost for it.
    evidence_error: str | None = None


def path_outcome(stages: tuple[StageResult, ...]) -> tuple[bool, Reason | None]:
    failed = next((stage for stage in stages if not stage.ok), None)
    return (failed is None, None if failed is None else failed.reason)


def blames_relay(result: ServerResult) -> bool:
    """Whether a path failed for what would be the relay's reason: only then is this host's own reach asked (the
    control check of `probe server`, `sweep` and `verify`)."""
    return any(not path.ok and path.reason is not None and path.reason not in NOT_THE_RELAYS for path in result.paths)


def worst_reason(paths: tuple[PathResult, ...]) -> Reason | None:
    """The reason of the path that failed at the earliest stage (first such path on a tie)."""
    worst: tuple[int, Reason] | None = None
    for path in paths:
        failed = path.failed_stage
        if failed is None or failed.reason is None:
            continue
        if worst is None or failed.name.rank < worst[0]:
            worst = (failed.name.rank, failed.reason)
    return None if worst is None else worst[1]
