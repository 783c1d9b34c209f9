"""Health by quorum across vantage points, driven by a fake clock: an agent that cannot see (control check failed,
offline, silent) never marks a relay down and is reported itself; staleness turns knowledge into `unknown`."""

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.aggregator.config import HealthSection
from probe.aggregator.health import AgentState, Exclusion, HealthState, Vote, agent_vote, judge, quorum_size
from probe.aggregator.records import AgentChange, HealthChange
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_path, make_result, make_status, payload
from probe.aggregator.views import agent_views
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import Reason, StageName

RELAYS = ["se-got-wg-001", "se-got-wg-002", "de-ber-wg-001"]
AGENTS = ["agent-a", "agent-b", "agent-c"]
R0 = RELAYS[0]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> ResultStore:
    return ResultStore(make_inventory(RELAYS), now=clock)


def send(store: ResultStore, message: ResultMessage) -> None:
    assert store.ingest_result(payload(message), result_topic(message.agent, message.server)).accepted


def status(store: ResultStore, agent: str, at: float, **kw: object) -> None:
    assert store.ingest_status(payload(make_status(agent, at=at, **kw)), status_topic(agent)).accepted  # type: ignore[arg-type]


def round_of(
    store: ResultStore,
    clock: FakeClock,
    number: int,
    *,
    failing: dict[str, list[str]] | None = None,
    blind: frozenset[str] = frozenset(),
    stage: StageName = StageName.forward,
) -> None:
    """Every agent reports every relay; `failing[agent]` lists the relays it sees fail at `stage`; agents in `blind`
    have lost their own network (control check failed) and see everything fail."""
    for agent in AGENTS:
        for relay in RELAYS:
            fails = agent in blind or relay in (failing or {}).get(agent, [])
            message = make_result(
                relay,
                agent,
                taken_at=clock(),
                round=number,
                fail=(StageName.handshake if agent in blind else stage) if fails else None,
                control_ok=agent not in blind,
            )
            send(store, message)
    store.refresh()  # as the shell does every second


def states(store: ResultStore) -> dict[str, HealthState]:
    store.refresh()
    return {name: server.state for name, server in store.servers.items()}


# -- the pure rules ----------------------------------------------------------------------------------------------------


def test_votes() -> None:
    ok, bad = make_path(51820), make_path(51820, fail=StageName.forward)
    assert agent_vote([ok, ok], [ok, ok]) is Vote.up
    assert agent_vote([bad, bad], [bad, bad, ok]) is Vote.failing  # the newest round alone decides "failing"
    assert agent_vote([ok, bad], [ok, bad]) is Vote.partial
    assert agent_vote([ok], [ok, bad]) is Vote.partial  # a fresh failing path of an earlier rotation
    assert agent_vote([], []) is None


@pytest.mark.parametrize(
    ("votes", "quorum", "state"),
    [
        ([], "majority", HealthState.unknown),
        ([Vote.up] * 3, "majority", HealthState.up),
        ([Vote.failing, Vote.up, Vote.up], "majority", HealthState.degraded),
        ([Vote.failing, Vote.failing, Vote.up], "majority", HealthState.down),
        ([Vote.failing, Vote.failing, Vote.up, Vote.up], "majority", HealthState.degraded),  # 2 of 4 is no majority
        ([Vote.partial] * 3, "majority", HealthState.degraded),
        ([Vote.failing], "majority", HealthState.down),
        ([Vote.failing], 2, HealthState.degraded),  # an absolute quorum: one agent alone never suffices
        ([Vote.failing, Vote.failing, Vote.up], 2, HealthState.down),
    ],
)
def test_judge(votes: list[Vote], quorum: int | str, state: HealthState) -> None:
    assert judge(votes, quorum).state is state  # type: ignore[arg-type]


def test_quorum_size() -> None:
    assert [quorum_size("majority", n) for n in range(1, 6)] == [1, 2, 2, 3, 3]
    assert quorum_size(2, 5) == 2


# -- three agents ------------------------------------------------------------------------------------------------------


def test_all_up_then_a_quorum_sees_one_relay_fail(store: ResultStore, clock: FakeClock) -> None:
    round_of(store, clock, 1)
    assert set(states(store).values()) == {HealthState.up}
    clock.advance(15)
    round_of(store, clock, 2, failing={"agent-a": [R0], "agent-b": [R0]})
    assert states(store) == {R0: HealthState.down, RELAYS[1]: HealthState.up, RELAYS[2]: HealthState.up}
    server = store.servers[R0]
    assert server.reason is Reason.forward_timeout
    assert server.since == clock()
    assert server.verdict is not None and (server.verdict.failing, server.verdict.needed) == (2, 2)


def test_one_agent_seeing_a_failure_makes_it_degraded_not_down(store: ResultStore, clock: FakeClock) -> None:
    round_of(store, clock, 1, failing={"agent-a": [R0]})
    assert states(store)[R0] is HealthState.degraded


def test_an_agent_whose_control_check_fails_marks_nothing_down(store: ResultStore, clock: FakeClock) -> None:
    round_of(store, clock, 1)
    clock.advance(15)
    # agent-c loses its own network: every relay fails for it, and its results say its control check failed.
    round_of(store, clock, 2, blind=frozenset({"agent-c"}))
    assert set(states(store).values()) == {HealthState.up}
    for server in store.servers.values():
        judged = {j.agent: j for j in server.judgements}
        assert judged["agent-c"].exclusion is Exclusion.control_failed and judged["agent-c"].vote is None
        assert server.verdict is not None and server.verdict.eligible == 2
    views = {view.name: view for view in agent_views(store)}
    assert views["agent-c"].state is AgentState.control_failed and not views["agent-c"].control_ok
    assert views["agent-a"].state is AgentState.ok
    # A real failure is still seen by the two agents that can see.
    clock.advance(15)
    round_of(store, clock, 3, failing={"agent-a": [R0], "agent-b": [R0]}, blind=frozenset({"agent-c"}))
    assert states(store)[R0] is HealthState.down


def test_an_agent_whose_status_reports_a_failed_control_check_is_left_out(store: ResultStore, clock: FakeClock) -> None:
    # Its results still say control_ok (taken before the check failed), and see R0 fail: no vote.
    round_of(store, clock, 1, failing={"agent-c": [R0]})
    assert states(store)[R0] is HealthState.degraded
    status(store, "agent-c", clock(), control_ok=False, detail="reflector 198.18.0.2:7777: no answer in 1s")
    assert states(store)[R0] is HealthState.up
    view = {view.name: view for view in agent_views(store)}["agent-c"]
    assert view.state is AgentState.control_failed
    assert view.control_detail == "reflector 198.18.0.2:7777: no answer in 1s"


def test_an_agent_that_lost_its_broker_link_is_reported_and_still_counts(store: ResultStore, clock: FakeClock) -> None:
    """broker_ok is reported, not part of the control check's verdict: the agent's results still vote."""
    round_of(store, clock, 1, failing={"agent-a": [R0], "agent-b": [R0]})
    status(store, "agent-a", clock(), broker_ok=False)
    assert states(store)[R0] is HealthState.down
    view = {view.name: view for view in agent_views(store)}["agent-a"]
    assert view.broker_ok is False and view.control_ok and view.state is AgentState.ok
    assert {view.name: view for view in agent_views(store)}["agent-b"].broker_ok is None  # its status said nothing


def test_an_offline_agent_is_left_out_and_reported(store: ResultStore, clock: FakeClock) -> None:
    round_of(store, clock, 1, failing={"agent-c": RELAYS, "agent-a": [R0]})
    assert states(store)[R0] is HealthState.down  # agent-a and agent-c: 2 of 3
    status(store, "agent-c", clock(), online=False)  # its last will
    # The next refresh hands back every change it caused, for the shell to log.
    changes = store.refresh()
    assert AgentChange("agent-c", clock(), AgentState.offline, AgentState.ok) in changes
    assert HealthChange(R0, clock(), HealthState.degraded, HealthState.down, Reason.forward_timeout) in changes
    assert states(store) == {R0: HealthState.degraded, RELAYS[1]: HealthState.up, RELAYS[2]: HealthState.up}
    assert {view.name: view.state for view in agent_views(store)}["agent-c"] is AgentState.offline


def _states_and_agents(store: ResultStore) -> tuple[dict[str, HealthState], dict[str, AgentState]]:
    return states(store), {view.name: view.state for view in agent_views(store)}


def test_the_last_wills_a_shutting_down_broker_sends_change_no_verdict(store: ResultStore, clock: FakeClock) -> None:
    # mosquitto publishes every connected agent's will as it shuts down, just before it drops us, keeps them retained
    # and sends them again after its restart; the agents then reconnect and say online. Throughout, R0 stays down.
    store.broker_connection(True)
    round_of(store, clock, 1, failing={agent: [R0] for agent in AGENTS})
    for agent in AGENTS:
        status(store, agent, clock())
    assert states(store)[R0] is HealthState.down
    clock.advance(0.01)
    for agent in AGENTS:
        status(store, agent, clock(), online=False)  # the broker's shutdown: every will at once
    clock.advance(0.01)
    assert states(store)[R0] is HealthState.down  # a judging pass before the drop is seen changes nothing
    clock.advance(0.05)
    assert store.broker_connection(False) == 3  # then it drops us: the wills are held
    assert _states_and_agents(store) == ({R0: HealthState.down, RELAYS[1]: HealthState.up, RELAYS[2]: HealthState.up},
                                         dict.fromkeys(AGENTS, AgentState.ok))  # fmt: skip
    assert store.broker_connected is False
    clock.advance(5)
    store.broker_connection(True)  # the broker is back: the retained wills again, and the session's queued copies
    for agent in AGENTS:
        status(store, agent, clock(), online=False)
    assert states(store)[R0] is HealthState.down
    clock.advance(3)
    for agent in AGENTS:
        status(store, agent, clock())  # the agents reconnect
    clock.advance(60)  # long past when a held will would have taken effect
    round_of(store, clock, 2, failing={agent: [R0] for agent in AGENTS})
    assert _states_and_agents(store) == ({R0: HealthState.down, RELAYS[1]: HealthState.up, RELAYS[2]: HealthState.up},
                                         dict.fromkeys(AGENTS, AgentState.ok))  # fmt: skip


def test_a_held_will_takes_effect_when_its_agent_does_not_come_back(store: ResultStore, clock: FakeClock) -> None:
    store.broker_connection(True)
    round_of(store, clock, 1, failing={"agent-a": [R0], "agent-b": [R0]})
    status(store, "agent-c", clock(), online=False)
    store.broker_connection(False)
    store.broker_connection(True)
    status(store, "agent-a", clock(), online=False)  # redelivered after the reconnect
    assert states(store)[R0] is HealthState.down  # both held: agent-a and agent-b still make 2 of 3
    clock.advance(44)  # within agent-a's staleness limit (3 x 15 s) nothing newer came, but it may yet
    assert _states_and_agents(store)[1]["agent-a"] is AgentState.ok
    clock.advance(2)
    assert _states_and_agents(store)[1] == {"agent-a": AgentState.offline, "agent-b": AgentState.silent,
                                            "agent-c": AgentState.offline}  # fmt: skip


def test_a_will_while_the_connection_is_steady_counts_after_a_few_seconds(store: ResultStore, clock: FakeClock) -> None:
    store.broker_connection(True)  # the first connection: nothing it brings is suspect
    round_of(store, clock, 1, failing={"agent-a": [R0], "agent-c": [R0]})
    status(store, "agent-c", clock(), online=False)
    assert states(store)[R0] is HealthState.down  # agent-c's will waits its grace: a and c make 2 of 3
    clock.advance(3)
    assert states(store)[R0] is HealthState.degraded  # in effect: a alone of a and b
    clock.advance(2)  # an agent's will that took effect before the broker dropped us is its own
    assert store.broker_connection(False) == 0
    store.broker_connection(True)
    clock.advance(31)  # and so is one that comes well after the reconnect
    status(store, "agent-a", clock(), online=False)
    clock.advance(3)
    # Only agent-b is left to vote, and it sees R0 work.
    assert _states_and_agents(store) == (dict.fromkeys(RELAYS, HealthState.up),
                                         {"agent-a": AgentState.offline, "agent-b": AgentState.ok,
                                          "agent-c": AgentState.offline})  # fmt: skip


def test_an_integer_quorum_needs_that_many_agents(clock: FakeClock) -> None:
    store = ResultStore(make_inventory(RELAYS), now=clock, health=HealthSection(quorum=2))
    send(store, make_result(R0, "agent-a", taken_at=clock(), fail=StageName.forward))
    assert states(store)[R0] is HealthState.degraded
    send(store, make_result(R0, "agent-b", taken_at=clock(), fail=StageName.tunnel))
    assert states(store)[R0] is HealthState.down
    assert store.servers[R0].reason is Reason.tunnel_timeout  # the earliest failing stage among the votes


# -- time --------------------------------------------------------------------------------------------------------------


def test_no_data_is_unknown(store: ResultStore) -> None:
    assert set(states(store).values()) == {HealthState.unknown}


def test_results_go_stale_after_three_intervals(store: ResultStore, clock: FakeClock) -> None:
    round_of(store, clock, 1, failing={"agent-a": [R0], "agent-b": [R0]})
    start = clock()
    clock.advance(45)  # 3 x 15 s: still fresh
    assert states(store)[R0] is HealthState.down
    clock.advance(0.001)
    changes = store.refresh()
    assert states(store)[R0] is HealthState.unknown
    assert HealthChange(R0, clock(), HealthState.unknown, HealthState.down, None) in changes
    assert [(c.at, c.state) for c in store.servers[R0].history] == [
        (start, HealthState.down),
        (start + 45.001, HealthState.unknown),
    ]
    assert {view.name: view.state for view in agent_views(store)}["agent-a"] is AgentState.silent


def test_an_agent_on_a_slower_schedule_goes_stale_later(store: ResultStore, clock: FakeClock) -> None:
    status(store, "agent-a", clock(), interval_seconds=60.0)
    send(store, make_result(R0, "agent-a", taken_at=clock()))
    send(store, make_result(RELAYS[1], "agent-b", taken_at=clock()))
    clock.advance(100)
    status(store, "agent-a", clock(), interval_seconds=60.0)
    assert states(store)[R0] is HealthState.up  # 100 s < 3 x 60 s
    assert states(store)[RELAYS[1]] is HealthState.unknown  # 100 s > 3 x 15 s


@pytest.mark.parametrize("interval", [0.0, -15.0, 1e12, float("nan")])
def test_a_status_with_a_nonsense_interval_gets_the_configured_one(
    store: ResultStore, clock: FakeClock, interval: float
) -> None:
    status(store, "agent-a", clock(), interval_seconds=interval)
    assert store.stale_after("agent-a") == 45.0


def test_a_broken_relay_is_down_in_the_next_round_despite_fresh_older_paths(
    store: ResultStore, clock: FakeClock
) -> None:
    # Rotated ports of earlier rounds are still fresh and passed; the newest round failed on every path it tried.
    for number, port in enumerate((4000, 5000)):
        for agent in AGENTS[:2]:
            send(store, make_result(R0, agent, taken_at=clock(), round=number, ports=(51820, port)))
        clock.advance(15)
    for agent in AGENTS[:2]:
        send(store, make_result(R0, agent, taken_at=clock(), round=3, ports=(51820, 6000), fail=StageName.forward))
    assert states(store)[R0] is HealthState.down


def test_a_closed_port_range_keeps_the_relay_degraded_between_visits(store: ResultStore, clock: FakeClock) -> None:
    # The `ports` fault: extended ranges answer port unreachable, the main port works.
    for agent in AGENTS:
        message = make_result(R0, agent, taken_at=clock(), ports=(51820, 4000), fail={4000: StageName.handshake})
        send(store, message)
    assert states(store)[R0] is HealthState.degraded
    assert store.servers[R0].reason is Reason.handshake_timeout
    clock.advance(15)
    for agent in AGENTS:  # a round that visits only the main port
        send(store, make_result(R0, agent, taken_at=clock(), round=1))
    assert states(store)[R0] is HealthState.degraded  # the range's failure is still fresh
    clock.advance(31)  # the failing paths are now 46 s old: stale for a main-port path, not for a rotated one
    for agent in AGENTS:
        send(store, make_result(R0, agent, taken_at=clock(), round=2))
    assert states(store)[R0] is HealthState.degraded  # visited one round in 4: its next visit is not overdue yet
    clock.advance(45)  # 91 s: the next visit (60 s) is overdue by the staleness limit
    for agent in AGENTS:
        send(store, make_result(R0, agent, taken_at=clock(), round=3))
    assert states(store)[R0] is HealthState.up


def test_history_is_bounded_and_since_follows_changes(clock: FakeClock) -> None:
    store = ResultStore(make_inventory(RELAYS), now=clock, health=HealthSection(history=3))
    for number in range(6):
        fail = StageName.forward if number % 2 else None
        send(store, make_result(R0, "agent-a", taken_at=clock(), round=number, fail=fail))
        store.refresh()
        clock.advance(15)
    history = list(store.servers[R0].history)
    assert len(history) == 3
    assert [c.state for c in history] == [HealthState.down, HealthState.up, HealthState.down]  # of six
    assert store.servers[R0].since == history[-1].at == clock() - 15


def test_last_failure_names_agent_stage_and_path_and_ignores_late_replays(store: ResultStore, clock: FakeClock) -> None:
    t0 = clock()
    clock.advance(20)
    send(store, make_result(R0, "agent-b", taken_at=t0 + 10, ports=(51820, 53), fail={(53, "ipv6"): StageName.mtu}))
    send(store, make_result(R0, "agent-a", taken_at=t0, fail=StageName.handshake))  # older, arriving late
    failure = store.servers[R0].last_failure
    assert failure is not None
    assert (failure.agent, failure.stage, failure.reason, failure.port, failure.family) == (
        "agent-b",
        StageName.mtu,
        Reason.mtu_blackhole,
        53,
        "ipv6",
    )
    assert failure.at == t0 + 10


def test_a_result_from_an_agent_clock_ahead_is_not_fresh_for_ever(store: ResultStore, clock: FakeClock) -> None:
    send(store, make_result(R0, "agent-a", taken_at=clock() + 3600))
    assert states(store)[R0] is HealthState.up
    clock.advance(46)
    assert states(store)[R0] is HealthState.unknown


# -- the incremental refresh ---------------------------------------------------------------------------------------

EVENTS = st.lists(
    st.one_of(
        st.tuples(
            st.just("result"),
            st.sampled_from(AGENTS),
            st.sampled_from(RELAYS),
            st.sampled_from([None, StageName.handshake, StageName.forward]),
            st.booleans(),  # control_ok
            st.integers(min_value=-60, max_value=0),  # taken this long ago: late and replayed results too
            st.sampled_from([(51820,), (51820, 4000), (53,)]),
        ),
        st.tuples(st.just("status"), st.sampled_from(AGENTS), st.booleans(), st.booleans(), st.sampled_from([15, 60])),
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=40)),
    ),
    max_size=40,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS)
def test_refreshing_only_what_moved_judges_as_judging_everything(events: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    steady = ResultStore(make_inventory(RELAYS), now=clock)  # refreshed after every event, as the shell does
    fresh = ResultStore(make_inventory(RELAYS), now=clock)  # judged once, at the end, from scratch
    for event in events:
        if event[0] == "wait":
            clock.advance(event[1])
        elif event[0] == "status":
            _, agent, online, control_ok, interval = event
            data = payload(
                make_status(agent, at=clock(), online=online, control_ok=control_ok, interval_seconds=interval)
            )
            for store in (steady, fresh):
                store.ingest_status(data, status_topic(agent))
        else:
            _, agent, relay, fail, control_ok, ago, ports = event
            message = make_result(relay, agent, taken_at=clock() + ago, fail=fail, control_ok=control_ok, ports=ports)
            for store in (steady, fresh):
                store.ingest_result(payload(message), result_topic(agent, relay))
        steady.refresh()
    steady.refresh()
    fresh.refresh()
    for name in RELAYS:
        a, b = steady.servers[name], fresh.servers[name]
        assert (a.state, a.reason, a.verdict, a.judgements) == (b.state, b.reason, b.verdict, b.judgements), name


def test_a_rotated_path_stays_judged_and_shown_until_its_next_visit_is_overdue() -> None:
    # An agent visits each extended range one round in 4 (every 60 s at 15 s), and results are stale after 3
    # intervals (45 s): a failing range path dropped out of /metrics and out of the verdict for 15 s of every
    # minute, so the server flapped degraded -> up and the port-range alert (for: 3m) never fired.
    from probe.aggregator.metrics import exposition, make_registry, render

    clock = FakeClock()
    start = clock()
    store = ResultStore(make_inventory(["se-got-wg-001"]), now=clock)
    store.ingest_status(payload(make_status("agent-a", at=clock())), status_topic("agent-a"))
    closed = {4000: StageName.handshake}
    for round_ in range(9):  # 2 min: the range visited in rounds 0, 4 and 8 only, failing each time
        ports = (51820, 4000) if round_ % 4 == 0 else (51820,)
        message = make_result(
            "se-got-wg-001",
            "agent-a",
            taken_at=clock(),
            ports=ports,
            fail=closed,
            round=round_,
            result_id=f"r{round_}",
        )
        store.ingest_result(payload(message), result_topic("agent-a", "se-got-wg-001"))
        for _ in range(15):
            store.refresh()
            assert store.servers["se-got-wg-001"].state is HealthState.degraded, (round_, clock())
            text = render(store).decode()
            assert 'port="4000-33433"' in text, (round_, clock())
            assert text.encode() == exposition(make_registry(store))
            clock.advance(1)
    # The range not visited any more (the agent still reporting its main port): the path leaves when its next visit
    # is overdue by the staleness limit (3 rounds waited between visits + 45 s after the last one), not before.
    last_visit = start + 8 * 15.0
    for round_ in range(9, 17):
        message = make_result("se-got-wg-001", "agent-a", taken_at=clock(), round=round_, result_id=f"r{round_}")
        store.ingest_result(payload(message), result_topic("agent-a", "se-got-wg-001"))
        for _ in range(15):
            shown = 'port="4000-33433"' in render(store).decode()
            assert shown == (clock() - last_visit <= 45 + 45), clock()
            clock.advance(1)


def test_an_agents_status_says_how_often_it_visits_a_range() -> None:
    clock = FakeClock()
    store = ResultStore(make_inventory(["se-got-wg-001"]), now=clock)
    assert store.rotation_grace("agent-a") == 3 * 15.0  # no status yet: the default rotation and interval
    status = make_status("agent-a", at=clock(), interval_seconds=10.0).model_copy(update={"rotation_rounds": 6})
    store.ingest_status(payload(status), status_topic("agent-a"))
    assert store.rotation_grace("agent-a") == 5 * 10.0


def test_an_agent_whose_clock_runs_ahead_still_goes_silent(store: ResultStore, clock: FakeClock) -> None:
    # Its results are held to their arrival; its status must be too, or one status dated years ahead keeps the
    # agent `ok` (and wgprobe_agent_up 1) for ever after it stops sending anything.
    status(store, "agent-a", clock() + 10 * 365 * 86400)
    store.refresh()
    assert {view.name: view.state for view in agent_views(store)}["agent-a"] is AgentState.ok
    clock.advance(45.001)  # 3 x 15 s after it arrived, nothing since
    store.refresh()
    assert {view.name: view.state for view in agent_views(store)}["agent-a"] is AgentState.silent
