"""What every stage shares: the path context, the sans-I/O exchange, the demultiplexer, and the driver.

Theory of operation. A path (one entry port, one address family, one identity) starts with the handshake stage,
which returns the tunnel. The later stages then run *together* over that tunnel. Each one is an `Exchange`: a
sans-I/O object that builds its probes (`build`), says which answers are its own (`claim`: its ICMP identifier or
UDP port), judges an answer (`judge`, pure) and turns what it saw into a `StageResult` (`result`, pure, with an
injected time). One driver per path sends every exchange's first probes at once; the socket's reader callback
decrypts each packet, parses it once, and hands it to the exchange that claims it, which books it on the spot.
The driver coroutine itself wakes only to resend and when every exchange is done, so a healthy path costs about
two round trips and a handful of event-loop turns, and a stage's verdict never depends on another stage's timing.

Each exchange sends `packets` probes at once and one more every `RESEND_INTERVAL` until it has that many good
answers, an ICMP error about its probe (a definite answer), or the stage timeout. It passes with at least one good
answer and no wrong one: lost packets are loss, measured and reported, not a failure. A packet that authenticated
but does not parse is attributed to a stage by a lenient look at its identifiers (`Demux`), so it counts against
that stage alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from probe.config import ProbeSection
from probe.inventory import MULLVAD_IPV4_GATEWAY, MULLVAD_IPV6_GATEWAY
from probe.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    IcmpError,
    IcmpErrorKind,
    IPPacket,
    Mismatch,
    PacketError,
    Verdict,
    parse_ip,
    parse_quoted,
)
from probe.packets.icmp import ECHO_REPLIES, ERROR_TYPES
from probe.results import Reason, StageName, StageResult
from probe.tunnel import Record
from probe.wireguard import CookieState, Identity, PublicKey

RESEND_INTERVAL = 0.05
# A probe younger than this many times the slowest answered RTT when the stage ends is "in flight", not lost.
IN_FLIGHT_RTTS = 2.0
MIN_IN_FLIGHT = 0.005
_PROBE = ProbeSection.model_fields  # the probe defaults live on the config model, once


def _default(name: str) -> float:
    value = _PROBE[name].default
    assert isinstance(value, int | float)
    return value


class Settings(NamedTuple):
    """The knobs a stage reads, from the agent config (`[probe]`, `[checks]`) and the inventory."""

    timeout: float = _default("timeout")
    packets: int = int(_default("packets"))
    handshake_timeout: float = _default("handshake_timeout")
    handshake_attempts: int = int(_default("handshake_attempts"))
    forward_target: IPv4Address | None = None
    forward_target_v6: IPv6Address | None = None
    reflector: tuple[IPv4Address | IPv6Address, int] | None = None
    reflector_v6: tuple[IPv4Address | IPv6Address, int] | None = None
    gateway: IPv4Address = MULLVAD_IPV4_GATEWAY
    gateway_v6: IPv6Address = MULLVAD_IPV6_GATEWAY
    mtu_probe_size: int = 1280  # the IPv6 minimum MTU: every relay path must carry it
    netns: str | None = None


class PathContext(NamedTuple):
    """Everything one path's stages need to know; nothing in it changes while they run."""

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
    record: Record | None = None  # evidence of the path (the runner gives each path its own); None: keep none
    first_gap: float | None = None  # first initiation retransmit, from the relay's last handshake RTT
    clock: Callable[[], float] = time.monotonic  # every time a stage reads: tests inject their own

    @property
    def family(self) -> int:
        return self.entry.version

    @property
    def inner_src(self) -> IPv4Address | IPv6Address | None:
        """Our tunnel address in the path's family (None: this identity has no IPv6 tunnel address)."""
        return self.inner_v4 if self.family == 4 else self.inner_v6


def median(values: Iterable[float]) -> float:
    """statistics.median, written out: the `statistics` module (with fractions, decimal and random behind it) was
    start-up time of every `probe server` for this one call."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class ClaimKind(IntEnum):
    echo = 1  # ICMP/ICMPv6 echo identifier
    udp = 2  # our UDP source port


Claim = tuple[ClaimKind, int]
_ICMP_HEADER = 8


def claim_of(version: int, proto: int, payload: bytes) -> Claim | None:
    """Whose answer this is, by its identifiers alone: no checksum is verified here (judging does that), so a
    corrupted answer is still attributed to the stage it was meant for."""
    if proto in (PROTO_ICMP, PROTO_ICMPV6) and len(payload) >= _ICMP_HEADER:
        return _icmp_claim(version, payload)
    if proto == PROTO_UDP and len(payload) >= 4:
        return ClaimKind.udp, int.from_bytes(payload[2:4], "big")
    return None


def _icmp_claim(version: int, payload: bytes) -> Claim | None:
    kind = payload[0]
    if kind in ECHO_REPLIES:
        return ClaimKind.echo, int.from_bytes(payload[4:6], "big")
    if kind not in ERROR_TYPES[version]:
        return None
    try:
        quoted = parse_quoted(payload[_ICMP_HEADER:])
    except PacketError:
        return None
    if quoted.identifier is not None:
        return ClaimKind.echo, quoted.identifier
    if quoted.proto == PROTO_UDP and quoted.sport is not None:
        return ClaimKind.udp, quoted.sport
    return None


def raw_claim(packet: bytes) -> Claim | None:
    """`claim_of` for a packet that did not parse as IP: read the header fields where they should be."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        offset = (packet[0] & 0x0F) * 4
        return claim_of(4, packet[9], packet[offset:]) if offset >= 20 else None
    if version == 6 and len(packet) >= 40:
        return claim_of(6, packet[6], packet[40:])
    return None


class Exchange:
    """One stage's probes and what came back, sans-I/O. Subclasses give `build` and `judge`; the booking and the
    verdict are shared. `now` values come from the driver's clock."""

    timeout_reason: Reason
    unreachable_reason: Reason

    def __init__(self, name: StageName, claim: Claim, wanted: int) -> None:
        self.name = name
        self.claim = claim
        self.wanted = wanted
        self.sequence = 0
        self.sent: dict[int, float] = {}  # sequence -> send time
        self.answered: dict[int, float] = {}  # sequence -> RTT seconds
        self.invalid: list[Verdict] = []
        self.errors: list[Verdict] = []  # ICMP errors about our probes
        self.corrupt = 0  # answers that authenticated but did not parse as IP
        self.started: float | None = None
        self.finished: float | None = None
        self.done = False  # finished is set: read for every packet and every resend, so a plain attribute
        self.failure: tuple[Reason, str] | None = None  # a send error or a bug: overrides the verdict

    def build(self, seq: int) -> bytes:
        raise NotImplementedError

    def judge(self, ip: IPPacket) -> tuple[int | None, Verdict]:
        """(sequence answered, verdict) for one parsed packet this stage claims. Pure."""
        raise NotImplementedError

    def error_reason(self, error: IcmpError) -> Reason:
        return self.unreachable_reason

    def close(self) -> None:
        """Give back what the exchange holds (identifiers, ports)."""

    def next_probe(self, now: float) -> bytes:
        self.sequence += 1
        packet = self.build(self.sequence)
        self.sent[self.sequence] = now
        if self.started is None:
            self.started = now
        return packet

    def quick(self, packet: bytes, at: float) -> bool:
        """Book `packet` if it is a good answer to one of our probes, recognised in one pass over the raw inner
        packet (see `EchoTemplate.reply_sequence`); False: anything else, for the full judgement (`take`), which
        would have booked this same answer the same way. Subclasses that can predict their answers override it."""
        return False

    def answer(self, seq: int, at: float) -> bool:
        """Book a good answer to probe `seq` (False: a duplicate); ends the exchange once it has enough."""
        fresh = seq not in self.answered
        if fresh:
            self.answered[seq] = at - self.sent[seq]
        if len(self.answered) >= self.wanted or self.errors:
            self.end(at)
        return fresh

    def take(self, ip: IPPacket, at: float) -> None:
        """Book one answer."""
        seq, verdict = self.judge(ip)
        if verdict.ok and seq in self.sent and seq not in self.answered:
            self.answered[seq] = at - self.sent[seq]
            self.accepted(seq, verdict)
        elif verdict.mismatch is Mismatch.icmp_error:
            self.errors.append(verdict)
        elif verdict.mismatch is Mismatch.foreign_icmp_error or verdict.ok:
            return  # an error about someone else's packet, or a duplicate answer
        else:
            self.invalid.append(verdict)
        if len(self.answered) >= self.wanted or self.errors:
            self.end(at)

    def accepted(self, seq: int, verdict: Verdict) -> None:
        """Hook for what a good answer carries beyond being one (the reflector's observed address)."""

    def end(self, at: float) -> None:
        if self.finished is None:
            self.finished = at
            self.done = True

    def fail(self, reason: Reason, detail: str, at: float) -> None:
        self.failure = (reason, detail)
        self.end(at)

    def loss(self) -> tuple[int, int, float]:
        """(sent, received, loss) counting only probes that had time to be answered before the stage ended."""
        ended = self.finished if self.finished is not None else 0.0
        slowest = max(self.answered.values(), default=0.0)
        horizon = ended - max(slowest * IN_FLIGHT_RTTS, MIN_IN_FLIGHT)
        settled = received = 0
        for seq, at in self.sent.items():
            if seq in self.answered:
                settled += 1
                received += 1
            elif at <= horizon:
                settled += 1
        # A probe an ICMP error quoted was answered, by the error, however young: settled, not received (the
        # handshake counts a port unreachable the same way). The stage ends at the first error, so a young probe's
        # error would otherwise leave `sent: 0` beside `forward_unreachable`.
        settled = max(settled, received + len(self.errors))
        return settled, received, (1 - received / settled) if settled else 0.0

    def verdict(self) -> tuple[Reason | None, str | None]:
        """The reason (None: passed) and one line of detail. Errors first (a definite answer), then invalid
        replies, then too few answers; a timeout with corrupt answers is `reply_invalid`, not silence."""
        if self.failure is not None:
            return self.failure
        if self.errors:
            err = self.errors[0]
            icmp = err.icmp_error
            reason = self.error_reason(icmp) if icmp is not None else self.unreachable_reason
            return reason, f"ICMP {icmp_detail(icmp) if icmp else 'error'} from {address(err.source)}"
        if self.invalid:
            return Reason.reply_invalid, f"{len(self.invalid)} invalid repl(ies): {self.invalid[0].mismatch}"
        if not self.answered:
            if self.corrupt:
                return Reason.reply_invalid, f"{self.corrupt} corrupt packet(s) from the relay"
            return self.timeout_reason, None
        # One good answer proves the path carries traffic; fewer than `wanted` is loss, measured and reported,
        # not an outage (at 20% loss each way a round trip through the NAT survives only 0.8**4 of the time).
        return None, None

    def result(self) -> StageResult:
        sent, received, loss = self.loss()
        reason, detail = self.verdict()
        rtt = median(self.answered.values()) if self.answered else None
        waited = (self.finished or 0.0) - (self.started if self.started is not None else self.finished or 0.0)
        return StageResult(
            name=self.name,
            ok=reason is None,
            reason=reason,
            seconds=round(rtt if rtt is not None else waited, 6),
            loss=round(loss, 4),
            sent=sent,
            received=received,
            detail=detail,
            judged=True,
            rejected=self.corrupt,
        )


def icmp_detail(icmp: IcmpError) -> str:
    """What the error said beyond its kind: the next-hop MTU of a packet too big (what the link must be raised
    to), else the code: administratively prohibited (IPv4 13, IPv6 1) is a firewall, not a missing route."""
    if icmp.kind is IcmpErrorKind.packet_too_big:
        return f"{icmp.kind} (next-hop MTU {icmp.mtu})" if icmp.mtu else str(icmp.kind)
    return f"{icmp.kind} (code {icmp.code})"


def address(raw: bytes | None) -> str:
    if raw is None:
        return "?"
    return str(IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw))


class Demux:
    """Hands each inner packet the tunnel receives to the exchange that claims it, from the socket's reader
    callback; wakes the driver (`on_done`) when the last exchange is done."""

    def __init__(self, exchanges: list[Exchange], clock: Callable[[], float], on_done: Callable[[], None]) -> None:
        self.by_claim = {ex.claim: ex for ex in exchanges}
        self.exchanges = exchanges
        self.clock = clock
        self.on_done = on_done
        self.stray = 0  # well-formed packets nobody claimed (another probe's late answer, relay chatter)
        self.unattributed = 0  # packets that did not parse and carry no identifier of ours

    def dispatch(self, packet: bytes, waited: float = 0.0) -> None:
        """Book `packet`, which came in `waited` seconds ago (the kernel's receive time): its answer time."""
        at = self.clock() - waited
        # Almost every packet is the answer its exchange predicted: found by its raw identifiers and checked in one
        # pass, it is booked without being parsed into objects. Anything else takes the full path below.
        claim = raw_claim(packet)
        quick = self.by_claim.get(claim) if claim is not None else None
        if quick is not None and not quick.done:
            try:
                booked = quick.quick(packet, at)
            except Exception as exc:  # as for `take`: one stage's bug fails that stage alone
                quick.fail(Reason.internal_error, f"{type(exc).__name__}: {exc}", at)
                booked = True
            if booked:
                if quick.done and all(ex.done for ex in self.exchanges):
                    self.on_done()
                return
        try:
            ip = parse_ip(packet)
        except PacketError:
            corrupt = raw_claim(packet)
            found = self.by_claim.get(corrupt) if corrupt is not None else None
            if found is None:
                self.unattributed += 1
            else:
                found.corrupt += 1
            return
        claim = claim_of(ip.version, ip.proto, ip.payload)
        exchange = self.by_claim.get(claim) if claim is not None else None
        if exchange is None:
            self.stray += 1
            return
        if exchange.done:
            return  # a late or extra answer after the stage was judged
        try:
            exchange.take(ip, at)
        except Exception as exc:  # a bug in one stage's judge must not take the others down with it
            exchange.fail(Reason.internal_error, f"{type(exc).__name__}: {exc}", at)
        if exchange.done and all(ex.done for ex in self.exchanges):  # checked only when one just ended
            self.on_done()
