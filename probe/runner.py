"""Probe one relay on all its paths, the way customers use it, and say exactly what is broken.

A relay's paths are its main port plus one port from each inventory port range (rotating from run to run so a
whole range is covered over time), on IPv4 and, where the relay has one, its IPv6 entry address. Paths are dealt
round-robin to the agent's identities: one key has one session and one endpoint per relay (DESIGN.md), so a key's
paths to a relay run one after another, while different keys run side by side.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from probe.config import ProbeConfig
from probe.evidence import EvidenceStore
from probe.inventory import Inventory, Relay
from probe.packets import EvidenceError
from probe.results import (
    SCHEMA_VERSION,
    PathResult,
    Reason,
    ServerResult,
    StageName,
    StageResult,
    path_outcome,
    worst_reason,
)
from probe.stages import REGISTRY, Registry
from probe.stages.base import Exchange, PathContext, Settings
from probe.stages.driver import drive
from probe.tunnel import FIRST_GAP_UNKNOWN, INITIATION_SPACING, Record
from probe.wireguard import CookieState, Identity, PrivateKey, PublicKey
from probe.wireguard.attempts import Schedule

# A prime stride: successive rotations visit a range's ports in a scattered, non-repeating order, every port once
# per `candidates` rotations, as long as the stride and the range's port count have no common factor. A range of a
# multiple of 7919 ports (15,838 or 23,757 of them, say, in a fleet file) would visit only a few ports, so such a
# range takes the second prime: no range of ports (at most 65,535) is a multiple of both.
_SPREAD = 7919
_SPREAD_ALTERNATIVE = 7907
# With the relay's round trip known from its last handshake, a lost initiation is sent again after this many round
# trips: late enough that an answer still in flight is rare (see probe/wireguard/attempts.py), soon enough that
# loss costs little.
FIRST_GAP_RTTS = 4.0


class PathSpec(NamedTuple):
    port: int
    entry: IPv4Address | IPv6Address

    @property
    def family(self) -> str:
        return "ipv4" if self.entry.version == 4 else "ipv6"


def rotation_now() -> int:
    """The default rotation: one step per minute, so repeated one-off runs also walk the ranges."""
    return int(time.time() // 60)


def plan_paths(
    relay: Relay,
    *,
    rotation: int,
    main_port: int | None = None,
    only_port: int | None = None,
    family: str | None = None,
) -> list[PathSpec]:
    main = main_port or relay.main_port
    if only_port is not None:
        ports = [only_port]
    else:
        ports = [main]
        salt = zlib.crc32(relay.name.encode())
        for low, high in relay.port_ranges:
            candidates = high - low + 1 - (1 if low <= main <= high else 0)
            if candidates <= 0:
                continue
            stride = _SPREAD if candidates % _SPREAD else _SPREAD_ALTERNATIVE
            offset = (rotation * stride + salt) % candidates
            port = low + offset
            if low <= main <= port:
                port += 1  # skip the main port: it is probed anyway
            if port not in ports:
                ports.append(port)
    entries: list[IPv4Address | IPv6Address] = []
    if family in (None, "ipv4"):
        entries.append(relay.ipv4_addr_in)
    if family in (None, "ipv6") and relay.ipv6_addr_in is not None:
        entries.append(relay.ipv6_addr_in)
    return [PathSpec(port, entry) for entry in entries for port in ports]


def settings_from(config: ProbeConfig, inventory: Inventory) -> Settings:
    checks, probe = config.checks, config.probe
    refl_v4 = checks.reflector_for(4)
    refl_v6 = checks.reflector_for(6)
    return Settings(
        timeout=probe.timeout,
        packets=probe.packets,
        handshake_timeout=probe.handshake_timeout,
        handshake_attempts=probe.handshake_attempts,
        forward_target=checks.forward_target,
        forward_target_v6=checks.forward_target_v6,
        reflector=(refl_v4.host, refl_v4.port) if refl_v4 else None,
        reflector_v6=(refl_v6.host, refl_v6.port) if refl_v6 else None,
        gateway=inventory.ipv4_gateway,
        gateway_v6=inventory.ipv6_gateway,
        netns=config.agent.netns,
    )


class Prober:
    """Agent-wide probing state: keys (with their monotonic timestamps), cookies, per-key-per-relay locks, and each
    relay's last handshake round trip (it sets how soon a lost initiation is sent again)."""

    def __init__(self, config: ProbeConfig, inventory: Inventory, *, evidence: bool = True) -> None:
        self.config = config
        self.inventory = inventory
        self.settings = settings_from(config, inventory)
        self.identities = [Identity(PrivateKey(ident.private_key)) for ident in config.identities]
        self.evidence = EvidenceStore.from_config(config.probe) if evidence else None
        self.registry = REGISTRY
        self._cookies: dict[tuple[int, str], CookieState] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._rtt: dict[str, float] = {}
        self._evidence_errors: dict[str, str] = {}  # relay -> why its evidence could not be saved, this run

    async def probe_relay(
        self,
        relay: Relay,
        *,
        rotation: int | None = None,
        only_port: int | None = None,
        family: str | None = None,
    ) -> ServerResult:
        """Probe every path of `relay` (its main port and one port per range, both families), or only some."""
        specs = plan_paths(
            relay,
            rotation=rotation_now() if rotation is None else rotation,
            main_port=self.config.probe.main_port,
            only_port=only_port,
            family=family,
        )
        return await self.probe_paths(relay, specs)

    def longest_path(self) -> float:
        """Seconds one path can take at most: every initiation waited out, then the stages' timeout."""
        probe = self.config.probe
        schedule = Schedule(first_gap=min(FIRST_GAP_UNKNOWN, probe.handshake_timeout), max_gap=probe.handshake_timeout)
        handshake = sum(schedule.gap(k) for k in range(probe.handshake_attempts))
        return handshake + probe.timeout

    async def probe_paths(self, relay: Relay, specs: list[PathSpec], *, finish_by: float | None = None) -> ServerResult:
        """Probe these paths of `relay`, dealt round-robin to the identities (a key's paths one at a time).

        With `finish_by` (the event loop's clock), a key starts another path only if even its slowest run would end
        by then: the paths left out are left out of the result, rather than the whole result lost to a deadline.
        """
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        lanes: list[list[tuple[int, PathSpec]]] = [[] for _ in self.identities]
        for n, spec in enumerate(specs):
            lanes[n % len(lanes)].append((n, spec))
        done: dict[int, PathResult] = {}
        loop = asyncio.get_running_loop()
        longest = self.longest_path()

        async def lane(index: int, work: list[tuple[int, PathSpec]]) -> None:
            async with self._lock(index, relay.name):
                for n, spec in work:
                    if finish_by is not None and done and loop.time() + longest > finish_by:
                        return
                    done[n] = await self.probe_path(relay, spec, index)

        await asyncio.gather(*(lane(i, work) for i, work in enumerate(lanes) if work))
        paths = tuple(done[n] for n in range(len(specs)) if n in done)
        reason = worst_reason(paths)
        result = ServerResult(
            schema_version=SCHEMA_VERSION,
            server=relay.name,
            agent=self.config.agent.name,
            ok=reason is None and all(p.ok for p in paths),
            reason=reason,
            started_at=started_at,
            duration_seconds=round(time.perf_counter() - started, 6),
            paths=paths,
            labels=dict(relay.labels),
            evidence=None,
            evidence_error=None,
        )
        return self._save_result(result)

    def _lock(self, identity: int, relay: str) -> asyncio.Lock:
        return self._locks.setdefault((identity, relay), asyncio.Lock())

    def _first_gap(self, relay: str) -> float | None:
        rtt = self._rtt.get(relay)
        return None if rtt is None else max(INITIATION_SPACING, FIRST_GAP_RTTS * rtt)

    async def probe_path(self, relay: Relay, spec: PathSpec, identity_index: int) -> PathResult:
        ident = self.config.identities[identity_index]
        relay_key = PublicKey(relay.public_key_bytes)
        ctx = PathContext(
            relay_name=relay.name,
            relay_key=relay_key,
            entry=spec.entry,
            port=spec.port,
            identity=self.identities[identity_index],
            identity_index=identity_index,
            inner_v4=ident.ipv4,
            inner_v6=ident.ipv6,
            expected_egress=relay.egress_ipv4 if spec.entry.version == 4 else relay.egress_ipv6,
            settings=self.settings,
            cookie_state=self._cookies.setdefault((identity_index, relay.name), CookieState(relay_key)),
            record=Record(max_bytes=self.config.probe.evidence_path_max_bytes) if self.evidence else None,
            first_gap=self._first_gap(relay.name),
        )
        run = await run_stages(ctx, self.registry)
        handshake = run.stages[0]
        if handshake.ok:
            self._rtt[relay.name] = handshake.seconds
        ok, reason = path_outcome(run.stages)
        evidence = None if ok else self._save_pcap(relay.name, spec, ctx)
        return PathResult(
            port=spec.port,
            family="ipv4" if spec.entry.version == 4 else "ipv6",
            ok=ok,
            reason=reason,
            stages=run.stages,
            entry=str(spec.entry),
            identity=identity_index,
            evidence=evidence,
            rejected=run.rejected,
        )

    def _save_pcap(self, relay: str, spec: PathSpec, ctx: PathContext) -> str | None:
        if self.evidence is None or ctx.record is None:
            return None
        packets = [(at, packet) for at, _direction, packet in ctx.record.packets]
        try:
            saved = self.evidence.save_path_pcap(relay, self.config.agent.name, spec.port, spec.family, packets)
        except EvidenceError as exc:
            self._evidence_errors[relay] = str(exc)
            return None
        return saved.path

    def _save_result(self, result: ServerResult) -> ServerResult:
        """Save a failed result beside its pcaps. Evidence that cannot be written never costs the result: the
        reason goes into `evidence_error` and the result is returned all the same."""
        error = self._evidence_errors.pop(result.server, None)
        if self.evidence is not None and not result.ok and error is None:
            try:
                return self.evidence.save_result(result)
            except EvidenceError as exc:
                error = str(exc)
        return result.model_copy(update={"evidence_error": error}) if error else result


class StagesRun(NamedTuple):
    """What `run_stages` hands back: the stage results in order, and the datagrams of the path that could not be
    attributed to any stage (transport messages that did not authenticate, inner packets with no identifier)."""

    stages: tuple[StageResult, ...]
    rejected: int = 0


async def run_stages(ctx: PathContext, registry: Registry = REGISTRY) -> StagesRun:
    """Run one path: the handshake, then every applicable stage of `registry` together over its tunnel, then the
    verdicts, with stages whose prerequisite failed marked not judged. Never raises for a relay's behaviour or a
    stage's bug: those become failed stages."""
    try:
        first, tunnel = await registry.handshake(ctx)
    except Exception as exc:  # the point: no stage may take the runner down (tailscale prober does the same)
        return StagesRun((crashed(StageName.handshake, exc),))
    if tunnel is None:
        return StagesRun((first,))
    results: dict[StageName, StageResult] = {}
    exchanges: list[Exchange] = []
    try:
        for stage in registry.stages:
            if not stage.applies(ctx):
                continue
            try:
                exchanges.append(stage.prepare(ctx))
            except Exception as exc:
                results[stage.name] = crashed(stage.name, exc)
        demux = await drive(tunnel, exchanges, ctx.settings.timeout, ctx.clock)
    finally:
        tunnel.close()
    for exchange in exchanges:
        try:
            results[exchange.name] = exchange.result()
        except Exception as exc:
            results[exchange.name] = crashed(exchange.name, exc)
    ordered = [results[stage.name] for stage in registry.stages if stage.name in results]
    rejected = tunnel.rejected + demux.unattributed
    return StagesRun((first, *unjudged_after_failures(ordered, registry)), rejected)


def unjudged_after_failures(stages: list[StageResult], registry: Registry) -> list[StageResult]:
    """Mark a failed stage not judged when the stage it depends on failed: with the NAT broken, forward_timeout
    is the finding, and egress and mtu timing out beside it are only its echo. A stage that got answers of its own
    (`received`) crossed the NAT itself, so its failure is its own finding: a relay that drops forwarded ICMP and
    NATs UDP to a wrong address must still show `egress_mismatch`, not have it hidden behind `forward_timeout`."""
    after = {stage.name: stage.after for stage in registry.stages}
    failed: set[StageName] = set()
    out = []
    for stage in stages:
        prerequisite = after.get(stage.name)
        if not stage.ok:
            failed.add(stage.name)
        if not stage.ok and prerequisite in failed and not stage.received:
            detail = f"not judged: {prerequisite} failed"
            out.append(stage.model_copy(update={"reason": None, "judged": False, "detail": detail}))
        else:
            out.append(stage)
    return out


def crashed(name: StageName, exc: BaseException) -> StageResult:
    """A bug in wgprobe, reported as a failed stage with `internal_error`, never an escaped exception."""
    return StageResult(
        name=name,
        ok=False,
        reason=Reason.internal_error,
        seconds=0.0,
        loss=1.0,
        sent=0,
        received=0,
        detail=f"{type(exc).__name__}: {exc}",
        judged=True,
        rejected=0,
    )
