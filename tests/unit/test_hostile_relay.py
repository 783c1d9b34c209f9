"""The real stages and runner against a simulated, sometimes hostile, WireGuard relay on loopback (IPv4, IPv6).

The relay is `probe.sim.SimRelay`: the sans-I/O `Responder` behind non-blocking UDP sockets on the test's own event
loop, with the package's faults (garbage, forged handshakes, cookies only) and, for the lies that need a script,
a *behaviour* that answers each inner packet. The forward target and the reflector are never contacted: the relay
answers on their behalf from inside the tunnel, so every byte stays on loopback. No root, no namespaces, no
threads. Timing is not asserted here: the retry, loss and timeout logic has fake-clock tests of its own
(test_attempts.py, test_exchange.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from probe import reflector
from probe.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    Echo,
    IcmpErrorKind,
    IPPacket,
    build_icmp_echo,
    build_icmp_error,
    build_udp,
    packed,
    parse_icmp,
    parse_udp,
)
from probe.results import Reason, StageName, StageResult
from probe.runner import StagesRun, run_stages
from probe.sim.conversation import Conversation
from probe.sim.faults import SimFault
from probe.sim.plan import RelaySpec
from probe.sim.relay import SimRelay
from probe.sim.world import World
from probe.stages import REGISTRY, Registry, handshake
from probe.stages.base import Exchange, PathContext, Settings
from probe.stages.driver import drive
from probe.tunnel import Record, Tunnel
from probe.wireguard import CookieState, Identity, Initiation, PrivateKey, ProtocolError, PublicKey

Address = IPv4Address | IPv6Address
LOOPBACK: dict[int, Address] = {4: IPv4Address("127.0.0.1"), 6: IPv6Address("::1")}
GATEWAY: dict[int, Address] = {4: IPv4Address("10.64.0.1"), 6: IPv6Address("fc00:bbbb:bbbb:bb01::1")}
INNER: dict[int, Address] = {4: IPv4Address("10.64.0.2"), 6: IPv6Address("fc00:bbbb:bbbb:bb01::2")}
FORWARD: dict[int, Address] = {4: IPv4Address("198.51.100.7"), 6: IPv6Address("2001:db8:77::7")}
REFLECTOR_PORT = 7777
EGRESS: dict[int, Address] = {4: IPv4Address("192.0.2.45"), 6: IPv6Address("2001:db8:45::45")}
TIMEOUT = 0.3
SETTINGS = Settings(
    timeout=TIMEOUT,
    packets=3,
    handshake_timeout=TIMEOUT,
    handshake_attempts=2,
    forward_target=IPv4Address(FORWARD[4]),
    forward_target_v6=IPv6Address(FORWARD[6]),
    reflector=(FORWARD[4], REFLECTOR_PORT),
    reflector_v6=(FORWARD[6], REFLECTOR_PORT),
    gateway=IPv4Address(GATEWAY[4]),
    gateway_v6=IPv6Address(GATEWAY[6]),
)
ALL_STAGES = [StageName.handshake, StageName.tunnel, StageName.forward, StageName.egress, StageName.mtu]
FAMILIES = pytest.mark.parametrize("family", [4, 6])

WORLD = World(
    forward_v4=IPv4Address(FORWARD[4]),
    forward_v6=IPv6Address(FORWARD[6]),
    reflector_v4=(IPv4Address(FORWARD[4]), REFLECTOR_PORT),
    reflector_v6=(IPv6Address(FORWARD[6]), REFLECTOR_PORT),
)
Behaviour = Callable[[Conversation, IPPacket], None]


def fake_relay(
    client: PublicKey, behaviour: Behaviour | None, *, family: int = 4, faults: tuple[str, ...] = ()
) -> SimRelay:
    """A relay of the simulated fleet on loopback that knows `client`, answering through `behaviour`."""
    spec = RelaySpec(
        name="xx-tst-wg-001",
        ipv4=IPv4Address(LOOPBACK[4]),
        ipv6=IPv6Address(LOOPBACK[6]) if family == 6 else None,
        egress_v4=IPv4Address(EGRESS[4]),
        egress_v6=IPv6Address(EGRESS[6]),
    )
    return SimRelay(
        [client],
        spec=spec,
        world=WORLD,
        behaviour=behaviour,
        faults=[SimFault.parse(fault) for fault in faults],
        record=True,
    )


def port_of(relay: SimRelay, family: int) -> int:
    return next(port for host, port in relay.bound() if ip_address(host).version == family)


def is_icmp(ip: IPPacket) -> bool:
    return ip.proto in (PROTO_ICMP, PROTO_ICMPV6)


def reply_to(ip: IPPacket, *, egress: Address) -> bytes | None:
    """A healthy answer for one inner packet, the reflector reporting `egress` as the address it saw."""
    if is_icmp(ip):
        echo = parse_icmp(ip)
        if isinstance(echo, Echo) and not echo.is_reply:
            return build_icmp_echo(ip.dst, ip.src, echo.identifier, echo.sequence, echo.payload, reply=True)
    elif ip.proto == PROTO_UDP:
        udp = parse_udp(ip)
        nonce = reflector.parse_request(udp.payload)
        if nonce is not None and (ip.dst, udp.dport) == (packed(FORWARD[ip.version]), REFLECTOR_PORT):
            answer = reflector.build_response(nonce, egress, udp.sport)
            return build_udp(ip.dst, ip.src, udp.dport, udp.sport, answer)
    return None


def forged_reply(ip: IPPacket, *, source: Address | None = None) -> bytes | None:
    """A well-formed answer with the right identifiers but a wrong payload (or, given `source`, from elsewhere)."""
    if is_icmp(ip):
        echo = parse_icmp(ip)
        assert isinstance(echo, Echo)
        payload = echo.payload if source else bytes([echo.payload[0] ^ 0xFF]) + echo.payload[1:]
        return build_icmp_echo(source or ip.dst, ip.src, echo.identifier, echo.sequence, payload, reply=True)
    udp = parse_udp(ip)
    answer = reflector.build_response(os.urandom(reflector.NONCE_SIZE), EGRESS[ip.version], udp.sport)
    return build_udp(ip.dst, ip.src, udp.dport, udp.sport, answer)


def to_forward_target(ip: IPPacket) -> bool:
    return is_icmp(ip) and ip.dst == packed(FORWARD[ip.version])


def to_gateway(ip: IPPacket) -> bool:
    return is_icmp(ip) and ip.dst == packed(GATEWAY[ip.version])


def echo_ids(ip: IPPacket) -> tuple[int, int, bytes]:
    echo = parse_icmp(ip)
    assert isinstance(echo, Echo)
    return echo.identifier, echo.sequence, echo.payload


def healthy(conv: Conversation, ip: IPPacket) -> None:
    conv.reply(ip)


def make_ctx(
    client: Identity, relay_key: PublicKey, port: int, settings: Settings = SETTINGS, family: int = 4
) -> PathContext:
    return PathContext(
        relay_name="xx-tst-wg-001",
        relay_key=relay_key,
        entry=LOOPBACK[family],
        port=port,
        identity=client,
        identity_index=0,
        inner_v4=IPv4Address(INNER[4]),
        inner_v6=IPv6Address(INNER[6]),
        expected_egress=EGRESS[family],
        settings=settings,
        cookie_state=CookieState(relay_key),
        record=Record(),
    )


def by_name(stages: tuple[StageResult, ...]) -> dict[StageName, StageResult]:
    return {stage.name: stage for stage in stages}


def watching(registry: Registry, tunnels: list[Tunnel]) -> Registry:
    """`registry` with its handshake wrapped to keep the tunnel it returns, so a test can look at it afterwards."""

    async def handshake_and_keep(ctx: PathContext) -> tuple[StageResult, Tunnel | None]:
        result, tunnel = await registry.handshake(ctx)
        if tunnel is not None:
            tunnels.append(tunnel)
        return result, tunnel

    return Registry(handshake_and_keep, registry.stages)


async def probe_fake(
    behaviour: Behaviour | None,
    *,
    family: int = 4,
    registry: Registry = REGISTRY,
    faults: tuple[str, ...] = (),
) -> tuple[dict[StageName, StageResult], StagesRun, SimRelay]:
    client = Identity(PrivateKey.generate())
    tunnels: list[Tunnel] = []
    async with fake_relay(client.public_key, behaviour, family=family, faults=faults) as relay:
        ctx = make_ctx(client, relay.public_key, port_of(relay, family), family=family)
        run = await run_stages(ctx, watching(registry, tunnels))
    if run.stages[0].ok:
        assert [stage.name for stage in run.stages] == ALL_STAGES
        assert tunnels and tunnels[0].flow.sock.fileno() == -1  # the runner closed the tunnel
    return by_name(run.stages), run, relay


@pytest.mark.asyncio
@FAMILIES
async def test_healthy_relay_passes_every_stage_without_loss(family: int) -> None:
    stages, run, relay = await probe_fake(healthy, family=family)
    for stage in stages.values():
        assert (stage.name, stage.ok, stage.reason, stage.loss, stage.judged) == (stage.name, True, None, 0.0, True)
    assert stages[StageName.tunnel].received == 3
    egress_detail = stages[StageName.egress].detail
    assert egress_detail is not None and str(EGRESS[family]) in egress_detail
    # The relay really saw each stage's probes, from our tunnel address.
    assert {ip.dst for ip in relay.inner} == {packed(GATEWAY[family]), packed(FORWARD[family])}
    assert {ip.src for ip in relay.inner} == {packed(INNER[family])}
    assert max(ip.total_length for ip in relay.inner) == SETTINGS.mtu_probe_size
    hs = stages[StageName.handshake]
    assert (hs.sent, hs.received, hs.rejected, run.rejected) == (1, 1, 0, 0)


@pytest.mark.asyncio
@FAMILIES
async def test_an_answer_is_timed_when_it_arrived_not_when_a_busy_loop_read_it(family: int) -> None:
    # The relay answers the forward stage's echoes at once, then the event loop is kept busy for BUSY seconds
    # before the prober's socket is read (as when many paths are in flight): the kernel's receive timestamp
    # times the answers, so the round trip is the relay's, not the loop's delay.
    busy = 0.12
    blocked: list[bool] = []

    def answer_then_block(conv: Conversation, ip: IPPacket) -> None:
        conv.reply(ip)
        if to_forward_target(ip) and not blocked:
            blocked.append(True)
            asyncio.get_running_loop().call_soon(time.sleep, busy)

    stages, _, _ = await probe_fake(answer_then_block, family=family)
    forward = stages[StageName.forward]
    assert blocked and (forward.ok, forward.received) == (True, 3)
    assert forward.seconds < busy / 2  # timed by the loop, every answer would read at least `busy`


@pytest.mark.asyncio
async def test_garbage_around_the_handshake_response_is_counted_and_said() -> None:
    stages, _, _ = await probe_fake(healthy, faults=("garbage",))
    # Three datagrams come before the response and a duplicate after it: the duplicate is the handshake's to reject
    # if it came in the same read, the tunnel's if later.
    hs = stages[StageName.handshake]
    assert (hs.ok, hs.sent, hs.received) == (True, 1, 1)
    assert hs.rejected >= 3
    assert hs.detail is not None and "answer(s) did not authenticate" in hs.detail


@pytest.mark.asyncio
@FAMILIES
async def test_garbage_from_the_relay_is_counted_and_dropped_and_the_path_still_passes(family: int) -> None:
    client = Identity(PrivateKey.generate())
    async with fake_relay(client.public_key, healthy, family=family, faults=("garbage",)) as relay:
        ctx = make_ctx(client, relay.public_key, port_of(relay, family), family=family)
        result, tunnel = await handshake.run(ctx)
        assert result.ok and tunnel is not None, result
        exchanges = [stage.prepare(ctx) for stage in REGISTRY.stages]
        try:
            demux = await drive(tunnel, exchanges, TIMEOUT, time.monotonic)
            # The duplicated handshake response is the handshake's to reject when it came in the same read.
            duplicate = result.rejected - 3
            for _ in range(100):  # let answers to probes still in flight arrive, so the books can balance
                if tunnel.rejected + duplicate == relay.stats.bad_sent:
                    break
                await asyncio.sleep(0.01)
                while tunnel.flow.buffer:
                    tunnel._open(tunnel.flow.buffer.popleft()[0])
            assert ctx.record is not None
            received = [packet for _, direction, packet in ctx.record.packets if direction == "in"]
            assert (tunnel.rejected + duplicate, len(received)) == (relay.stats.bad_sent, relay.stats.valid_sent)
        finally:
            tunnel.close()
    assert relay.stats.bad_sent > 12 * 5
    for stage in (exchange.result() for exchange in exchanges):
        assert (stage.name, stage.ok, stage.reason, stage.loss) == (stage.name, True, None, 0.0)
    assert len(set(received)) == len(received)  # no replay was delivered twice
    assert (demux.unattributed, demux.stray) == (0, 0)  # nothing forged or flipped got through the crypto


@pytest.mark.asyncio
@pytest.mark.parametrize(("forged_source", "mismatch"), [(False, "wrong_payload"), (True, "wrong_source")])
async def test_forged_echo_replies_fail_forward_as_reply_invalid(forged_source: bool, mismatch: str) -> None:
    def forge(conv: Conversation, ip: IPPacket) -> None:
        source = IPv4Address("198.51.100.8") if forged_source else None
        reply = forged_reply(ip, source=source) if to_forward_target(ip) else reply_to(ip, egress=EGRESS[ip.version])
        if reply is not None:
            conv.send_inner(reply)

    stages, _, _ = await probe_fake(forge)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason) == (False, Reason.reply_invalid)
    assert forward.detail is not None and mismatch in forward.detail
    assert stages[StageName.tunnel].ok
    # Egress and mtu cross the same NAT: with forward failed, their own failures are not judged.
    assert stages[StageName.egress].ok
    assert (stages[StageName.mtu].judged, stages[StageName.mtu].reason) == (False, None)


@pytest.mark.asyncio
@FAMILIES
async def test_a_corrupt_inner_packet_without_valid_replies_is_reply_invalid_not_a_timeout(family: int) -> None:
    def corrupt(conv: Conversation, ip: IPPacket) -> None:
        reply = reply_to(ip, egress=EGRESS[ip.version])
        if reply is None:
            return
        if to_forward_target(ip):
            broken = bytearray(reply)
            # IPv4: the header checksum; IPv6: the payload length, so the packet claims more than it has.
            broken[10 if family == 4 else 5] ^= 0xFF
            reply = bytes(broken)
        conv.send_inner(reply)

    stages, _, _ = await probe_fake(corrupt, family=family)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason, forward.received) == (False, Reason.reply_invalid, 0)
    assert forward.rejected >= 3 and forward.detail is not None and "corrupt" in forward.detail
    assert stages[StageName.tunnel].ok and stages[StageName.egress].ok


@pytest.mark.asyncio
async def test_a_corrupt_packet_counts_against_its_own_stage_only() -> None:
    """Regression: one corrupt-packet counter for the whole path turned the forward stage's timeout into
    reply_invalid when the corrupt packet was a copy of the tunnel stage's answer."""

    def corrupt_copies_and_no_nat(conv: Conversation, ip: IPPacket) -> None:
        if to_gateway(ip):
            reply = reply_to(ip, egress=EGRESS[ip.version])
            assert reply is not None
            broken = bytearray(reply)
            broken[10] ^= 0xFF
            conv.send_inner(bytes(broken))
            conv.send_inner(reply)
        elif not to_forward_target(ip):
            conv.reply(ip)

    stages, _, _ = await probe_fake(corrupt_copies_and_no_nat)
    tunnel, forward = stages[StageName.tunnel], stages[StageName.forward]
    assert (tunnel.ok, tunnel.rejected) == (True, 3)
    assert (forward.ok, forward.reason, forward.rejected) == (False, Reason.forward_timeout, 0)


@pytest.mark.asyncio
@FAMILIES
async def test_icmp_unreachable_for_forward_echoes_is_forward_unreachable(family: int) -> None:
    def unreachable(conv: Conversation, ip: IPPacket) -> None:
        if to_forward_target(ip):
            original = build_icmp_echo(ip.src, ip.dst, *echo_ids(ip))
            error = build_icmp_error(
                GATEWAY[family], INNER[family], IcmpErrorKind.destination_unreachable, original, code=1
            )
            conv.send_inner(error)
        else:
            conv.reply(ip)

    stages, _, _ = await probe_fake(unreachable, family=family)
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason) == (False, Reason.forward_unreachable)
    assert forward.detail is not None
    assert "destination_unreachable" in forward.detail and str(GATEWAY[family]) in forward.detail
    assert stages[StageName.tunnel].ok


@pytest.mark.asyncio
async def test_icmp_errors_for_tunnel_and_reflector_probes_are_unreachable_verdicts() -> None:
    def errors(conv: Conversation, ip: IPPacket) -> None:
        if to_gateway(ip):
            original = build_icmp_echo(ip.src, ip.dst, *echo_ids(ip))
            conv.send_inner(build_icmp_error(GATEWAY[4], INNER[4], IcmpErrorKind.destination_unreachable, original))
        elif ip.proto == PROTO_UDP:
            udp = parse_udp(ip)
            original = build_udp(ip.src, ip.dst, udp.sport, udp.dport, udp.payload)
            error = build_icmp_error(FORWARD[4], INNER[4], IcmpErrorKind.destination_unreachable, original, code=3)
            conv.send_inner(error)
        else:
            conv.reply(ip)

    stages, _, _ = await probe_fake(errors)
    assert stages[StageName.tunnel].reason is Reason.tunnel_unreachable
    # The tunnel failed, so forward's outcome is not judged; it passed here, and a pass stays a pass.
    assert stages[StageName.forward].ok

    def reflector_closed(conv: Conversation, ip: IPPacket) -> None:
        if ip.proto == PROTO_UDP:
            errors(conv, ip)
        else:
            conv.reply(ip)

    stages, _, _ = await probe_fake(reflector_closed)
    egress = stages[StageName.egress]
    assert (egress.ok, egress.reason) == (False, Reason.egress_unreachable)
    assert egress.detail is not None and "destination_unreachable" in egress.detail


@pytest.mark.asyncio
@FAMILIES
async def test_packet_too_big_for_the_mtu_probe_is_mtu_too_big(family: int) -> None:
    def too_big(conv: Conversation, ip: IPPacket) -> None:
        if to_forward_target(ip) and ip.total_length > 1000:
            original = build_icmp_echo(ip.src, ip.dst, *echo_ids(ip))
            conv.send_inner(build_icmp_error(GATEWAY[family], INNER[family], IcmpErrorKind.packet_too_big, original))
        else:
            conv.reply(ip)

    stages, _, _ = await probe_fake(too_big, family=family)
    mtu = stages[StageName.mtu]
    assert (mtu.ok, mtu.reason, mtu.judged) == (False, Reason.mtu_too_big, True)
    assert all(stage.ok for name, stage in stages.items() if name is not StageName.mtu)


@pytest.mark.asyncio
@FAMILIES
async def test_reflector_reporting_another_address_is_egress_mismatch(family: int) -> None:
    seen: Address = IPv4Address("192.0.2.99") if family == 4 else IPv6Address("2001:db8:99::99")

    def wrong_egress(conv: Conversation, ip: IPPacket) -> None:
        reply = reply_to(ip, egress=seen)
        if reply is not None:
            conv.send_inner(reply)

    stages, _, _ = await probe_fake(wrong_egress, family=family)
    egress = stages[StageName.egress]
    assert (egress.ok, egress.reason) == (False, Reason.egress_mismatch)
    assert egress.detail is not None and str(seen) in egress.detail and str(EGRESS[family]) in egress.detail
    assert all(stage.ok for name, stage in stages.items() if name is not StageName.egress)


@pytest.mark.asyncio
@FAMILIES
async def test_a_broken_nat_is_forward_timeout_alone_and_later_stages_are_not_judged(family: int) -> None:
    def no_nat(conv: Conversation, ip: IPPacket) -> None:
        if to_gateway(ip):
            conv.reply(ip)

    stages, _, _ = await probe_fake(no_nat, family=family)
    assert stages[StageName.tunnel].ok
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason, forward.judged, forward.received) == (False, Reason.forward_timeout, True, 0)
    for name in (StageName.egress, StageName.mtu):
        stage = stages[name]
        assert (stage.ok, stage.reason, stage.judged) == (False, None, False), stage
        assert stage.detail == "not judged: forward failed"


@pytest.mark.asyncio
async def test_relay_silent_after_handshake_fails_the_tunnel_and_judges_nothing_after_it() -> None:
    stages, _, relay = await probe_fake(lambda conv, ip: None)
    assert stages[StageName.handshake].ok
    tunnel = stages[StageName.tunnel]
    assert (tunnel.ok, tunnel.reason, tunnel.loss, tunnel.received) == (False, Reason.tunnel_timeout, 1.0, 0)
    assert tunnel.sent >= 3
    for name in (StageName.forward, StageName.egress, StageName.mtu):
        assert (stages[name].judged, stages[name].reason) == (False, None)
    assert len(relay.inner) >= 12  # the probes did reach the relay and decrypted there


@pytest.mark.asyncio
async def test_relay_that_vanishes_after_the_handshake_gives_timeouts_not_a_hang() -> None:
    # Every socket closes at the first packet after the handshake: the client's next datagrams draw ICMP port
    # unreachable on loopback.
    stages, _, _ = await asyncio.wait_for(probe_fake(healthy, faults=("vanish",)), 10)  # a hang guard
    assert stages[StageName.handshake].ok
    assert [stage.ok for stage in stages.values()] == [True, False, False, False, False]
    assert stages[StageName.tunnel].reason is Reason.tunnel_timeout


@pytest.mark.asyncio
@FAMILIES
async def test_handshake_to_a_closed_port_is_port_unreachable(family: int) -> None:
    with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM) as probe_port:
        probe_port.bind((str(LOOPBACK[family]), 0))
        port = probe_port.getsockname()[1]
    ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), port, family=family)
    run = await run_stages(ctx)
    assert [(stage.name, stage.reason) for stage in run.stages] == [(StageName.handshake, Reason.port_unreachable)]
    assert (run.stages[0].sent, run.stages[0].received) == (1, 0)


@pytest.mark.asyncio
async def test_handshake_to_a_silent_socket_is_handshake_timeout_after_every_attempt() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((str(LOOPBACK[4]), 0))
        silent.setblocking(False)
        ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), silent.getsockname()[1])
        run = await run_stages(ctx)
        initiations = 0
        while True:
            try:
                datagram = silent.recv(65535)
            except BlockingIOError:
                break
            initiations += 1
            assert len(datagram) == Initiation.SIZE
    hs = run.stages[0]
    assert [(stage.name, stage.reason) for stage in run.stages] == [(StageName.handshake, Reason.handshake_timeout)]
    assert initiations == SETTINGS.handshake_attempts
    # Regression: the stage used to say sent 0 after two initiations.
    assert (hs.sent, hs.received, hs.loss) == (initiations, 0, 1.0)


@pytest.mark.asyncio
async def test_forged_handshake_answers_are_handshake_timeout_and_say_they_did_not_authenticate() -> None:
    stages, _, relay = await probe_fake(healthy, faults=("forge_handshake",))
    hs = stages[StageName.handshake]
    assert (hs.reason, hs.sent, hs.received) == (Reason.handshake_timeout, 2, 0)
    assert relay.stats.initiations == SETTINGS.handshake_attempts  # a forged cookie reply earned no extra attempt
    assert hs.rejected == 5 * relay.stats.initiations
    assert hs.detail is not None and "did not authenticate" in hs.detail


@pytest.mark.asyncio
async def test_a_relay_that_only_ever_sends_cookie_replies_is_cookie_failed() -> None:
    stages, _, relay = await probe_fake(healthy, faults=("cookie_only",))
    hs = stages[StageName.handshake]
    assert (hs.ok, hs.reason) == (False, Reason.cookie_failed)
    # Each cookie earns one more initiation, up to the budget once more.
    assert relay.stats.initiations == 2 * SETTINGS.handshake_attempts == hs.sent
    assert hs.detail is not None and "cookie" in hs.detail


@pytest.mark.asyncio
async def test_a_namespace_that_is_gone_is_socket_error_not_internal_error() -> None:
    settings = SETTINGS._replace(netns="wgprobe-test-no-such-namespace")
    ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), 9, settings)
    run = await run_stages(ctx)
    hs = run.stages[0]
    assert (hs.reason, hs.sent) == (Reason.socket_error, 0)
    assert hs.detail is not None and "wgprobe-test-no-such-namespace" in hs.detail


@pytest.mark.asyncio
async def test_a_send_error_after_the_handshake_is_socket_error_for_the_stages() -> None:
    async def handshake_then_break_the_socket(ctx: PathContext) -> tuple[StageResult, Tunnel | None]:
        result, tunnel = await handshake.run(ctx)
        assert tunnel is not None
        tunnel.flow.sock.shutdown(socket.SHUT_WR)  # every later send fails with EPIPE, an OSError
        return result, tunnel

    stages, _, _ = await probe_fake(healthy, registry=Registry(handshake_then_break_the_socket, REGISTRY.stages))
    assert stages[StageName.handshake].ok
    for name in (StageName.tunnel, StageName.forward, StageName.egress, StageName.mtu):
        reason = stages[name].reason if stages[name].judged else Reason.socket_error
        assert reason is Reason.socket_error, stages[name]
    assert stages[StageName.tunnel].judged


@pytest.mark.asyncio
async def test_a_stage_that_raises_becomes_internal_error_and_the_others_still_run() -> None:
    def broken(ctx: PathContext) -> Exchange:
        raise RuntimeError("stage bug")

    stages, _, _ = await probe_fake(healthy, registry=REGISTRY.replace(StageName.forward, broken))
    forward = stages[StageName.forward]
    assert (forward.ok, forward.reason, forward.detail) == (False, Reason.internal_error, "RuntimeError: stage bug")
    assert stages[StageName.tunnel].ok and stages[StageName.egress].ok


@pytest.mark.asyncio
async def test_a_judge_that_raises_fails_its_own_stage_only() -> None:
    prepare = next(stage.prepare for stage in REGISTRY.stages if stage.name is StageName.tunnel)

    def crashing_judge(ctx: PathContext) -> Exchange:
        exchange = prepare(ctx)

        def judge(ip: IPPacket) -> tuple[int | None, object]:
            raise ValueError("judge bug")

        def quick(packet: bytes, at: float) -> bool:
            raise ValueError("judge bug")

        # Both ways an answer is judged: the one-pass check of a predicted answer, and the full judgement.
        exchange.judge = judge  # type: ignore[assignment,method-assign]
        exchange.quick = quick  # type: ignore[method-assign]
        return exchange

    stages, _, _ = await probe_fake(healthy, registry=REGISTRY.replace(StageName.tunnel, crashing_judge))
    tunnel = stages[StageName.tunnel]
    assert (tunnel.reason, tunnel.detail) == (Reason.internal_error, "ValueError: judge bug")
    assert stages[StageName.forward].ok and stages[StageName.mtu].ok


@pytest.mark.asyncio
async def test_a_raising_handshake_becomes_internal_error() -> None:
    async def broken(ctx: PathContext) -> tuple[StageResult, Tunnel | None]:
        raise ProtocolError("not caught by the stage")

    ctx = make_ctx(Identity(PrivateKey.generate()), PrivateKey.generate().public_key(), 9)
    run = await run_stages(ctx, Registry(broken, REGISTRY.stages))
    (result,) = run.stages
    assert (result.ok, result.reason, result.loss) == (False, Reason.internal_error, 1.0)
    assert result.detail == "ProtocolError: not caught by the stage"


@pytest.mark.asyncio
async def test_recv_after_the_relay_port_closes_returns_at_the_deadline() -> None:
    """Regression: an ICMP port unreachable after the handshake used to make `Tunnel.recv` spin forever."""
    client = Identity(PrivateKey.generate())
    async with fake_relay(client.public_key, lambda conv, ip: None) as relay:
        tunnel = await Tunnel.open(client, relay.public_key, LOOPBACK[4], port_of(relay, 4), timeout=0.3)
    try:
        tunnel.send(build_icmp_echo("10.64.0.2", "10.64.0.1", 1, 1, b"x"))  # draws ICMP port unreachable
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(tunnel.recv(0.3), 5.0) is None  # a hang guard, not a timing assertion
    finally:
        tunnel.close()


def foreign_error(conv: Conversation, ip: IPPacket) -> None:
    """Answer forward echoes with an ICMP error about *another* client's packet that carries our echo id."""
    if to_forward_target(ip):
        other = build_icmp_echo("10.64.0.99", "203.0.113.9", *echo_ids(ip))
        conv.send_inner(build_icmp_error(GATEWAY[4], INNER[4], IcmpErrorKind.destination_unreachable, other, code=1))
    conv.reply(ip)


@pytest.mark.asyncio
async def test_an_icmp_error_about_someone_elses_packet_is_ignored() -> None:
    stages, _, _ = await probe_fake(foreign_error)
    assert stages[StageName.forward].ok, stages[StageName.forward]
