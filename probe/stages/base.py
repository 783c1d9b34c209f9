"""What every stage shares: the path context, the packet demultiplexer, and the send-until-answered exchange.

Theory of operation. A path (one entry port, one address family, one identity) starts with the handshake stage,
which opens the tunnel. The later stages then run *together* over that tunnel: each registers a claim on the
packets that answer it (its own ICMP identifier or UDP port), one reader task decrypts what the relay sends and
hands every packet to the stage that claims it. A healthy path therefore costs about two round trips (handshake,
then all stages at once), and a stage's verdict never depends on another stage's timing. The verdict still reads in
stage order: the path's reason is its first failing stage's.

Each stage sends `packets` probes at once and keeps sending one more every `RESEND_INTERVAL` until it has that many
good answers or its timeout ends, so one lost packet is not a failure and loss is measured, not guessed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from probe.inventory import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.packets import IcmpError, IPPacket, Mismatch, PacketError, Verdict, parse_ip
from probe.results import Reason, StageName, StageResult
from probe.tunnel import Inbox, Record, Tunnel
from probe.wireguard import CookieState, Identity, PublicKey

RESEND_INTERVAL = 0.05
# A probe younger than this many times the slowest answered RTT when the stage ends is "in flight", not lost.
IN_FLIGHT_RTTS = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The knobs a stage reads, from the agent config (`[probe]`, `[checks]`) and the inventory."""

    timeout: float = 1.0
    packets: int = 3
    handshake_timeout: float = 1.0
    handshake_attempts: int = 3
    forward_target: IPv4Address | None = None
    forward_target_v6: IPv6Address | None = None
    reflector: tuple[IPv4Address | IPv6Address, int] | None = None
    reflector_v6: tuple[IPv4Address | IPv6Address, int] | None = None
    gateway: IPv4Address = MULLVAD_IPV4_GATEWAY
    gateway_v6: IPv6Address = MULLVAD_IPV6_GATEWAY
    mtu_probe_size: int = 1280  # the IPv6 minimum MTU: every relay path must carry it
    netns: str | None = None


@dataclass
class PathContext:
    """Everything one path's stages need; the handshake stage fills in `tunnel`."""

    relay_name: str
    relay_key: PublicKey
    entry: IPv4Address | IPv6Address
    port: int
    identity: Identity
    identity_index: int
    inner_v4: IPv4Address
    inner_v6: IPv6Address | None
    expected_egress: IPv4Address | IPv6Address | None
    settings: Settings
    cookie_state: CookieState
    record: Record = field(default_factory=Record)
    tunnel: Tunnel | None = None
    demux: Demux | None = None

    @property
    def family(self) -> int:
        return self.entry.version

    @property
    def inner_src(self) -> IPv4Address | IPv6Address | None:
        """Our tunnel address in the path's family (None: this identity has no IPv6 tunnel address)."""
        return self.inner_v4 if self.family == 4 else self.inner_v6


StageFn = Callable[[PathContext], Awaitable[StageResult]]
# A claim looks at a parsed packet and says whether it answers this stage (its identifier or port).
Claim = Callable[[IPPacket], bool]


class Demux:
    """Hands each inner packet the tunnel receives to the stage that claims it, from the socket's reader callback."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self._claims: list[tuple[Claim, Inbox[tuple[float, bytes]]]] = []
        self.stray = 0  # well-formed packets nobody claimed (another probe's late answer, relay chatter)
        self.corrupt = 0  # packets that did not parse: cannot be attributed, but make a timeout "reply_invalid"

    def claim(self, claim: Claim) -> Inbox[tuple[float, bytes]]:
        inbox: Inbox[tuple[float, bytes]] = Inbox(asyncio.get_running_loop())
        self._claims.append((claim, inbox))
        return inbox

    def start(self) -> None:
        self.tunnel.listen(self._dispatch)

    def stop(self) -> None:
        self.tunnel.listen(None)

    def _dispatch(self, packet: bytes) -> None:
        at = time.perf_counter()
        try:
            ip = parse_ip(packet)
        except PacketError:
            self.corrupt += 1
            return
        for claim, inbox in self._claims:
            if claim(ip):
                inbox.put((at, packet))
                return
        self.stray += 1


@dataclass
class Outcome:
    """What an exchange saw: answers by sequence, RTTs, and every answer that was wrong."""

    sent: dict[int, float] = field(default_factory=dict)  # sequence -> send time (perf_counter)
    answered: dict[int, float] = field(default_factory=dict)  # sequence -> RTT seconds
    invalid: list[Verdict] = field(default_factory=list)
    errors: list[Verdict] = field(default_factory=list)  # ICMP errors about our probes
    waited: float = 0.0

    def loss(self, ended: float) -> tuple[int, int, float]:
        """(sent, received, loss) counting only probes that had time to be answered."""
        slowest = max(self.answered.values(), default=0.0)
        horizon = ended - max(slowest * IN_FLIGHT_RTTS, 0.005)
        settled = [seq for seq, at in self.sent.items() if at <= horizon or seq in self.answered]
        received = sum(1 for seq in settled if seq in self.answered)
        return len(settled), received, (1 - received / len(settled)) if settled else 0.0

    @property
    def median_rtt(self) -> float | None:
        return statistics.median(self.answered.values()) if self.answered else None


# judge(packet, sequence_hint) -> (sequence or None, verdict)
Judge = Callable[[bytes], tuple[int | None, Verdict]]


async def exchange(
    ctx: PathContext,
    inbox: Inbox[tuple[float, bytes]],
    build: Callable[[int], bytes],
    judge: Judge,
) -> Outcome:
    """Send probes built by `build(sequence)` until `packets` good answers or the stage timeout."""
    assert ctx.tunnel is not None
    wanted = ctx.settings.packets
    outcome = Outcome()
    started = time.perf_counter()
    deadline = started + ctx.settings.timeout
    seq = 0

    def send_one() -> None:
        nonlocal seq
        seq += 1
        packet = build(seq)
        outcome.sent[seq] = time.perf_counter()
        ctx.tunnel.send(packet)  # type: ignore[union-attr]

    for _ in range(wanted):
        send_one()
    next_send = started + RESEND_INTERVAL
    while len(outcome.answered) < wanted:
        now = time.perf_counter()
        if now >= deadline or outcome.errors:  # an ICMP error about our probe is a definite answer
            break
        if now >= next_send:
            send_one()
            next_send = now + RESEND_INTERVAL
        if not await inbox.wait(min(next_send, deadline) - now):
            continue
        while inbox.items:
            at, packet = inbox.items.popleft()
            sequence, verdict = judge(packet)
            if verdict.ok and sequence in outcome.sent and sequence not in outcome.answered:
                outcome.answered[sequence] = at - outcome.sent[sequence]
            elif verdict.mismatch is Mismatch.icmp_error:
                outcome.errors.append(verdict)
            elif verdict.mismatch is Mismatch.foreign_icmp_error:
                continue  # an error about someone else's packet that merely shares our identifier or port
            elif not verdict.ok:
                outcome.invalid.append(verdict)
    outcome.waited = time.perf_counter() - started
    return outcome


def stage_result(
    name: StageName,
    outcome: Outcome,
    ctx: PathContext,
    *,
    timeout_reason: Reason,
    error_reason: Reason | Callable[[IcmpError], Reason],
    detail: str | None = None,
) -> StageResult:
    """Judge an exchange: errors first (a definite answer), then invalid replies, then too few answers.

    `error_reason` may depend on the ICMP error (the mtu stage tells "too big" from "unreachable").
    """
    sent, received, loss = outcome.loss(time.perf_counter())
    rtt = outcome.median_rtt
    reason: Reason | None = None
    if outcome.errors:
        err = outcome.errors[0]
        icmp = err.icmp_error
        reason = error_reason if isinstance(error_reason, Reason) else error_reason(icmp)  # type: ignore[arg-type]
        kind = icmp.kind if icmp else "error"
        src = _address(err.source)
        detail = detail or f"ICMP {kind} from {src}"
    elif outcome.invalid:
        reason = Reason.reply_invalid
        detail = detail or f"{len(outcome.invalid)} invalid repl(ies): {outcome.invalid[0].mismatch}"
    elif len(outcome.answered) < ctx.settings.packets:
        corrupt = ctx.demux.corrupt if ctx.demux else 0
        reason = Reason.reply_invalid if corrupt else timeout_reason
        detail = detail or (f"{corrupt} corrupt packet(s) from the relay" if corrupt else None)
    return StageResult(
        name=name,
        ok=reason is None,
        reason=reason,
        seconds=round(rtt if rtt is not None else outcome.waited, 6),
        loss=round(loss, 4),
        sent=sent,
        received=received,
        detail=detail,
    )


def _address(raw: bytes | None) -> str:
    if raw is None:
        return "?"
    return str(IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw))
