"""The real stages and runner against a fake, sometimes hostile, WireGuard relay on 127.0.0.1.

The fake relay is the sans-I/O `Responder` behind a non-blocking UDP socket on the test's own event loop. It
answers the client's initiation, decrypts what the client sends through the tunnel and answers each inner packet
according to a *behaviour*: healthy, or lying in one particular way. The forward target and the reflector are
never contacted: the relay answers on their behalf from inside the tunnel, so every byte stays on loopback. No root,
no namespaces, no threads.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

import probe.runner
from probe import reflector
from probe.packets import (
    PROTO_ICMP,
    PROTO_UDP,
    Echo,
    IcmpErrorKind,
    IPPacket,
    build_icmp_echo,
    build_icmp_error,
    build_udp,
    packed,
    parse_icmp,
    parse_ip,
    parse_udp,
)
from probe.results import Reason, StageName, StageResult
from probe.stages import POST_HANDSHAKE, handshake
from probe.stages.base import Demux, PathContext, Settings
from probe.tunnel import Tunnel
from probe.wireguard import (
    CookieState,
    HandshakeAccepted,
    Identity,
    Initiation,
    PrivateKey,
    ProtocolError,
    PublicKey,
    Responder,
    TransportSession,
    compute_mac1,
)
from probe.wireguard.constants import MESSAGE_INITIATION, MESSAGE_TRANSPORT, TRANSPORT_HEADER_SIZE

LOOPBACK = IPv4Address("127.0.0.1")
GATEWAY = IPv4Address("10.64.0.1")
INNER = IPv4Address("10.64.0.2")
FORWARD = IPv4Address("198.51.100.7")
REFLECTOR = (IPv4Address("198.51.100.7"), 7777)
EGRESS = IPv4Address("192.0.2.45")
TIMEOUT = 0.3
SETTINGS = Settings(
    timeout=TIMEOUT,
    packets=3,
    handshake_timeout=TIMEOUT,
    handshake_attempts=2,
    forward_target=FORWARD,
    reflector=REFLECTOR,
    gateway=GATEWAY,
)
ALL_STAGES = [StageName.handshake, StageName.tunnel, StageName.forward, StageName.egress, StageName.mtu]
# Loop and timer slack on a loaded machine; a stage that never ends its wait is far beyond it.
SLACK = 0.2

Behaviour = Callable[["FakeRelay", IPPacket], None]


class FakeRelay:
    """A WireGuard relay on 127.0.0.1: real handshake and transport crypto, scripted answers inside the tunnel.

    `bad_sent` counts datagrams sent after the handshake that an honest client must reject; `valid_sent` counts
    authenticated inner packets. Anything the relay itself trips over lands in `errors` and fails the test.
    """

    def __init__(self, client: PublicKey, behaviour: Behaviour | None, *, on_initiation: str = "respond") -> None:
        self.identity = Identity(PrivateKey.generate())
        self.responder = Responder(self.identity, {client: None})
        self.client = client
        self.behaviour = behaviour
        self.on_initiation = on_initiation  # "respond", or "garbage" (forged and random type-2/3 answers only)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((str(LOOPBACK), 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.session: TransportSession | None = None
        self.peer: tuple[str, int] | None = None
        self.initiations = 0
        self.inner: list[IPPacket] = []
        self.bad_sent = 0
        self.valid_sent = 0
        self.last_valid: bytes | None = None
        self.errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def public_key(self) -> PublicKey:
        return self.identity.public_key

    async def __aenter__(self) -> FakeRelay:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self.errors and exc[0] is None:
            raise AssertionError(f"the fake relay itself failed: {self.errors!r}") from self.errors[0]

    def close(self) -> None:
        if self.sock.fileno() != -1:
            assert self._loop is not None
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _readable(self) -> None:
        while self.sock.fileno() != -1:
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            try:
                self._datagram(data, peer)
            except Exception as exc:  # reported by __aexit__: a relay bug must not pass as a client failure
                self.errors.append(exc)

    def _datagram(self, data: bytes, peer: tuple[str, int]) -> None:
        self.peer = peer
        kind = struct.unpack_from("<I", data)[0] if len(data) >= 4 else None
        if kind == MESSAGE_INITIATION:
            self.initiations += 1
            if self.on_initiation == "garbage":
                for junk in forged_handshake_answers(data, self.client):
                    self.send_raw(junk)
                return
            accepted = self.responder.consume_initiation(data, time.time())
            assert isinstance(accepted, HandshakeAccepted)  # never under load here: no cookie replies
            self.session = accepted.session
            # Noise before the answer must not derail the handshake; a duplicate after it is a rejected transport.
            self.send_raw(os.urandom(37))
            self.send_raw(accepted.response[:60])
            self.send_raw(b"\x02\0\0\0" + os.urandom(88))
            self.send_raw(accepted.response)
            self.send_bad(accepted.response)
        elif kind == MESSAGE_TRANSPORT and self.session is not None:
            plain = self.session.decrypt(data)
            if plain and self.behaviour is not None:
                ip = parse_ip(plain)
                self.inner.append(ip)
                self.behaviour(self, ip)

    def seal(self, inner: bytes) -> bytes:
        assert self.session is not None
        return self.session.encrypt(inner)

    def send_raw(self, data: bytes) -> None:
        assert self.peer is not None
        self.sock.sendto(data, self.peer)

    def send_bad(self, data: bytes) -> None:
        self.bad_sent += 1
        self.send_raw(data)

    def send_valid(self, sealed: bytes) -> None:
        self.valid_sent += 1
        self.last_valid = sealed
        self.send_raw(sealed)

    def send_inner(self, inner: bytes) -> None:
        self.send_valid(self.seal(inner))


def forged_handshake_answers(initiation: bytes, client: PublicKey) -> Iterator[bytes]:
    """Answers to an initiation that look like responses and cookie replies but must all be refused."""
    index = struct.pack("<I", Initiation.unpack(initiation).sender_index)
    yield b"\x02\0\0\0" + os.urandom(88)  # 92 random bytes of type 2
    yield b"\x02\0\0\0" + os.urandom(4) + index + os.urandom(80)  # ... addressed to the pending handshake
    for ephemeral in (bytes(32), os.urandom(32)):  # low-order point, then random: right mac1, wrong crypto
        body = b"\x02\0\0\0" + os.urandom(4) + index + ephemeral + os.urandom(16)
        yield body + compute_mac1(body + bytes(32), client.raw) + bytes(16)
    yield b"\x03\0\0\0" + index + os.urandom(56)  # a cookie reply that does not decrypt


def reply_to(ip: IPPacket, *, egress: IPv4Address = EGRESS) -> bytes | None:
    """What a healthy relay (and the hosts behind it) send back for one inner packet, or None."""
    if ip.proto == PROTO_ICMP:
        echo = parse_icmp(ip)
        if isinstance(echo, Echo) and not echo.is_reply:
            return build_icmp_echo(ip.dst, ip.src, echo.identifier, echo.sequence, echo.payload, reply=True)
    elif ip.proto == PROTO_UDP:
        udp = parse_udp(ip)
        nonce = reflector.parse_request(udp.payload)
        if nonce is not None and (ip.dst, udp.dport) == (packed(REFLECTOR[0]), REFLECTOR[1]):
            answer = reflector.build_response(nonce, egress, udp.sport)
            return build_udp(ip.dst, ip.src, udp.dport, udp.sport, answer)
    return None


def forged_reply(ip: IPPacket, *, source: IPv4Address | None = None) -> bytes | None:
    """A well-formed answer with the right identifiers but a wrong payload (or, given `source`, from elsewhere)."""
    if ip.proto == PROTO_ICMP:
        echo = parse_icmp(ip)
        assert isinstance(echo, Echo)
        payload = echo.payload if source else bytes([echo.payload[0] ^ 0xFF]) + echo.payload[1:]
        return build_icmp_echo(source or ip.dst, ip.src, echo.identifier, echo.sequence, payload, reply=True)
    udp = parse_udp(ip)
    answer = reflector.build_response(os.urandom(reflector.NONCE_SIZE), EGRESS, udp.sport)
    return build_udp(ip.dst, ip.src, udp.dport, udp.sport, answer)


def to_forward_target(ip: IPPacket) -> bool:
    return ip.proto == PROTO_ICMP and ip.dst == FORWARD.packed


def healthy(relay: FakeRelay, ip: IPPacket) -> None:
    reply = reply_to(ip)
    if reply is not None:
        relay.send_inner(reply)


def noisy(relay: FakeRelay, ip: IPPacket) -> None:
    """Healthy answers, each preceded by everything an honest client must drop (and count in `rejected`)."""
    reply = reply_to(ip)
    if reply is None:
        return
    relay.send_bad(os.urandom(random.randint(1, 200)))
    relay.send_bad(relay.seal(reply)[:20])  # shorter than any transport message
    relay.send_bad(relay.seal(reply)[:-5])  # long enough, but the tag is cut
    assert relay.session is not None
    wrong_index = bytearray(relay.seal(forged_reply(ip) or b""))  # accepted, it would fail the stage
    wrong_index[4:8] = struct.pack("<I", (relay.session.remote_index + 1) & 0xFFFFFFFF)
    relay.send_bad(bytes(wrong_index))
    if relay.last_valid is not None:
        relay.send_bad(relay.last_valid)  # a replay of the previous authenticated message
    sealed = relay.seal(reply)
    flipped = bytearray(sealed)
    flipped[TRANSPORT_HEADER_SIZE + 30] ^= 0x01  # inside the echo payload / UDP payload once decrypted
    relay.send_bad(bytes(flipped))  # same counter as `sealed`, sent first: only the tag can refuse it
    relay.send_raw(relay.seal(b""))  # a keepalive: authenticated, neither delivered nor rejected
    relay.send_valid(sealed)


def make_ctx(client: Identity, relay_key: PublicKey, port: int, settings: Settings = SETTINGS) -> PathContext:
    return PathContext(
        relay_name="xx-tst-wg-001",
        relay_key=relay_key,
        entry=LOOPBACK,
        port=port,
        identity=client,
        identity_index=0,
        inner_v4=INNER,
        inner_v6=None,
        expected_egress=EGRESS,
        settings=settings,
        cookie_state=CookieState(relay_key),
    )


def by_name(stages: tuple[StageResult, ...]) -> dict[StageName, StageResult]:
    return {stage.name: stage for stage in stages}


async def probe_fake(behaviour: Behaviour | None) -> tuple[dict[StageName, StageResult], PathContext, FakeRelay]:
    client = Identity(PrivateKey.generate())
    async with FakeRelay(client.public_key, behaviour) as relay:
        ctx = make_ctx(client, relay.public_key, relay.port)
        stages = await probe.runner._run_stages(ctx)
    assert [stage.name for stage in stages] == ALL_STAGES
    assert ctx.tunnel is not None and ctx.tunnel.flow.sock.fileno() == -1  # the runner closed the tunnel
    return by_name(stages), ctx, relay


@pytest.mark.asyncio
async def test_healthy_relay_passes_every_stage_without_loss() -> None:
    stages, ctx, relay = await probe_fake(healthy)
    for stage in stages.values():
        assert (stage.name, stage.ok, stage.reason, stage.loss) == (stage.name, True, None, 0.0)
        assert stage.seconds < TIMEOUT
    assert stages[StageName.tunnel].received == 3
    egress_detail = stages[StageName.egress].detail
    assert egress_detail is not None and str(EGRESS) in egress_detail
    # The relay really saw each stage's probes, from our tunnel address.
    assert {ip.dst for ip in relay.inner} == {GATEWAY.packed, FORWARD.packed}
    assert {ip.src for ip in relay.inner} == {INNER.packed}
    assert max(ip.total_length for ip in relay.inner) == SETTINGS.mtu_probe_size
    assert ctx.tunnel is not None and ctx.tunnel.rejected == 1  # only the duplicated handshake response


@pytest.mark.asyncio
async def test_garbage_from_the_relay_is_counted_and_dropped_and_the_path_still_passes() -> None:
    client = Identity(PrivateKey.generate())
    async with FakeRelay(client.public_key, noisy) as relay:
        ctx = make_ctx(client, relay.public_key, relay.port)
        result = await handshake.run(ctx)
        assert result.ok, result
        tunnel = ctx.tunnel
        assert tunnel is not None
        ctx.demux = demux = Demux(tunnel)
        demux.start()
        try:
            runs = [probe.runner._guard(name, fn, ctx) for name, applies, fn in POST_HANDSHAKE if applies(ctx)]
            stages = await asyncio.gather(*runs)
            for _ in range(100):  # let answers to probes still in flight arrive, so the books can balance
                await asyncio.sleep(0.01)
                if tunnel.rejected == relay.bad_sent:
                    break
            received = [packet for _, direction, packet in ctx.record.packets if direction == "in"]
            assert (tunnel.rejected, len(received)) == (relay.bad_sent, relay.valid_sent)
        finally:
            demux.stop()
            tunnel.close()
    assert relay.bad_sent > 12 * 5
    for stage in stages:
        assert (stage.name, stage.ok, stage.reason, stage.loss) == (stage.name, True, None, 0.0)
    assert len(set(received)) == len(received)  # no replay was delivered twice
    assert (demux.corrupt, demux.stray) == (0, 0)  # nothing forged or flipped got through the crypto


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("forged_source", "mismatch"), [(None, "wrong_payload"), (IPv4Address("198.51.100.8"), "wrong_source")]
)
async def test_forged_echo_replies_fail_forward_as_reply_invalid(
    forged_source: IPv4Address | None, mismatch: str
) -> None:
    def forge(relay: FakeRelay, ip: IPPacket) -> None:
        reply = forged_reply(ip, source=forged_source) if to_forward_target(ip) else reply_to(ip)
        if reply is not None:
            relay.send_inner(reply)

    stages, _, _ = await probe_fake(forge)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason) == (False, Reason.reply_invalid)
    assert forward.detail is not None and mismatch in forward.detail
    assert stages[StageName.tunnel].ok and stages[StageName.egress].ok
    assert stages[StageName.mtu].reason is Reason.reply_invalid


@pytest.mark.asyncio
async def test_a_corrupt_inner_packet_without_valid_replies_is_reply_invalid_not_a_timeout() -> None:
    def corrupt(relay: FakeRelay, ip: IPPacket) -> None:
        reply = reply_to(ip)
        if reply is None:
            return
        if to_forward_target(ip):
            broken = bytearray(reply)
            broken[10] ^= 0xFF  # IPv4 header checksum: authenticated by WireGuard, wrong as IP
            reply = bytes(broken)
        relay.send_inner(reply)

    stages, _, _ = await probe_fake(corrupt)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason, forward.received) == (False, Reason.reply_invalid, 0)
    assert forward.detail is not None and "corrupt" in forward.detail
    assert TIMEOUT <= forward.seconds < TIMEOUT + SLACK
    assert stages[StageName.tunnel].ok and stages[StageName.egress].ok


@pytest.mark.asyncio
async def test_icmp_unreachable_for_forward_echoes_is_forward_unreachable() -> None:
    def unreachable(relay: FakeRelay, ip: IPPacket) -> None:
        if to_forward_target(ip):
            original = build_icmp_echo(ip.src, ip.dst, *echo_ids(ip))
            relay.send_inner(build_icmp_error(GATEWAY, INNER, IcmpErrorKind.destination_unreachable, original, code=1))
        else:
            healthy(relay, ip)

    stages, _, _ = await probe_fake(unreachable)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason) == (False, Reason.forward_unreachable)
    assert forward.detail is not None
    assert "destination_unreachable" in forward.detail and str(GATEWAY) in forward.detail
    assert forward.seconds < TIMEOUT  # an error is a definite answer: no waiting out the timeout
    assert stages[StageName.tunnel].ok and stages[StageName.egress].ok


def echo_ids(ip: IPPacket) -> tuple[int, int, bytes]:
    echo = parse_icmp(ip)
    assert isinstance(echo, Echo)
    return echo.identifier, echo.sequence, echo.payload


@pytest.mark.asyncio
async def test_reflector_reporting_another_address_is_egress_mismatch() -> None:
    seen = IPv4Address("192.0.2.99")

    def wrong_egress(relay: FakeRelay, ip: IPPacket) -> None:
        reply = reply_to(ip, egress=seen)
        if reply is not None:
            relay.send_inner(reply)

    stages, _, _ = await probe_fake(wrong_egress)
    egress = stages[StageName.egress]
    assert (egress.ok, egress.reason) == (False, Reason.egress_mismatch)
    assert egress.detail is not None and str(seen) in egress.detail and str(EGRESS) in egress.detail
    assert all(stage.ok for name, stage in stages.items() if name is not StageName.egress)


@pytest.mark.asyncio
async def test_relay_silent_after_handshake_times_every_stage_out() -> None:
    stages, _, relay = await probe_fake(lambda relay, ip: None)
    assert stages[StageName.handshake].ok
    expected = {
        StageName.tunnel: Reason.tunnel_timeout,
        StageName.forward: Reason.forward_timeout,
        StageName.egress: Reason.egress_timeout,
        StageName.mtu: Reason.mtu_blackhole,
    }
    for name, reason in expected.items():
        stage = stages[name]
        assert (stage.ok, stage.reason, stage.loss, stage.received) == (False, reason, 1.0, 0)
        assert stage.sent >= 3 and TIMEOUT <= stage.seconds < TIMEOUT + SLACK
    assert len(relay.inner) >= 12  # the probes did reach the relay and decrypted there


@pytest.mark.asyncio
async def test_relay_that_vanishes_after_the_handshake_gives_timeouts_not_a_hang() -> None:
    def vanish(relay: FakeRelay, ip: IPPacket) -> None:
        relay.close()  # the client's next datagrams draw ICMP port unreachable on loopback

    started = time.perf_counter()
    stages, _, _ = await probe_fake(vanish)
    assert stages[StageName.handshake].ok
    assert [stage.ok for stage in stages.values()] == [True, False, False, False, False]
    assert time.perf_counter() - started < TIMEOUT + SLACK + 0.5


@pytest.mark.asyncio
async def test_handshake_to_a_closed_port_is_port_unreachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_port:
        probe_port.bind((str(LOOPBACK), 0))
        port = probe_port.getsockname()[1]
    ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), port)
    stages = await probe.runner._run_stages(ctx)
    assert [(stage.name, stage.reason) for stage in stages] == [(StageName.handshake, Reason.port_unreachable)]
    assert stages[0].seconds < TIMEOUT and ctx.tunnel is None


@pytest.mark.asyncio
async def test_handshake_to_a_silent_socket_is_handshake_timeout_after_every_attempt() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((str(LOOPBACK), 0))
        silent.setblocking(False)
        ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), silent.getsockname()[1])
        stages = await probe.runner._run_stages(ctx)
        initiations = 0
        while True:
            try:
                datagram = silent.recv(65535)
            except BlockingIOError:
                break
            initiations += 1
            assert len(datagram) == Initiation.SIZE
    assert [(stage.name, stage.reason) for stage in stages] == [(StageName.handshake, Reason.handshake_timeout)]
    assert initiations == SETTINGS.handshake_attempts
    attempts = SETTINGS.handshake_attempts
    assert attempts * TIMEOUT <= stages[0].seconds < attempts * TIMEOUT + SLACK


@pytest.mark.asyncio
async def test_forged_handshake_answers_are_handshake_timeout_not_a_crash() -> None:
    client = Identity(PrivateKey.generate())
    async with FakeRelay(client.public_key, healthy, on_initiation="garbage") as relay:
        ctx = make_ctx(client, relay.public_key, relay.port)
        stages = await probe.runner._run_stages(ctx)
    assert [(stage.name, stage.reason) for stage in stages] == [(StageName.handshake, Reason.handshake_timeout)]
    assert relay.initiations == SETTINGS.handshake_attempts  # a forged cookie reply earned no extra attempt


@pytest.mark.asyncio
async def test_a_stage_that_raises_becomes_internal_error_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(ctx: PathContext) -> StageResult:
        raise RuntimeError("stage bug")

    registry = tuple(
        (name, applies, broken if name is StageName.forward else fn) for name, applies, fn in POST_HANDSHAKE
    )
    monkeypatch.setattr(probe.runner, "POST_HANDSHAKE", registry)
    stages, _, _ = await probe_fake(healthy)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason, forward.detail) == (False, Reason.internal_error, "RuntimeError: stage bug")
    assert all(stage.ok for name, stage in stages.items() if name is not StageName.forward)


@pytest.mark.asyncio
async def test_guard_turns_a_raising_handshake_into_internal_error() -> None:
    async def broken(ctx: PathContext) -> StageResult:
        raise ProtocolError("not caught by the stage")

    ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), 9)
    result = await probe.runner._guard(StageName.handshake, broken, ctx)
    assert (result.ok, result.reason, result.loss) == (False, Reason.internal_error, 1.0)
    assert result.detail == "ProtocolError: not caught by the stage"


@pytest.mark.asyncio
async def test_recv_after_the_relay_port_closes_returns_at_the_deadline() -> None:
    """Regression: an ICMP port unreachable after the handshake used to make `Tunnel.recv` spin forever."""
    client = Identity(PrivateKey.generate())
    async with FakeRelay(client.public_key, None) as relay:
        tunnel = await Tunnel.open(client, relay.public_key, LOOPBACK, relay.port, timeout=0.3)
    try:
        tunnel.send(build_icmp_echo("10.64.0.2", "10.64.0.1", 1, 1, b"x"))  # draws ICMP port unreachable
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await asyncio.wait_for(tunnel.recv(0.3), 2.0) is None
        assert 0.25 <= time.monotonic() - started < 1.0
    finally:
        tunnel.close()


def foreign_error(relay: FakeRelay, ip: IPPacket) -> None:
    """Answer forward echoes with an ICMP error about *another* client's packet that carries our echo id."""
    if to_forward_target(ip):
        other = build_icmp_echo("10.64.0.99", "203.0.113.9", *echo_ids(ip))
        relay.send_inner(build_icmp_error(GATEWAY, INNER, IcmpErrorKind.destination_unreachable, other, code=1))
    healthy(relay, ip)


@pytest.mark.asyncio
async def test_an_icmp_error_about_someone_elses_packet_is_ignored() -> None:
    stages, _, _ = await probe_fake(foreign_error)
    assert stages[StageName.forward].ok, stages[StageName.forward]
