"""When the agent probes which relay on which paths: pure, clock-driven, no I/O.

Theory of operation
-------------------
Time is cut into rounds of `interval` seconds (round r starts at r * interval, Unix time, so agents started at
different moments still count the same rounds). Every relay is probed once per round, at its own offset into the
round: a hash of its name spread over the interval's quarter-second slots, so a fleet's load is even instead of arriving
all at once (a few relays share a slot: see SLOT_SECONDS), and a relay keeps its slot from one round to the next.

Each probe covers the relay's main port on both families, every round: that is the path every customer uses. The
other paths, one port per extended entry range on each family, are dealt over `rotation_rounds` rounds: path i of
the relay's plan is probed in the rounds r with r % rotation_rounds == i % rotation_rounds, so every range is
visited once per `rotation_rounds * interval` (a minute by default). Each visit of a range takes another port of it:
the port rotation advances once per visit (probe.runner.plan_paths), so over time a whole range is covered.

If the agent falls behind (a round's slot passed more than a round ago, e.g. after a suspend), the missed rounds are
skipped rather than run in a burst. Relays added to the inventory start at their next slot; removed ones stop.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from probe.inventory import Relay
from probe.messages import DEFAULT_ROTATION_ROUNDS
from probe.runner import PathSpec, plan_paths

__all__ = ["DEFAULT_ROTATION_ROUNDS", "SLOT_SECONDS", "Job", "Schedule", "offset", "paths_for"]

# Relays start in slots a quarter of a second apart, a few together, rather than each at its own moment. The same
# work costs less CPU done in short bursts than spread thin: after each idle gap a core starts cold (caches,
# frequency), and with relays 28 ms apart (522 every 15 s) every probe paid for it. Measured with bench_agent against
# the simulated fleet, runs in turn (README, Benchmarks): CPU per path ~0.8x of the one-by-one spread with 0.25 s
# slots. Half-second slots saved a little more but overloaded the simulated fleet's one process (answers late past
# the stage timeout), so a quarter. Answers are timed by the kernel's receive timestamp (probe/tunnel.py), so the
# paths in flight together do not lengthen each other's round trips.
SLOT_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Job:
    """One relay's probe in one round."""

    relay: str
    round: int
    due: float  # when it should start (Unix seconds)
    deadline: float  # it must be over by then: a probe never outlives its interval
    rotation: int  # the port rotation to plan this round's paths with (advances once per visit of a range)
    other_paths: int  # which of the non-main paths: those with index % rotation_rounds == this

    def takes(self, index: int, rotation_rounds: int) -> bool:
        """Whether the plan's non-main path number `index` (0-based) belongs to this round."""
        return index % rotation_rounds == self.other_paths


def offset(relay: str, interval: float) -> float:
    """The relay's slot in every round: its name hashed over the interval's slots (crc32: stable across processes),
    the slots `SLOT_SECONDS` apart (fewer, for an interval shorter than a few of them)."""
    slots = max(1, round(interval / SLOT_SECONDS))
    return math.floor(zlib.crc32(relay.encode()) / 2**32 * slots) * (interval / slots)


@dataclass
class Schedule:
    interval: float
    rotation_rounds: int = DEFAULT_ROTATION_ROUNDS
    _due: list[tuple[float, str]] = field(default_factory=list)  # heap of (next due, relay)
    _relays: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.interval > 0 or not math.isfinite(self.interval):
            raise ValueError(f"interval must be a positive number of seconds, got {self.interval}")
        if self.rotation_rounds < 1:
            raise ValueError("rotation_rounds must be at least 1")

    @property
    def relays(self) -> frozenset[str]:
        return frozenset(self._relays)

    def set_relays(self, names: Iterable[str], now: float) -> tuple[list[str], list[str]]:
        """Follow the inventory: (added, removed). Added relays start at their next slot after `now`."""
        wanted = set(names)
        added = sorted(wanted - self._relays)
        removed = sorted(self._relays - wanted)
        self._relays = wanted
        for name in added:
            heapq.heappush(self._due, (self._next_slot(name, now), name))
        if removed:  # dropped from the heap lazily would keep their entries forever if re-added; rebuild now
            self._due = [(due, name) for due, name in self._due if name in wanted]
            heapq.heapify(self._due)
        return added, removed

    def _next_slot(self, relay: str, after: float) -> float:
        """The first start of `relay`'s slot at or after `after`."""
        slot = offset(relay, self.interval)
        start = math.floor((after - slot) / self.interval) * self.interval + slot
        return start if start >= after else start + self.interval

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def due(self, now: float) -> list[Job]:
        """The jobs whose time has come, each relay at most once; their next rounds are scheduled."""
        jobs = []
        while self._due and self._due[0][0] <= now:
            due, relay = heapq.heappop(self._due)
            if due < now - self.interval:  # fell behind by more than a round: skip to the next slot
                heapq.heappush(self._due, (self._next_slot(relay, now), relay))
                continue
            number = math.floor(due / self.interval)
            jobs.append(
                Job(
                    relay=relay,
                    round=number,
                    due=due,
                    deadline=due + self.interval,
                    rotation=number // self.rotation_rounds,
                    other_paths=number % self.rotation_rounds,
                )
            )
            heapq.heappush(self._due, (due + self.interval, relay))
        return jobs


def paths_for(relay: Relay, job: Job, *, main_port: int | None, rotation_rounds: int) -> list[PathSpec]:
    """The paths of `relay` this job probes: the main port on both families, and its share of the others."""
    specs = plan_paths(relay, rotation=job.rotation, main_port=main_port)
    main = main_port or relay.main_port
    others = [spec for spec in specs if spec.port != main]
    chosen = [spec for index, spec in enumerate(others) if job.takes(index, rotation_rounds)]
    return [spec for spec in specs if spec.port == main] + chosen
