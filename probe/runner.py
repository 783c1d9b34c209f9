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
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from probe.config import AgentConfig
from probe.inventory import Inventory, Relay
from probe.results import (
    PathResult,
    Reason,
    ServerResult,
    StageName,
    StageResult,
    path_outcome,
    worst_reason,
)
from probe.stages import POST_HANDSHAKE, handshake
from probe.stages.base import Demux, PathContext, Settings, StageFn
from probe.wireguard import CookieState, Identity, PrivateKey, PublicKey

_SPREAD = 7919  # a prime stride: successive rotations visit a range's ports in a scattered, non-repeating order


@dataclass(frozen=True, slots=True)
class PathSpec:
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
            offset = (rotation * _SPREAD + salt) % candidates
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


def settings_from(config: AgentConfig, inventory: Inventory) -> Settings:
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
    """Agent-wide probing state: keys (with their monotonic timestamps), cookies, per-key-per-relay locks."""

    def __init__(self, config: AgentConfig, inventory: Inventory, *, evidence: bool = True) -> None:
        self.config = config
        self.inventory = inventory
        self.settings = settings_from(config, inventory)
        self.identities = [Identity(PrivateKey(ident.private_key)) for ident in config.identities]
        self.evidence_dir: Path | None = config.probe.evidence_dir if evidence else None
        self._cookies: dict[tuple[int, str], CookieState] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    async def probe_relay(
        self,
        relay: Relay,
        *,
        rotation: int | None = None,
        only_port: int | None = None,
        family: str | None = None,
    ) -> ServerResult:
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        specs = plan_paths(
            relay,
            rotation=rotation_now() if rotation is None else rotation,
            main_port=self.config.probe.main_port,
            only_port=only_port,
            family=family,
        )
        lanes: list[list[tuple[int, PathSpec]]] = [[] for _ in self.identities]
        for n, spec in enumerate(specs):
            lanes[n % len(lanes)].append((n, spec))
        done: dict[int, PathResult] = {}

        async def lane(index: int, work: list[tuple[int, PathSpec]]) -> None:
            async with self._lock(index, relay.name):
                for n, spec in work:
                    done[n] = await self.probe_path(relay, spec, index)

        await asyncio.gather(*(lane(i, work) for i, work in enumerate(lanes) if work))
        paths = tuple(done[n] for n in range(len(specs)))
        reason = worst_reason(paths)
        result = ServerResult(
            server=relay.name,
            agent=self.config.agent.name,
            ok=reason is None and all(p.ok for p in paths),
            reason=reason,
            started_at=started_at,
            duration_seconds=round(time.perf_counter() - started, 6),
            paths=paths,
            labels=dict(relay.labels),
        )
        return self._save_result(result)

    def _lock(self, identity: int, relay: str) -> asyncio.Lock:
        return self._locks.setdefault((identity, relay), asyncio.Lock())

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
        )
        stages = await _run_stages(ctx)
        ok, reason = path_outcome(stages)
        evidence = None if ok else self._save_pcap(relay.name, spec, ctx)
        return PathResult(
            port=spec.port,
            family="ipv4" if spec.entry.version == 4 else "ipv6",
            ok=ok,
            reason=reason,
            stages=stages,
            entry=str(spec.entry),
            identity=identity_index,
            evidence=evidence,
        )

    def _save_pcap(self, relay: str, spec: PathSpec, ctx: PathContext) -> str | None:
        if self.evidence_dir is None:
            return None
        from probe.evidence import save_path_pcap

        return save_path_pcap(self.evidence_dir, relay, self.config.agent.name, spec.port, spec.family, ctx.record)

    def _save_result(self, result: ServerResult) -> ServerResult:
        if self.evidence_dir is None or result.ok:
            return result
        from probe.evidence import save_result

        return save_result(self.evidence_dir, result)


async def _run_stages(ctx: PathContext) -> tuple[StageResult, ...]:
    stages: list[StageResult] = [await _guard(handshake.NAME, handshake.run, ctx)]
    if not stages[0].ok or ctx.tunnel is None:
        return tuple(stages)
    ctx.demux = Demux(ctx.tunnel)
    ctx.demux.start()
    try:
        runnable = [(name, fn) for name, applies, fn in POST_HANDSHAKE if applies(ctx)]
        stages += await asyncio.gather(*(_guard(name, fn, ctx) for name, fn in runnable))
    finally:
        ctx.demux.stop()
        ctx.tunnel.close()
    return tuple(stages)


async def _guard(name: StageName, fn: StageFn, ctx: PathContext) -> StageResult:
    """Run a stage; a bug in it becomes a failed stage with `internal_error`, never an escaped exception."""
    try:
        return await fn(ctx)
    except Exception as exc:  # the point: no stage may take the runner down (tailscale prober does the same)
        return StageResult(
            name=name,
            ok=False,
            reason=Reason.internal_error,
            seconds=0.0,
            loss=1.0,
            detail=f"{type(exc).__name__}: {exc}",
        )
