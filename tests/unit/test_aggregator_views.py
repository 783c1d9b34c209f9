"""The fleet view answers the post-mortem's two questions at once: which relays fail (with reasons and since when)
and what they share (the kernel label merged in from configuration management). Plus the per-relay detail, places,
and the label source itself."""

import json
from pathlib import Path

import pytest

from probe.aggregator.health import AgentState, Exclusion, HealthState, Vote
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_result, make_status, payload
from probe.aggregator.views import FleetView, ServerDetail, fleet_view, place, server_detail
from probe.inventory import InventoryError, load_inventory
from probe.inventory.labels import load_labels, merge_labels, parse_labels, unmatched_hosts
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import Reason, StageName

SAMPLE = Path(__file__).parent.parent / "data" / "inventory" / "mullvad-app-relays-sample.json"
AGENTS = ("agent-a", "agent-b")


def send(store: ResultStore, message: ResultMessage) -> None:
    assert store.ingest_result(payload(message), result_topic(message.agent, message.server)).accepted


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fleet(clock: FakeClock) -> ResultStore:
    """The sample Mullvad list with kernels from configuration management; the 4.15 relays lose NAT forwarding."""
    inventory = load_inventory(SAMPLE)
    old_kernel = {"al-tia-wg-003", *(relay.name for relay in inventory.relays if relay.name.startswith("au-"))}
    kernels = {relay.name: {"kernel": "4.15" if relay.name in old_kernel else "5.10"} for relay in inventory.relays}
    store = ResultStore(merge_labels(inventory, kernels), now=clock)
    for agent in AGENTS:
        for relay in inventory.relays:
            fail = StageName.forward if relay.name in old_kernel else None
            if relay.name == "se-got-wg-002" and agent == "agent-a":
                fail = StageName.mtu
            send(store, make_result(relay.name, agent, taken_at=clock(), fail=fail, ports=(51820, 4000)))
    store.refresh()
    return store


def test_the_failing_relays_at_once_with_reasons_and_since(fleet: ResultStore, clock: FakeClock) -> None:
    clock.advance(5)
    view = fleet_view(fleet)
    assert view.servers == 10
    assert view.states == {HealthState.up: 3, HealthState.degraded: 1, HealthState.down: 6, HealthState.unknown: 0}
    assert [s.name for s in view.failing] == [
        "al-tia-wg-003",
        "au-syd-wg-001",
        "au-syd-wg-002",
        "au-syd-wg-003",
        "au-syd-wg-101",
        "au-syd-wg-102",
        "se-got-wg-002",  # degraded after every down one
    ]
    down = view.failing[0]
    assert (down.state, down.reason, down.agents_voting, down.agents_failing, down.quorum) == (
        HealthState.down,
        Reason.forward_timeout,
        2,
        2,
        2,
    )
    assert (view.generated_at - down.since).total_seconds() == 5
    assert view.failing[-1].reason is Reason.mtu_blackhole
    assert view.failing[-1].last_failure is not None and view.failing[-1].last_failure.agent == "agent-a"


def test_the_labels_the_failing_relays_share_come_first(fleet: ResultStore) -> None:
    shared = fleet_view(fleet).shared_labels
    top = shared[0]
    # Six of the seven failing relays run kernel 4.15, and no other relay does. owned=false is as common among
    # them but also on a healthy relay, so it ranks after; Sydney has five.
    assert (top.name, top.value, top.failing, top.fleet) == ("kernel", "4.15", 6, 6)
    assert top.share_of_failing == pytest.approx(6 / 7)
    assert [(s.name, s.value, s.failing, s.fleet) for s in shared[1:3]] == [
        ("owned", "false", 6, 7),
        ("city", "Sydney", 5, 5),
    ]
    assert ("stboot", "true") not in {(s.name, s.value) for s in shared}  # every relay has it: tells nothing apart


def test_relays_are_grouped_by_country_and_city(fleet: ResultStore) -> None:
    countries = {c.name: c for c in fleet_view(fleet).countries}
    assert list(countries) == ["Albania", "Australia", "Sweden"]
    australia = countries["Australia"]
    assert australia.code == "au" and [city.name for city in australia.cities] == ["Sydney"]
    assert australia.states[HealthState.down] == 5
    assert countries["Albania"].states == {
        HealthState.up: 1,
        HealthState.degraded: 0,
        HealthState.down: 1,
        HealthState.unknown: 0,
    }
    sweden = countries["Sweden"].cities[0]
    assert (sweden.code, sweden.name) == ("got", "Gothenburg")
    assert [s.name for s in sweden.servers] == ["se-got-wg-001", "se-got-wg-002", "se-got-wg-003"]


def test_place_falls_back_to_codes_and_unknown() -> None:
    inventory = make_inventory(["fi-hel-wg-001", "lab1"])
    assert place(inventory.relays[0]) == (("fi", "FI"), ("hel", "hel"))
    assert place(inventory.relays[1]) == ((None, "unknown"), (None, "unknown"))


def test_server_detail_shows_every_agent_path_and_stage(fleet: ResultStore, clock: FakeClock) -> None:
    clock.advance(20)
    detail = server_detail(fleet, "se-got-wg-002")
    assert detail is not None
    assert detail.state is HealthState.degraded
    assert [a.agent for a in detail.agents] == list(AGENTS)
    seen_by_a = detail.agents[0]
    assert seen_by_a.vote is Vote.failing and seen_by_a.excluded is None
    assert seen_by_a.age_seconds == 20 and seen_by_a.fresh
    assert [(p.family, p.port, p.port_slot) for p in seen_by_a.paths] == [
        ("ipv4", 4000, "4000-33433"),
        ("ipv4", 51820, "51820"),
        ("ipv6", 4000, "4000-33433"),
        ("ipv6", 51820, "51820"),
    ]
    stages = seen_by_a.paths[0].stages
    assert [(s.name, s.ok) for s in stages][-1] == (StageName.mtu, False)
    assert stages[0].seconds > 0
    # Both agents' results were judged together: no transient verdict from the first agent's alone.
    assert [(h.previous, h.state) for h in detail.history] == [(HealthState.unknown, HealthState.degraded)]
    assert server_detail(fleet, "no-such-relay") is None


def test_an_excluded_agent_shows_why_in_the_detail(fleet: ResultStore, clock: FakeClock) -> None:
    fleet.ingest_status(payload(make_status("agent-b", at=clock(), online=False)), status_topic("agent-b"))
    detail = server_detail(fleet, "au-syd-wg-001")
    assert detail is not None
    assert {a.agent: a.excluded for a in detail.agents} == {"agent-a": None, "agent-b": Exclusion.offline}
    agents = {a.name: a for a in fleet_view(fleet).agents}
    assert agents["agent-b"].state is AgentState.offline and agents["agent-b"].online is False
    assert agents["agent-a"].relays_voting == 10 and agents["agent-b"].relays_voting == 0


def test_views_round_trip_through_json(fleet: ResultStore) -> None:
    # They are the API: what is served must parse back into the same models, unknown fields refused.
    view = fleet_view(fleet)
    assert FleetView.model_validate_json(view.model_dump_json()) == view
    detail = server_detail(fleet, "au-syd-wg-001")
    assert detail is not None
    assert ServerDetail.model_validate_json(detail.model_dump_json()) == detail
    data = json.loads(view.model_dump_json())
    data["colour"] = "red"
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        FleetView.model_validate(data)


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_times_beyond_what_a_datetime_holds_still_serve_the_views(
    fleet: ResultStore, clock: FakeClock, moment: str
) -> None:
    # Valid ISO 8601 that no UTC datetime can hold: one status or result carrying it made /api/v1/servers and
    # /api/v1/agents (and with them the status page) answer 500 until something replaced it.
    status = json.loads(payload(make_status("agent-b", at=clock())))
    status["updated_at"] = moment
    assert fleet.ingest_status(json.dumps(status).encode(), status_topic("agent-b")).accepted
    result = json.loads(payload(make_result("au-syd-wg-001", "agent-b", taken_at=clock())))
    result["started_at"] = moment
    assert fleet.ingest_result(json.dumps(result).encode(), result_topic("agent-b", "au-syd-wg-001")).accepted
    view = fleet_view(fleet)
    assert FleetView.model_validate_json(view.model_dump_json()) == view
    detail = server_detail(fleet, "au-syd-wg-001")
    assert detail is not None
    assert ServerDetail.model_validate_json(detail.model_dump_json()) == detail


# -- labels from configuration management ------------------------------------------------------------------------------


def test_labels_from_json_and_toml() -> None:
    from_json = parse_labels(b'{"se-got-wg-001": {"kernel": "4.15", "reboots": 3, "canary": true}}', source="cm")
    assert from_json.labels == {"se-got-wg-001": {"kernel": "4.15", "reboots": "3", "canary": "true"}}
    from_toml = parse_labels('["se-got-wg-001"]\nkernel = "4.15"\n', source="cm.toml", suffix=".toml")
    assert from_toml.labels == {"se-got-wg-001": {"kernel": "4.15"}}
    assert not from_json.problems and not from_toml.problems


def test_bad_label_entries_are_reported_and_skipped() -> None:
    text = {
        "a": {"kernel": 4.1, "os": "debian-12"},
        "b": "5.10",
        "c": {"bad-name": "x", "site": {"nested": 1}},
        "d": {f"l{n}": "v" for n in range(40)},
    }
    parsed = parse_labels(json.dumps(text), source="cm.json")
    assert parsed.labels == {"a": {"os": "debian-12"}}
    assert parsed.problems == (
        'a: labels.kernel: is the number 4.1; quote it ("4.1") so 4.10 does not become 4.1',
        'b: must be a table of labels, e.g. {"kernel": "5.15"}',
        "c: labels.bad-name: label name 'bad-name' is not a Prometheus label name ([A-Za-z_][A-Za-z0-9_]*)",
        "c: labels.site: must be a string, got dict",
        "d: 40 labels; at most 32 per relay",
    )


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"[1, 2]", "cm: labels must be an object of hostname -> labels, got a list"),
        (b"\xff\xfe", "cm: not UTF-8 text"),
        (b"{", "cm: labels are neither JSON nor TOML"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_unusable_label_sources(content: bytes, error: str) -> None:
    with pytest.raises(InventoryError, match=error.replace("[", r"\[")):
        parse_labels(content, source="cm")


def test_merged_labels_win_and_unmatched_hosts_are_listed() -> None:
    inventory = make_inventory(["se-got-wg-001", "se-got-wg-002"], labels={"se-got-wg-001": {"kernel": "6.1"}})
    labels = {"se-got-wg-001": {"kernel": "4.15", "os": "ubuntu"}, "gone-wg-009": {"kernel": "4.15"}}
    merged = merge_labels(inventory, labels)
    relay = merged.get("se-got-wg-001")
    assert relay is not None and relay.labels == {"kernel": "4.15", "os": "ubuntu"}
    assert merged.get("se-got-wg-002") == inventory.get("se-got-wg-002")
    assert unmatched_hosts(inventory, labels) == ["gone-wg-009"]
    assert inventory.get("se-got-wg-001").labels == {"kernel": "6.1"}  # type: ignore[union-attr]  # not mutated


def test_labels_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.toml"
    path.write_text('["se-got-wg-001"]\nkernel = "4.15"\n')
    assert load_labels(str(path)).labels == {"se-got-wg-001": {"kernel": "4.15"}}
    with pytest.raises(InventoryError, match="cannot read labels: No such file or directory"):
        load_labels(str(tmp_path / "missing.json"))
