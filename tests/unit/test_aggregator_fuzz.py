"""Whatever arrives on the results and status topics, the store never raises, counts it exactly once, and changes
nothing unless it accepted it (issue 9: "never a crash, never a stuck consumer")."""

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.aggregator.intake import Outcome
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_result, make_status, payload
from probe.messages import result_topic, status_topic
from probe.results import StageName

RELAYS = ["se-got-wg-001", "se-got-wg-002"]
TOPICS = st.one_of(
    st.sampled_from([result_topic("agent-a", RELAYS[0]), result_topic("agent-b", RELAYS[1]), status_topic("agent-a")]),
    st.text(max_size=80),
    st.builds(lambda a, s: f"wgprobe/v1/results/{a}/{s}", st.text(max_size=20), st.text(max_size=20)),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=40,
)
VALID = json.loads(
    payload(make_result(RELAYS[0], "agent-a", taken_at=1_800_000_000.0, ports=(51820, 4000), fail=StageName.forward))
)
STATUS = json.loads(payload(make_status("agent-a", at=1_800_000_000.0)))


def _store() -> ResultStore:
    return ResultStore(make_inventory(RELAYS), now=FakeClock())


def _check(store: ResultStore, data: bytes, topic: str, status: bool) -> None:
    before = dict(store.messages)
    ingested = store.ingest_status(data, topic) if status else store.ingest_result(data, topic)
    after = dict(store.messages)
    assert sum(after.values()) == sum(before.values()) + 1
    assert after[ingested.outcome] == before[ingested.outcome] + 1
    assert ingested.detail.isprintable()
    if not ingested.accepted:
        assert not store.agents and all(not s.agents for s in store.servers.values())
    store.refresh()  # judging whatever was accepted does not raise either


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), topic=TOPICS, status=st.booleans())
def test_random_bytes(data: bytes, topic: str, status: bool) -> None:
    _check(_store(), data, topic, status)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON, topic=TOPICS, status=st.booleans())
def test_random_json(value: Any, topic: str, status: bool) -> None:
    _check(_store(), json.dumps(value).encode(), topic, status)


def _replace(document: Any, path: list[int], value: Any) -> Any:
    """`document` with the node reached by following `path` (indices modulo each level's size) set to `value`."""
    if not path or not isinstance(document, dict | list) or not document:
        return value
    copy = dict(document) if isinstance(document, dict) else list(document)
    keys = list(copy) if isinstance(copy, dict) else list(range(len(copy)))
    key = keys[path[0] % len(keys)]
    copy[key] = _replace(copy[key], path[1:], value)
    return copy


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.lists(st.integers(min_value=0, max_value=50), max_size=6), value=JSON, status=st.booleans())
def test_valid_messages_with_one_part_replaced(path: list[int], value: Any, status: bool) -> None:
    document = _replace(STATUS if status else VALID, path, value)
    topic = status_topic("agent-a") if status else result_topic("agent-a", RELAYS[0])
    _check(_store(), json.dumps(document).encode(), topic, status)


def test_the_unmodified_message_is_accepted() -> None:
    # The property above would pass vacuously if the base message were refused.
    store = _store()
    assert store.ingest_result(json.dumps(VALID).encode(), result_topic("agent-a", RELAYS[0])).accepted
    assert store.ingest_status(json.dumps(STATUS).encode(), status_topic("agent-a")).accepted
    assert store.messages[Outcome.accepted] == 2
