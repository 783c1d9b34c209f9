"""A stage's exchange with a fake clock: booking answers, the verdict's order, loss with probes still in flight,
and the dependency rule that leaves stages after a failed one unjudged. Pure: no socket, no event loop."""

from __future__ import annotations

import statistics
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.packets import (
    Echo,
    IcmpErrorKind,
    build_icmp_echo,
    build_icmp_error,
    internet_checksum,
    parse_icmp,
    parse_ip,
)
from probe.results import PathResult, Reason, StageName, StageResult, path_outcome, worst_reason
from probe.runner import unjudged_after_failures
from probe.stages import REGISTRY
from probe.stages.base import ClaimKind, Demux, PathContext, Settings, claim_of, median, raw_claim
from probe.stages.echo import EchoExchange, MtuExchange
from probe.wireguard import CookieState, Identity, PrivateKey

INNER = IPv4Address("10.64.0.2")
TARGET = IPv4Address("198.51.100.7")


def exchange(packets: int = 3, mtu: bool = False) -> EchoExchange:
    key = PrivateKey.generate().public_key()
    ctx = PathContext(
        relay_name="xx-tst-wg-001",
        relay_key=key,
        entry=IPv4Address("127.0.0.1"),
        port=51820,
        identity=Identity(PrivateKey.generate()),
        identity_index=0,
        inner_v4=INNER,
        inner_v6=None,
        expected_egress=None,
        settings=Settings(packets=packets, forward_target=TARGET),
        cookie_state=CookieState(key),
    )
    if mtu:
        return MtuExchange(
            ctx,
            StageName.mtu,
            TARGET,
            timeout_reason=Reason.mtu_blackhole,
            unreachable_reason=Reason.forward_unreachable,
            size=1280,
        )
    return EchoExchange(
        ctx,
        StageName.forward,
        TARGET,
        timeout_reason=Reason.forward_timeout,
        unreachable_reason=Reason.forward_unreachable,
    )


def answer(probe: bytes, **changes: object) -> bytes:
    echo = parse_icmp(parse_ip(probe))
    assert isinstance(echo, Echo)
    payload = changes.get("payload", echo.payload)
    assert isinstance(payload, bytes)
    return build_icmp_echo(TARGET, INNER, echo.identifier, echo.sequence, payload, reply=True)


def test_enough_good_answers_end_the_stage_ok_with_the_median_rtt() -> None:
    ex = exchange()
    probes = [ex.next_probe(0.0) for _ in range(3)]
    for at, probe in zip((0.010, 0.020, 0.030), probes, strict=True):
        assert not ex.done
        ex.take(parse_ip(answer(probe)), at)
    assert ex.done and ex.finished == 0.030
    result = ex.result()
    assert (result.ok, result.reason, result.seconds, result.loss, result.sent, result.received) == (
        True,
        None,
        0.02,
        0.0,
        3,
        3,
    )
    ex.close()


@given(st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=20))
def test_a_stages_rtt_is_the_median_as_statistics_computes_it(rtts: list[float]) -> None:
    assert median(iter(rtts)) == statistics.median(rtts)


def test_no_answer_is_the_stages_timeout_reason_with_full_loss_and_the_time_waited() -> None:
    ex = exchange()
    for n in range(5):
        ex.next_probe(n * 0.05)
    ex.end(1.0)
    result = ex.result()
    assert (result.ok, result.reason, result.loss, result.sent, result.received) == (
        False,
        Reason.forward_timeout,
        1.0,
        5,
        0,
    )
    assert result.seconds == 1.0  # nothing answered: the time waited
    ex.close()


def test_probes_still_in_flight_at_the_end_are_not_counted_as_lost() -> None:
    ex = exchange()
    first = [ex.next_probe(0.0) for _ in range(3)]
    ex.take(parse_ip(answer(first[0])), 0.010)
    ex.take(parse_ip(answer(first[1])), 0.010)
    ex.next_probe(0.050)  # a resend for the lost third...
    late = ex.next_probe(0.995)  # ...and one sent 5 ms before the end
    ex.take(parse_ip(answer(late)), 0.996)
    assert ex.done
    sent, received, loss = ex.loss()
    # The third probe (sent at 0) and the resend at 0.05 had time: lost. The last one was answered.
    assert (sent, received) == (5, 3) and loss == pytest.approx(0.4)


def test_an_answer_just_sent_is_in_flight_until_two_rtts_have_passed() -> None:
    ex = exchange(packets=2)
    a = ex.next_probe(0.0)
    ex.next_probe(0.0)
    ex.take(parse_ip(answer(a)), 0.1)  # a 100 ms round trip
    ex.next_probe(0.9)
    ex.end(1.0)
    # The second initial probe is lost (sent 1 s ago); the one sent 100 ms before the end is younger than 2 RTTs.
    assert ex.loss()[:2] == (2, 1)


def test_an_icmp_error_about_our_probe_ends_the_stage_at_once_as_unreachable() -> None:
    ex = exchange()
    probe = ex.next_probe(0.0)
    error = build_icmp_error(IPv4Address("10.64.0.1"), INNER, IcmpErrorKind.destination_unreachable, probe, code=1)
    ex.take(parse_ip(error), 0.002)
    assert ex.done and ex.finished == 0.002
    result = ex.result()
    # The code tells a firewall (administratively prohibited) from a missing route: part of the detail.
    assert (result.reason, result.detail) == (
        Reason.forward_unreachable,
        "ICMP destination_unreachable (code 1) from 10.64.0.1",
    )
    # The probe the error quoted was answered, by the error: settled and not received, as the handshake counts a
    # port unreachable (it read sent 0, loss 0 when the error came back within the in-flight margin).
    assert (result.sent, result.received, result.loss) == (1, 0, 1.0)


def test_a_packet_too_big_says_the_mtu_the_relay_reported() -> None:
    ex = exchange()
    probe = ex.next_probe(0.0)
    error = build_icmp_error(IPv4Address("10.64.0.1"), INNER, IcmpErrorKind.packet_too_big, probe, mtu=1200)
    ex.take(parse_ip(error), 0.002)
    # The relay told us its next-hop MTU: the one number an operator needs to fix the link.
    assert ex.result().detail == "ICMP packet_too_big (next-hop MTU 1200) from 10.64.0.1"


def first_fragment(packet: bytes, size: int) -> bytes:
    """The first `size` bytes of an IPv4 packet as a router with a smaller MTU sends them: MF set, length fixed."""
    fragment = bytearray(packet[:size])
    struct.pack_into("!HHH", fragment, 2, size, 0, 0x2000)  # total length; identification; MF, offset 0
    struct.pack_into("!H", fragment, 10, 0)
    struct.pack_into("!H", fragment, 10, internet_checksum(bytes(fragment[:20])))
    return bytes(fragment)


def test_a_large_echo_answered_in_fragments_is_too_big_not_a_corrupt_reply() -> None:
    # A relay whose tunnel MTU is 1000 fragments the 1280-byte reply on its way to us: the path cannot carry the
    # size whole. That is the mtu stage's finding; it read "reply_invalid: malformed", as if the relay corrupted it.
    ex = exchange(mtu=True)
    probes = [ex.next_probe(0.0) for _ in range(3)]
    for at, probe in zip((0.001, 0.002, 0.003), probes, strict=True):
        ex.take(parse_ip(first_fragment(answer(probe), 996)), at)
    ex.end(1.0)
    result = ex.result()
    assert (result.ok, result.reason) == (False, Reason.mtu_too_big)
    assert result.detail == "3 answer(s) came back fragmented: the path back carries less than 1280 bytes whole"
    ex.close()


def test_a_fragment_answering_a_small_echo_is_still_an_invalid_reply() -> None:
    ex = exchange()
    probe = ex.next_probe(0.0)
    ex.take(parse_ip(first_fragment(answer(probe, payload=bytes(100)), 64)), 0.001)
    ex.end(1.0)
    assert (ex.result().reason, ex.result().detail) == (Reason.reply_invalid, "1 invalid repl(ies): fragmented")
    ex.close()


def test_a_wrong_answer_is_reply_invalid_even_with_enough_good_ones() -> None:
    ex = exchange()
    probes = [ex.next_probe(0.0) for _ in range(3)]
    ex.take(parse_ip(answer(probes[0], payload=b"forged-payload")), 0.001)
    for probe in probes:
        ex.take(parse_ip(answer(probe)), 0.002)
    result = ex.result()
    assert (result.ok, result.reason) == (False, Reason.reply_invalid)
    assert result.detail is not None and "wrong_payload" in result.detail


def test_corrupt_answers_make_a_timeout_reply_invalid_and_are_counted() -> None:
    ex = exchange()
    ex.next_probe(0.0)
    ex.corrupt += 2
    ex.end(1.0)
    result = ex.result()
    assert (result.reason, result.rejected) == (Reason.reply_invalid, 2)
    assert result.detail == "2 corrupt packet(s) from the relay"


def test_a_corrupt_packet_is_attributed_by_its_identifiers() -> None:
    ex = exchange()
    probe = ex.next_probe(0.0)
    reply = bytearray(answer(probe))
    reply[10] ^= 0xFF  # the IPv4 header checksum: parse_ip refuses it
    assert raw_claim(bytes(reply)) == ex.claim == (ClaimKind.echo, ex.template.identifier)
    ip = parse_ip(answer(probe))
    assert claim_of(ip.version, ip.proto, ip.payload) == ex.claim
    assert raw_claim(b"\x45" + bytes(5)) is None  # too short to say anything


def stage(name: StageName, ok: bool, reason: Reason | None = None) -> StageResult:
    return StageResult(name=name, ok=ok, reason=reason, seconds=0.0, loss=0.0)


def test_stages_after_a_failed_tunnel_or_forward_are_not_judged_but_passes_stay_passes() -> None:
    stages = [
        stage(StageName.tunnel, True),
        stage(StageName.forward, False, Reason.forward_timeout),
        stage(StageName.egress, False, Reason.egress_timeout),
        stage(StageName.mtu, True),
    ]
    out = unjudged_after_failures(stages, REGISTRY)
    assert [(s.name, s.ok, s.reason, s.judged) for s in out] == [
        (StageName.tunnel, True, None, True),
        (StageName.forward, False, Reason.forward_timeout, True),
        (StageName.egress, False, None, False),
        (StageName.mtu, True, None, True),
    ]
    chain = unjudged_after_failures(
        [stage(StageName.tunnel, False, Reason.tunnel_timeout)]
        + [stage(n, False, Reason.forward_timeout) for n in (StageName.forward, StageName.egress, StageName.mtu)],
        REGISTRY,
    )
    assert [s.judged for s in chain] == [True, False, False, False]
    assert path_outcome(tuple(chain)) == (False, Reason.tunnel_timeout)


def test_a_stage_answered_through_the_nat_keeps_its_own_failure_when_forward_failed() -> None:
    # A relay that drops forwarded ICMP but NATs UDP to the wrong address: the reflector answered, so the NAT
    # carried egress's traffic and the wrong address is egress's own finding, not an echo of forward_timeout.
    mismatch = stage(StageName.egress, False, Reason.egress_mismatch).model_copy(
        update={"sent": 3, "received": 3, "detail": "reflector saw 198.18.101.2, expected 198.18.1.2"}
    )
    out = unjudged_after_failures(
        [stage(StageName.tunnel, True), stage(StageName.forward, False, Reason.forward_timeout), mismatch],
        REGISTRY,
    )
    assert out[-1] == mismatch


def path(*stages: StageResult) -> PathResult:
    ok, reason = path_outcome(stages)
    return PathResult(port=51820, family="ipv4", ok=ok, reason=reason, stages=stages, entry="192.0.2.1")


def test_a_paths_reason_is_its_first_failure_and_a_servers_is_its_earliest_failing_stage() -> None:
    hs = stage(StageName.handshake, True)
    forward_broken = path(hs, stage(StageName.tunnel, True), stage(StageName.forward, False, Reason.forward_timeout))
    port_closed = path(stage(StageName.handshake, False, Reason.port_unreachable))
    fine = path(hs, stage(StageName.tunnel, True))
    assert (forward_broken.ok, forward_broken.reason) == (False, Reason.forward_timeout)
    assert worst_reason((fine, forward_broken, port_closed)) is Reason.port_unreachable
    assert worst_reason((forward_broken, fine)) is Reason.forward_timeout
    assert worst_reason((fine,)) is None
    egress = path(hs, stage(StageName.egress, False, Reason.egress_mismatch))
    assert worst_reason((egress, forward_broken)) is Reason.forward_timeout  # earlier stage wins, not order


def test_one_good_answer_passes_the_stage_and_the_rest_is_loss() -> None:
    """Loss is not an outage: at 20% loss each way a round trip through the NAT survives 0.8**4 of the time, and
    a stage that got one good answer has proved the path carries traffic."""
    ex = exchange()
    probes = [ex.next_probe(n * 0.05) for n in range(20)]
    ex.take(parse_ip(answer(probes[7])), 0.36)
    ex.end(1.0)
    result = ex.result()
    assert (result.ok, result.reason, result.received) == (True, None, 1)
    assert result.loss == pytest.approx(1 - 1 / result.sent) and result.sent >= 19


def test_the_one_pass_check_books_exactly_what_the_full_judgement_books() -> None:
    """The demultiplexer's quick path (a predicted answer recognised without parsing) against the full judgement
    alone, over good, duplicate, corrupt, forged and unsent answers: the same booking, the same verdict."""

    def run(quick: bool) -> tuple[dict[int, float], list[str], int, tuple[Reason | None, str | None]]:
        ex = exchange(packets=3)
        if not quick:
            ex.quick = lambda packet, at: False  # type: ignore[method-assign]
        probes = [ex.next_probe(0.0) for _ in range(3)]
        good = answer(probes[0])
        flipped = good[:-1] + bytes([good[-1] ^ 1])
        unsent = build_icmp_echo(TARGET, INNER, ex.claim[1], 9, parse_icmp(parse_ip(good)).payload, reply=True)  # type: ignore[union-attr]
        forged = build_icmp_echo(IPv4Address("198.51.100.8"), INNER, ex.claim[1], 2, b"x" * 10, reply=True)
        demux = Demux([ex], lambda: 0.01, lambda: None)
        for packet in (good, good, flipped, good[:30], unsent, forged, answer(probes[1]) + bytes(10)):
            demux.dispatch(packet)
        return ex.answered, [str(v.mismatch) for v in ex.invalid], ex.corrupt, ex.verdict()

    assert run(quick=True) == run(quick=False)
    answered, invalid, corrupt, _verdict = run(quick=True)
    assert sorted(answered) == [1, 2] and corrupt == 1 and len(invalid) == 3
