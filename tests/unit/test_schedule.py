"""The agent's schedule with a fake clock: every relay once per round at its own slot, the other paths dealt so
every range is visited, the load spread over the interval, relays following the inventory, no bursts after a stall."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv6Address

import pytest

from agents.schedule import SLOT_SECONDS, Job, Schedule, offset
from probe.inventory import Relay
from probe.runner import plan_paths

INTERVAL = 15.0
NAMES = [f"se-got-wg-{n:03d}" for n in range(1, 501)]


def run(schedule: Schedule, start: float, end: float, step: float = 0.25) -> list[Job]:
    jobs, now = [], start
    while now < end:
        jobs += schedule.due(now)
        now += step
    return jobs


def test_every_relay_once_per_round_at_its_own_slot() -> None:
    schedule = Schedule(INTERVAL)
    start = 1_800_000_000.0
    schedule.set_relays(NAMES, start)
    jobs = run(schedule, start, start + 10 * INTERVAL)
    per_relay = Counter(job.relay for job in jobs)
    assert set(per_relay.values()) <= {9, 10} and set(per_relay) == set(NAMES)
    for job in jobs:
        assert job.due % INTERVAL == pytest.approx(offset(job.relay, INTERVAL), abs=1e-6)
        assert job.deadline == job.due + INTERVAL  # a probe never outlives its interval
        assert job.round == int(job.due // INTERVAL)
    rounds = Counter((job.relay, job.round) for job in jobs)
    assert set(rounds.values()) == {1}  # never twice in a round


def test_the_load_is_spread_evenly_over_the_interval() -> None:
    slots = Counter(int(offset(name, INTERVAL)) for name in NAMES)
    assert set(slots) == set(range(15))
    assert max(slots.values()) < 2 * len(NAMES) / 15  # no second of the round carries twice its share


def test_relays_start_a_few_together_in_quarter_second_slots() -> None:
    # Bursts cost less CPU than the same work spread thin (agents/schedule.py, SLOT_SECONDS); the slots stay even.
    offsets = Counter(offset(name, INTERVAL) for name in NAMES)
    slots = round(INTERVAL / SLOT_SECONDS)
    assert sorted(offsets) == [n * INTERVAL / slots for n in range(slots)]
    assert max(offsets.values()) < 2 * len(NAMES) / slots
    # An interval shorter than two slots keeps at least one slot; one of 3 s has twelve.
    assert {offset(name, 0.1) for name in NAMES} == {0.0}
    assert len({offset(name, 3.0) for name in NAMES}) == 12


def relay() -> Relay:
    return Relay(
        name="se-got-wg-001",
        public_key="mRP6MzuuBDLtPvmCW2JtnYyhm1oZPAd4cXJ1c2MFpRM=",
        ipv4_addr_in=IPv4Address("192.0.2.1"),
        ipv6_addr_in=IPv6Address("2001:db8::1"),
        port_ranges=((53, 53), (123, 123), (4000, 33433), (33565, 51820), (52001, 60000)),
    )


def test_main_paths_every_round_and_every_other_path_once_per_rotation() -> None:
    schedule = Schedule(INTERVAL, rotation_rounds=4)
    schedule.set_relays(["se-got-wg-001"], 0.0)
    jobs = run(schedule, 0.0, 8 * INTERVAL)
    assert len(jobs) == 8
    visits: Counter[tuple[str, int]] = Counter()
    main_visits = 0
    for job in jobs:
        specs = plan_paths(relay(), rotation=job.rotation)
        others = [s for s in specs if s.port != 51820]
        main_visits += sum(1 for s in specs if s.port == 51820)
        for index, spec in enumerate(others):
            if job.takes(index, schedule.rotation_rounds):
                low_high = next(r for r in relay().port_ranges if r[0] <= spec.port <= r[1])
                visits[(spec.family, low_high[0])] += 1
    assert main_visits == 2 * 8  # both families, every round
    # Five ranges x two families, each visited once per four rounds: twice in eight.
    assert len(visits) == 10 and set(visits.values()) == {2}
    assert {job.rotation for job in jobs} == {0, 1}  # the port in a range moves on once per rotation


def test_relays_follow_the_inventory() -> None:
    schedule = Schedule(INTERVAL)
    added, removed = schedule.set_relays(["a-1", "b-2"], 100.0)
    assert (added, removed) == (["a-1", "b-2"], [])
    assert all(job.due >= 100.0 for job in schedule.due(100.0 + INTERVAL))
    added, removed = schedule.set_relays(["b-2", "c-3"], 200.0)
    assert (added, removed) == (["c-3"], ["a-1"])
    later = run(schedule, 200.0, 200.0 + 3 * INTERVAL)
    assert {job.relay for job in later} == {"b-2", "c-3"}
    assert min(job.due for job in later if job.relay == "c-3") >= 200.0  # a new relay starts at its next slot


def test_a_stall_skips_missed_rounds_instead_of_bursting() -> None:
    schedule = Schedule(INTERVAL)
    schedule.set_relays(NAMES[:50], 0.0)
    run(schedule, 0.0, INTERVAL)
    jobs = schedule.due(10 * INTERVAL)  # the agent was suspended for nine rounds
    assert len(jobs) <= 50  # at most one (the slot just passed) per relay, none of the missed rounds
    assert all(job.due > 9 * INTERVAL for job in jobs)
    upcoming = schedule.next_due()
    assert upcoming is not None and upcoming > 9 * INTERVAL


def test_bad_intervals_are_refused() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="interval"):
            Schedule(bad)
