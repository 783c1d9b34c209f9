"""Messages as agents publish them, built in a line, for tests of the aggregator and whatever sits around it.

    clock = FakeClock(1_800_000_000.0)
    message = make_result("se-got-wg-001", "agent-a", taken_at=clock(), fail={51820: StageName.forward})
    store.ingest_result(payload(message), result_topic(message.agent, message.server))

Shipped in the package (like wireguard-go's `conn/bindtest`) so the tests of the MQTT and HTTP shells use the same
messages as the store's.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from pydantic import BaseModel

from probe.inventory import Inventory, InventoryFormat, Relay
from probe.messages import AgentStatus, ControlCheck, ResultMessage
from probe.results import STAGE_ORDER, PathResult, Reason, StageName, StageResult, path_outcome, worst_reason

# The reason a stage fails with when a test does not say: its timeout, as a relay that drops traffic gives.
DEFAULT_REASONS: dict[StageName, Reason] = {
    StageName.handshake: Reason.handshake_timeout,
    StageName.tunnel: Reason.tunnel_timeout,
    StageName.forward: Reason.forward_timeout,
    StageName.egress: Reason.egress_timeout,
    StageName.mtu: Reason.mtu_blackhole,
}
# Stages whose failure leaves the later ones unjudged (their outcome says nothing of their own).
_GATES = {StageName.tunnel: STAGE_ORDER[2:], StageName.forward: STAGE_ORDER[3:]}
_ids = itertools.count(1)


@dataclass
class FakeClock:
    """A clock that moves only when told: `now: Callable[[], float]` for the store."""

    at: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> float:
        self.at += seconds
        return self.at


MULLVAD_PORT_RANGES = ((53, 53), (123, 123), (4000, 33433), (33565, 51820), (52001, 60000))


def make_inventory(
    names: Iterable[str],
    *,
    port_ranges: tuple[tuple[int, int], ...] = MULLVAD_PORT_RANGES,
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Inventory:
    """An inventory of dual-stack relays named `names` (location from the name: "se-got-wg-001" is in "se-got"),
    with per-relay `labels`."""
    relays = []
    for n, name in enumerate(names):
        key = base64.b64encode(hashlib.blake2s(name.encode()).digest()).decode()
        relays.append(
            Relay(
                name=name,
                public_key=key,
                ipv4_addr_in=IPv4Address("198.18.0.0") + 256 + n,
                ipv6_addr_in=IPv6Address("fd77:7770::") + 256 + n,
                location="-".join(name.split("-")[:2]) if name.count("-") >= 2 else None,
                port_ranges=port_ranges,
                labels=dict((labels or {}).get(name, {})),
            )
        )
    return Inventory(source="<test>", format=InventoryFormat.TOML, relays=tuple(relays))


def make_stage(
    name: StageName,
    *,
    ok: bool = True,
    reason: Reason | None = None,
    judged: bool = True,
    sent: int = 3,
    received: int | None = None,
    seconds: float = 0.012,
) -> StageResult:
    if received is None:
        received = sent if ok else 0
    return StageResult(
        name=name,
        ok=ok and judged,
        reason=(reason or DEFAULT_REASONS[name]) if judged and not ok else None,
        seconds=seconds,
        loss=0.0 if sent == 0 else round((sent - received) / sent, 6),
        sent=sent,
        received=received,
        judged=judged,
    )


def make_path(
    port: int = 51820,
    family: Literal["ipv4", "ipv6"] = "ipv4",
    *,
    fail: StageName | None = None,
    reason: Reason | None = None,
    sent: int = 3,
    received: int | None = None,
    evidence: str | None = None,
) -> PathResult:
    """A path through every stage; with `fail`, that stage fails and what depends on it is unjudged (a failed
    handshake ends the path, as the runner does). `sent`/`received` apply to every stage that passes."""
    stages: list[StageResult] = []
    unjudged = _GATES.get(fail, ()) if fail else ()
    for name in STAGE_ORDER:
        if name == fail:
            stages.append(make_stage(name, ok=False, reason=reason, sent=sent))
            if name is StageName.handshake:
                break
        elif name in unjudged:
            stages.append(make_stage(name, ok=False, judged=False, sent=sent, received=0))
        else:
            stages.append(make_stage(name, sent=sent, received=received))
    ok, path_reason = path_outcome(tuple(stages))
    entry = "192.0.2.1" if family == "ipv4" else "2001:db8::1"
    return PathResult(
        port=port,
        family=family,
        ok=ok,
        reason=path_reason,
        stages=tuple(stages),
        entry=entry,
        evidence=evidence if not ok else None,
    )


def make_result(
    server: str,
    agent: str,
    *,
    taken_at: float,
    round: int = 0,  # the contract's field name, shadowing the builtin here only
    ports: Iterable[int] = (51820,),
    families: Iterable[Literal["ipv4", "ipv6"]] = ("ipv4", "ipv6"),
    fail: Mapping[Any, StageName] | StageName | None = None,  # keys: port, or (port, family)
    control_ok: bool = True,
    result_id: str | None = None,
    sent: int = 3,
    received: int | None = None,
    paths: Iterable[PathResult] | None = None,
) -> ResultMessage:
    """A result of one relay from one agent. `fail` is a stage every path fails at, or per port (or per
    (port, family)) the stage that path fails at; `paths` replaces the generated paths altogether."""
    if paths is None:
        built = []
        for family in families:
            for port in ports:
                if isinstance(fail, StageName) or fail is None:
                    stage = fail
                else:
                    stage = fail.get((port, family), fail.get(port))
                built.append(make_path(port, family, fail=stage, sent=sent, received=received))
        paths = built
    path_tuple = tuple(paths)
    reason = worst_reason(path_tuple)
    return ResultMessage(
        server=server,
        agent=agent,
        ok=all(p.ok for p in path_tuple),
        reason=reason,
        started_at=datetime.fromtimestamp(taken_at, UTC),
        duration_seconds=0.05,
        paths=path_tuple,
        result_id=result_id or f"{agent}-{next(_ids)}",
        round=round,
        control_ok=control_ok,
    )


def make_status(
    agent: str,
    *,
    at: float,
    online: bool = True,
    control_ok: bool = True,
    interval_seconds: float | None = 15.0,
    detail: str | None = None,
    broker_ok: bool | None = None,
) -> AgentStatus:
    moment = datetime.fromtimestamp(at, UTC)
    control = ControlCheck(
        ok=control_ok, checked_at=moment, detail=detail if not control_ok else None, broker_ok=broker_ok
    )
    return AgentStatus(
        agent=agent,
        online=online,
        version="test",
        started_at=moment,
        updated_at=moment,
        interval_seconds=interval_seconds,
        control=control,
    )


def payload(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()
