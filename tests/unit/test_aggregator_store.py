"""The result store's intake: every kind of bad message is counted by reason and dropped without a trace in the
state, re-sends are recognised, late (replayed) results fill gaps without overwriting newer ones, and packets are
pooled into counters. Driven by a fake clock; no sleeps."""

import ast
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import probe.aggregator
from probe.aggregator.intake import MAX_PAYLOAD, Outcome, claimed_result_id
from probe.aggregator.metrics import MetricsRenderer, render
from probe.aggregator.records import AgentRecord, ClockChange, port_slot
from probe.aggregator.store import REDELIVERY_WINDOW, ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_path, make_result, make_status, payload
from probe.aggregator.views import agent_views
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import StageName
from tests.unit.test_wg_sans_io import imported_modules

RELAYS = ["se-got-wg-001", "se-got-wg-002", "de-ber-wg-001"]
A, B = "agent-a", "agent-b"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> ResultStore:
    return ResultStore(make_inventory(RELAYS), now=clock)


def ingest(store: ResultStore, message: ResultMessage) -> Outcome:
    return store.ingest_result(payload(message), result_topic(message.agent, message.server)).outcome


def good(clock: FakeClock, **changes: Any) -> dict[str, Any]:
    """A valid result as decoded JSON, to break one thing in."""
    data: dict[str, Any] = json.loads(payload(make_result(RELAYS[0], A, taken_at=clock())))
    data.update(changes)
    return data


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_a_good_result_is_kept(store: ResultStore, clock: FakeClock) -> None:
    message = make_result(RELAYS[0], A, taken_at=clock(), ports=(51820, 4711))
    ingested = store.ingest_result(payload(message), result_topic(A, RELAYS[0]))
    assert ingested.accepted and ingested.sender == A and not ingested.first_from_sender
    record = store.servers[RELAYS[0]].agents[A]
    assert (record.newest.result_id, record.newest.round, record.newest.control_ok) == (message.result_id, 0, True)
    assert sorted(record.paths) == [
        ("4000-33433", "ipv4"),
        ("4000-33433", "ipv6"),
        ("51820", "ipv4"),
        ("51820", "ipv6"),
    ]
    assert store.messages[Outcome.accepted] == 1
    assert store.agents[A].results == 1


def test_kept_stages_are_plain_values_the_collector_stops_tracking(store: ResultStore, clock: FakeClock) -> None:
    # The store holds ~180,000 stages at 1,000 relays x 3 agents: kept as the structs they were read into, which the
    # cyclic collector never tracks (gc=False); as tracked objects its passes over them took ~15% of ingest time.
    failing = make_path(4711, "ipv4", fail=StageName.forward)
    message = make_result(RELAYS[0], A, taken_at=clock(), paths=[failing, make_path(51820, "ipv6")])
    assert ingest(store, message) is Outcome.accepted
    stages = [stage for path in store.servers[RELAYS[0]].agents[A].paths.values() for stage in path.stages]
    gc.collect()
    assert stages and not any(gc.is_tracked(stage) for stage in stages)
    for stage in stages:
        assert type(stage.name) is str and (stage.reason is None or type(stage.reason) is str)
    assert {stage.reason for stage in stages} >= {"forward_timeout", None}


def _nonfinite(data: dict[str, Any], literal: str, field: str = "seconds") -> bytes:
    """`data` as JSON with its first `field` written as the bare `literal` (NaN, Infinity)."""
    marker = 123456.789
    if field == "seconds":
        data["paths"][0]["stages"][0]["seconds"] = marker
    else:
        data[field] = marker
    return _json(data).replace(str(marker).encode(), literal.encode(), 1)


def _malformed_cases(clock: FakeClock) -> list[tuple[str, bytes, str, Outcome, str]]:
    topic = result_topic(A, RELAYS[0])
    missing = good(clock)
    del missing["paths"]
    bad_loss = good(clock)
    bad_loss["paths"][0]["stages"][0]["loss"] = 2.0
    negative_sent = good(clock)
    negative_sent["paths"][0]["stages"][1]["sent"] = -100  # would take a packet counter down: a "reset" to rate()
    negative_rejected = good(clock)
    negative_rejected["paths"][0]["rejected"] = -1
    future = good(clock, schema_version=2)
    future_shape = {"schema_version": 2, "relay": RELAYS[0], "verdicts": []}
    return [
        # An empty payload is how MQTT deletes a retained message, and the broker hands it on: not malformed.
        ("empty", b"", topic, Outcome.cleared, "a retained result cleared"),
        ("blank", b" ", topic, Outcome.malformed, "not JSON"),
        ("not json", b"hello", topic, Outcome.malformed, "not JSON"),
        ("not utf-8", b'{"server": "\xff\xfe"}', topic, Outcome.malformed, ""),
        ("array", b"[1, 2, 3]", topic, Outcome.malformed, "not a valid message"),
        ("missing field", _json(missing), topic, Outcome.malformed, "paths: Field required"),
        ("extra field", _json(good(clock, colour="red")), topic, Outcome.malformed, "colour: Extra inputs"),
        ("loss above 1", _json(bad_loss), topic, Outcome.malformed, "paths.0.stages.0.loss"),
        ("negative sent", _json(negative_sent), topic, Outcome.malformed, "paths.0.stages.1.sent"),
        ("negative rejected", _json(negative_rejected), topic, Outcome.malformed, "paths.0.rejected"),
        # JSON has no NaN or Infinity, but parsers take them; kept, they are served as null, which the API's own
        # models refuse: `probe verify --aggregator` read every verification that agent answered as "not a
        # verification" (inconclusive).
        ("nan seconds", _nonfinite(good(clock), "NaN"), topic, Outcome.malformed, "paths.0.stages.0.seconds"),
        ("inf duration", _nonfinite(good(clock), "Infinity", "duration_seconds"), topic, Outcome.malformed, "duration"),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, topic, Outcome.malformed, "recursion limit exceeded"),
        ("nested labels", _json(good(clock, labels={"a": [[[[[[1]]]]]]})), topic, Outcome.malformed, "labels.a"),
        ("deep and small", b'{"labels":' + b"[" * 5000 + b"]" * 5000 + b"}", topic, Outcome.malformed, "not JSON"),
        ("oversized", _json(good(clock)) + b" " * MAX_PAYLOAD, topic, Outcome.oversized, "bytes; the limit is"),
        ("schema 2", _json(future), topic, Outcome.unknown_schema, "schema_version 2; this aggregator speaks 1"),
        ("schema 2 shape", _json(future_shape), topic, Outcome.unknown_schema, "schema_version 2"),
        ("other agent", _json(good(clock)), result_topic(B, RELAYS[0]), Outcome.topic_mismatch, "from agent-a"),
        ("other server", _json(good(clock)), result_topic(A, RELAYS[1]), Outcome.topic_mismatch, "on se-got-wg-001"),
        ("short topic", _json(good(clock)), "wgprobe/v1/results/agent-a", Outcome.topic_mismatch, "not a results"),
        ("v2 topic", _json(good(clock)), f"wgprobe/v2/results/{A}/{RELAYS[0]}", Outcome.topic_mismatch, ""),
        ("status topic", _json(good(clock)), status_topic(A), Outcome.topic_mismatch, "not a results topic"),
        (
            "agent name",
            payload(make_result(RELAYS[0], 'a"b', taken_at=clock())),
            result_topic('a"b', RELAYS[0]),
            Outcome.malformed,
            "agent name 'a\"b': must be 1-63 letters",
        ),
        (
            "unknown server",
            payload(make_result("xx-nope-wg-001", A, taken_at=clock())),
            result_topic(A, "xx-nope-wg-001"),
            Outcome.unknown_server,
            "xx-nope-wg-001 is not in the inventory",
        ),
    ]


def test_every_kind_of_bad_message_is_counted_by_reason_and_leaves_no_trace(
    store: ResultStore, clock: FakeClock
) -> None:
    cases = _malformed_cases(clock)
    for name, data, topic, outcome, detail in cases:
        ingested = store.ingest_result(data, topic)
        assert ingested.outcome is outcome, name
        assert detail in ingested.detail, (name, ingested.detail)
        assert ingested.detail.isprintable(), name
    expected = {outcome: sum(1 for case in cases if case[3] is outcome) for outcome in Outcome}
    assert store.messages == expected
    assert store.messages[Outcome.accepted] == 0
    assert not store.agents
    assert all(not server.agents for server in store.servers.values())
    assert not store.packets


def test_a_drop_is_logged_once_per_sender_and_reason(store: ResultStore, clock: FakeClock) -> None:
    topic_a, topic_b = result_topic(A, RELAYS[0]), result_topic(B, RELAYS[0])
    first = store.ingest_result(b"garbage", topic_a)
    assert first.first_from_sender and first.sender == A
    assert not store.ingest_result(b"garbage again", topic_a).first_from_sender
    assert store.ingest_result(b"garbage", topic_b).first_from_sender  # another sender
    assert store.ingest_result(_json(good(clock)) + b" " * MAX_PAYLOAD, topic_a).first_from_sender  # another reason
    assert store.messages[Outcome.malformed] == 3


def test_details_from_hostile_payloads_are_printable(store: ResultStore, clock: FakeClock) -> None:
    data = good(clock)
    data["\x1b[31mred\x07"] = 1
    ingested = store.ingest_result(_json(data), "wgprobe/v1/results/\x1b[2J/" + RELAYS[0])
    assert ingested.outcome is Outcome.malformed
    assert "\x1b" not in ingested.detail and "\\x1b" in ingested.detail
    assert ingested.sender is not None and ingested.sender.isprintable()


def test_a_re_sent_result_is_a_duplicate_and_counts_once(store: ResultStore, clock: FakeClock) -> None:
    message = make_result(RELAYS[0], A, taken_at=clock(), sent=4, received=3)
    assert ingest(store, message) is Outcome.accepted
    ingested = store.ingest_result(payload(message), result_topic(A, RELAYS[0]))
    assert ingested.outcome is Outcome.duplicate and ingested.first_from_sender
    assert store.messages[Outcome.duplicate] == 1
    assert store.packets[(RELAYS[0], A)].for_stage(StageName.tunnel) == (8, 6)  # two paths, once
    # Ids are per agent: another agent's result with the same id is not a re-send.
    other = make_result(RELAYS[0], B, taken_at=clock(), result_id=message.result_id)
    assert ingest(store, other) is Outcome.accepted


def test_a_re_send_is_dropped_by_its_id_before_it_is_parsed(store: ResultStore, clock: FakeClock) -> None:
    message = make_result(RELAYS[0], A, taken_at=clock())
    assert ingest(store, message) is Outcome.accepted
    data = payload(message)
    # Decision: the id is read before the payload is parsed, so a broken payload carrying an id its agent already
    # sent is a duplicate, not malformed (it is dropped either way).
    cut = data[:-1]  # not JSON any more
    ingested = store.ingest_result(cut, result_topic(A, RELAYS[0]))
    assert ingested.outcome is Outcome.duplicate and message.result_id in ingested.detail
    # Spelled another way, the id is only found by parsing: still a duplicate.
    spaced = json.dumps(json.loads(data), indent=1).encode()
    assert store.ingest_result(spaced, result_topic(A, RELAYS[0])).outcome is Outcome.duplicate
    assert store.messages[Outcome.duplicate] == 2
    assert store.messages[Outcome.malformed] == 0


def test_only_the_result_s_own_id_is_taken_for_the_pre_check(store: ResultStore, clock: FakeClock) -> None:
    first = make_result(RELAYS[0], A, taken_at=clock())
    assert ingest(store, first) is Outcome.accepted
    # The words in a label, or in a detail text (escaped there), before the result's own id: not the id.
    data = good(clock, labels={"result_id": first.result_id, "note": f'"result_id":"{first.result_id}"'})
    data["result_id"] = "a-new-one"
    assert store.ingest_result(_json(data), result_topic(A, RELAYS[0])).accepted
    # Another agent's topic: ids are per agent, even before parsing.
    other = make_result(RELAYS[0], B, taken_at=clock(), result_id=first.result_id)
    assert ingest(store, other) is Outcome.accepted


@pytest.mark.parametrize(
    ("data", "claimed"),
    [
        (b'{"result_id":"abc"}', "abc"),
        (b'{"labels":{"result_id":"x"},"result_id":"abc","round":1}', "abc"),
        (b'{"result_id":"a\\"b"}', None),  # an escape: left to the parser
        (b'{"result_id":"' + b"x" * 300 + b'"}', None),  # longer than any valid id
        (b'{"result_id":"abc', None),  # cut off
        (b'{"result_id":"\xff"}', None),
        (b'{"result_id": "abc"}', None),  # spaced: left to the parser
        (b"garbage", None),
    ],
)
def test_claimed_result_id(data: bytes, claimed: str | None) -> None:
    assert claimed_result_id(data) == claimed


def test_on_kept_is_told_of_every_result_kept_and_of_nothing_dropped(store: ResultStore, clock: FakeClock) -> None:
    told: list[tuple[str, str, int, tuple[int, int] | None]] = []

    def hook(name: str, agent: str, record: AgentRecord) -> None:
        counts = store.packets.get((name, agent))
        told.append((name, agent, record.newest.round, counts.for_stage(StageName.tunnel) if counts else None))

    store.on_kept.append(hook)
    newer = make_result(RELAYS[0], A, taken_at=clock() + 15, round=2, sent=3, received=3)
    older = make_result(RELAYS[0], A, taken_at=clock(), round=1, sent=3, received=3)
    assert ingest(store, newer) is Outcome.accepted
    assert ingest(store, newer) is Outcome.duplicate
    assert store.ingest_result(b"garbage", result_topic(A, RELAYS[1])).outcome is Outcome.malformed
    assert ingest(store, older) is Outcome.accepted  # a late replay is kept too (it may fill slots)
    # Told after the record and the counters hold the result: the newest stays round 2, both results' packets count.
    assert told == [(RELAYS[0], A, 2, (6, 6)), (RELAYS[0], A, 2, (12, 12))]


def test_seen_ids_are_bounded_and_an_evicted_re_send_never_overwrites(clock: FakeClock) -> None:
    store = ResultStore(make_inventory(RELAYS), now=clock, seen_ids=3)
    old = make_result(RELAYS[0], A, taken_at=clock(), round=1)
    assert ingest(store, old) is Outcome.accepted
    for n in range(2, 5):
        assert ingest(store, make_result(RELAYS[0], A, taken_at=clock.advance(15), round=n)) is Outcome.accepted
    newest = store.servers[RELAYS[0]].agents[A].newest
    assert ingest(store, old) is Outcome.accepted  # forgotten after three newer ids
    assert store.servers[RELAYS[0]].agents[A].newest == newest  # but older: it fills nothing


def test_a_late_result_does_not_overwrite_a_newer_one_but_still_counts(store: ResultStore, clock: FakeClock) -> None:
    t0 = clock()
    newer = make_result(RELAYS[0], A, taken_at=t0 + 15, round=2, ports=(51820,), fail=StageName.forward)
    older = make_result(RELAYS[0], A, taken_at=t0, round=1, ports=(51820, 53))
    clock.advance(20)
    assert ingest(store, newer) is Outcome.accepted
    assert ingest(store, older) is Outcome.accepted  # a spool replay arriving late
    record = store.servers[RELAYS[0]].agents[A]
    assert record.newest.result_id == newer.result_id
    assert not record.paths[("51820", "ipv4")].ok  # the newer path stays
    assert record.paths[("53", "ipv4")].ok  # a slot only the older result measured is filled
    assert record.paths[("53", "ipv4")].round == 1
    # Both results' packets count: tunnel passed on 2 + 4 paths of 3 packets each.
    assert store.packets[(RELAYS[0], A)].for_stage(StageName.tunnel) == (18, 18)
    failure = store.servers[RELAYS[0]].last_failure
    assert failure is not None and failure.at == t0 + 15


def test_packets_are_pooled_over_every_result(store: ResultStore, clock: FakeClock) -> None:
    # Three rounds with 3/3, 5/2 and 4/1 packets per passing stage: pooled loss 6/12 = 50%, whereas the mean of the
    # per-probe loss figures would say (0 + 60% + 75%) / 3 = 45%.
    for n, (sent, received) in enumerate([(3, 3), (5, 2), (4, 1)]):
        message = make_result(RELAYS[0], A, taken_at=clock.advance(15), round=n, sent=sent, received=received)
        assert ingest(store, message) is Outcome.accepted
    count = store.packets[(RELAYS[0], A)].for_stage(StageName.tunnel)
    assert count == (2 * 12, 2 * 6)  # two paths (ipv4, ipv6) per result
    assert 1 - count[1] / count[0] == 0.5


def test_unjudged_stages_and_results_without_control_are_not_counted(store: ResultStore, clock: FakeClock) -> None:
    broken_nat = make_result(RELAYS[0], A, taken_at=clock(), families=("ipv4",), fail=StageName.forward)
    assert ingest(store, broken_nat) is Outcome.accepted
    counts = store.packets[(RELAYS[0], A)]
    assert counts.for_stage(StageName.forward) == (3, 0)  # the judged failure counts as loss
    assert counts.for_stage(StageName.egress) is None  # unjudged: neither success nor failure
    blind = make_result(RELAYS[1], A, taken_at=clock(), control_ok=False, fail=StageName.handshake)
    assert ingest(store, blind) is Outcome.accepted
    assert not any(key[0] == RELAYS[1] for key in store.packets)


def test_rotated_ports_of_one_range_share_a_slot(store: ResultStore, clock: FakeClock) -> None:
    relay = store.servers[RELAYS[0]].relay
    assert port_slot(relay, 51820) == "51820"  # the main port, although inside 33565-51820
    assert port_slot(relay, 40000) == "33565-51820"
    assert port_slot(relay, 53) == "53"
    assert port_slot(relay, 61000) == "61000"  # outside every range: the port itself
    for n, port in enumerate((4000, 17000, 33433)):
        ingest(store, make_result(RELAYS[0], A, taken_at=clock.advance(15), round=n, ports=(51820, port)))
    assert len(store.servers[RELAYS[0]].agents[A].paths) == 4
    assert store.servers[RELAYS[0]].agents[A].paths[("4000-33433", "ipv6")].port == 33433


def test_paths_per_agent_and_relay_are_bounded(store: ResultStore, clock: FakeClock) -> None:
    ports = range(61000, 61100)  # outside every range: one slot each, as only a broken agent would send
    paths = [make_path(port) for port in ports]
    ingest(store, make_result(RELAYS[0], A, taken_at=clock(), paths=paths))
    assert len(store.servers[RELAYS[0]].agents[A].paths) == 64


def test_agents_are_bounded(clock: FakeClock) -> None:
    store = ResultStore(make_inventory(RELAYS), now=clock, max_agents=2)
    for agent in ("a1", "a2"):
        assert ingest(store, make_result(RELAYS[0], agent, taken_at=clock())) is Outcome.accepted
    assert ingest(store, make_result(RELAYS[0], "a3", taken_at=clock())) is Outcome.agent_limit
    status = store.ingest_status(payload(make_status("a4", at=clock())), status_topic("a4"))
    assert status.outcome is Outcome.agent_limit
    assert sorted(store.agents) == ["a1", "a2"]


def test_statuses_are_validated_like_results(store: ResultStore, clock: FakeClock) -> None:
    status = make_status(A, at=clock())
    assert store.ingest_status(payload(status), status_topic(A)).accepted
    assert store.agents[A].status == status
    cases = [
        (payload(status), status_topic(B), Outcome.topic_mismatch),
        (payload(status), result_topic(A, RELAYS[0]), Outcome.topic_mismatch),
        (b"{", status_topic(A), Outcome.malformed),
        (_json({**json.loads(payload(status)), "schema_version": 7}), status_topic(A), Outcome.unknown_schema),
        (b" " * (MAX_PAYLOAD + 1), status_topic(A), Outcome.oversized),
    ]
    for data, topic, outcome in cases:
        assert store.ingest_status(data, topic).outcome is outcome
    assert store.agents[A].status == status


def shows(exposition: bytes, agent: str, relay: str) -> bool:
    """Whether some line of the metrics is about `agent`'s view of `relay`."""
    return any(f'agent="{agent}"' in line and f'server="{relay}"' in line for line in exposition.decode().splitlines())


def test_what_an_agent_clears_is_forgotten_and_an_agent_with_nothing_left_leaves(
    store: ResultStore, clock: FakeClock
) -> None:
    # An empty retained publish deletes a result or a status on the broker: an agent dropping a relay from its
    # inventory, or an operator retiring an agent. The aggregator used to count it and keep what it held, so a
    # retired agent stayed in /api/v1/agents and wgprobe_agent_up{agent} 0 paged until the aggregator restarted.
    renderer = MetricsRenderer(store)
    renderer.follow()  # as the HTTP app's does: its shortcut must see the forgetting too
    for agent, relays in ((A, RELAYS[:2]), (B, RELAYS[:1])):
        assert store.ingest_status(payload(make_status(agent, at=clock())), status_topic(agent)).accepted
        for relay in relays:
            assert ingest(store, make_result(relay, agent, taken_at=clock())) is Outcome.accepted
    assert shows(renderer.render(), A, RELAYS[0])

    assert store.ingest_result(b"", result_topic(A, RELAYS[0])).outcome is Outcome.cleared
    assert list(store.servers[RELAYS[0]].agents) == [B]  # B alone judges it now
    shown = renderer.render()
    assert not shows(shown, A, RELAYS[0]) and shows(shown, A, RELAYS[1]) and shows(shown, B, RELAYS[0])

    assert store.ingest_status(b"", status_topic(A)).outcome is Outcome.cleared
    assert A in store.agents and store.agents[A].status is None  # its result of RELAYS[1] is still held

    assert store.ingest_result(b"", result_topic(A, RELAYS[1])).outcome is Outcome.cleared
    assert sorted(store.agents) == [B] and [view.name for view in agent_views(store)] == [B]
    assert all(agent != A for _, agent in store.packets)
    shown = renderer.render()
    assert f'agent="{A}"'.encode() not in shown and shows(shown, B, RELAYS[0])
    assert store.messages[Outcome.cleared] == 3

    # Cleared twice, or for a relay or agent never heard of: counted, nothing else.
    for topic in (result_topic(A, RELAYS[1]), result_topic("agent-z", RELAYS[0])):
        assert store.ingest_result(b"", topic).outcome is Outcome.cleared
    assert store.ingest_status(b"", status_topic("agent-z")).outcome is Outcome.cleared
    assert sorted(store.agents) == [B]
    # Back after all: taken as any new agent.
    assert ingest(store, make_result(RELAYS[2], A, taken_at=clock())) is Outcome.accepted
    assert sorted(store.agents) == [A, B]


def _status(store: ResultStore, clock: FakeClock, ahead: float, *, live: bool = True, online: bool = True) -> None:
    """A status from agent A dated `ahead` seconds past its arrival (negative: before), a round after the last."""
    clock.advance(15.0)
    status = make_status(A, at=clock() + ahead, online=online)
    assert store.ingest_status(payload(status), status_topic(A), live=live).accepted


def _clock_changes(store: ResultStore) -> list[tuple[float, bool]]:
    return [(round(c.offset), c.off) for c in store.drain_changes() if isinstance(c, ClockChange)]


def test_an_agent_clock_off_is_measured_and_said_once_two_statuses_agree(store: ResultStore, clock: FakeClock) -> None:
    # An agent whose clock runs behind read `silent` (its results stale on arrival) with nothing pointing at its
    # clock; one ahead by 5 minutes has every command expire.
    _status(store, clock, 120.0)
    assert store.agents[A].clock_offset == pytest.approx(120.0)
    assert _clock_changes(store) == []  # one status may be a late one: not yet
    _status(store, clock, 121.0)
    assert _clock_changes(store) == [(121, True)]
    _status(store, clock, 119.0)
    assert _clock_changes(store) == []  # said once
    _status(store, clock, 0.0)
    assert _clock_changes(store) == [(0, False)]
    assert not store.agents[A].clock_off
    assert 'wgprobe_agent_clock_offset_seconds{agent="agent-a"} 0.0' in render(store).decode()
    # Behind the same way; a late status (queued while the agent was away) alone says nothing.
    _status(store, clock, -300.0)
    _status(store, clock, 0.5)
    _status(store, clock, -40.0)
    _status(store, clock, 30.0)  # off, but the other way from the one before
    assert _clock_changes(store) == []
    _status(store, clock, 28.0)
    assert _clock_changes(store) == [(28, True)]
    view = next(v for v in agent_views(store) if v.name == A)
    assert view.clock_offset_seconds == pytest.approx(28.0) and view.clock_off


def test_retained_statuses_wills_and_a_reconnect_s_backlog_do_not_measure_a_clock(
    store: ResultStore, clock: FakeClock
) -> None:
    _status(store, clock, -3600.0, live=False)  # retained: handed out at subscription, published whenever
    _status(store, clock, -3600.0, live=False)
    _status(store, clock, -3600.0, online=False)  # a last will carries the time it was registered at
    assert store.agents[A].clock_offset is None
    assert 'wgprobe_agent_clock_offset_seconds{agent="agent-a"}' not in render(store).decode()
    store.broker_connection(True)  # what the broker queued for us while we were away comes first, late
    _status(store, clock, -600.0)
    assert store.agents[A].clock_offset is None
    clock.advance(REDELIVERY_WINDOW)
    _status(store, clock, -600.0)
    assert store.agents[A].clock_offset == pytest.approx(-600.0)
    assert not store.agents[A].clock_off


def test_the_last_will_replaces_a_newer_looking_status(store: ResultStore, clock: FakeClock) -> None:
    # A last will is registered at connect time, so its updated_at is older than the statuses sent since.
    will = make_status(A, at=clock(), online=False)
    store.ingest_status(payload(make_status(A, at=clock.advance(300))), status_topic(A))
    store.ingest_status(payload(will), status_topic(A))
    assert store.agents[A].status == will


def test_a_new_inventory_adds_and_forgets_relays(store: ResultStore, clock: FakeClock) -> None:
    ingest(store, make_result(RELAYS[0], A, taken_at=clock()))
    ingest(store, make_result(RELAYS[2], A, taken_at=clock()))
    store.set_inventory(make_inventory([RELAYS[0], "fi-hel-wg-001"]))
    assert sorted(store.servers) == ["fi-hel-wg-001", RELAYS[0]]
    assert store.servers[RELAYS[0]].agents  # kept
    assert not store.servers["fi-hel-wg-001"].agents
    assert not any(key[0] == RELAYS[2] for key in store.packets)  # its counters went with it
    assert ingest(store, make_result(RELAYS[2], A, taken_at=clock())) is Outcome.unknown_server


def test_the_store_is_sans_io() -> None:
    # The MQTT and HTTP shells are separate; the core takes bytes and a clock (DESIGN.md).
    forbidden = {"socket", "asyncio", "time", "selectors", "aiomqtt", "prometheus_client", "http", "urllib", "sqlite3"}
    package = Path(probe.aggregator.__file__).parent
    core = ["store.py", "records.py", "intake.py", "health.py", "views.py"]
    found = {name: sorted(imported_modules(ast.parse((package / name).read_text())) & forbidden) for name in core}
    assert {name: modules for name, modules in found.items() if modules} == {}
    assert "prometheus_client" in imported_modules(ast.parse((package / "metrics.py").read_text()))  # it looks


def test_importing_the_aggregator_loads_nothing_heavy() -> None:
    check = (
        "import sys, probe.aggregator, probe.service_config\n"
        "heavy = [m for m in ('prometheus_client', 'aiomqtt', 'urllib.request', 'http.client') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
