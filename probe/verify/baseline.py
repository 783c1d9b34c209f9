"""`--baseline control`: the deployed servers (the canary) against servers not deployed (the control group), over
the same rounds from the same vantage point. Pure.

The control group is chosen from the inventory's other relays, a bounded number (`--control-size`, default 10):
first those at a location of the canary (`se-got`), then those of a canary's country (`se-`), then the rest, in
a fixed pseudo-random order within each tier (crc32 of the name), so every pass of a soak compares with the same
relays and the choice is spread over the fleet rather than the first names of the list.

Two measures, over every judged round of each group (rounds not judged carry no sample):

- success ratio: the share of probed paths that passed (a path is one customer's way in: one entry port, one
  family, every stage). Fails when the canary's is lower than the control's by more than `max_success_drop`
  (default 0.05).
- median RTT: the median of the forward stage's round trip (into the tunnel, out through the relay's NAT to the
  forward target, and back) on passed paths. Fails when the canary's exceeds the control's by more than
  `max_rtt_increase` (default 20 ms: loopback and LAN round trips differ by well under that, a relay
  that queues or detours traffic after a deploy does not).

Without a sample on each side (no passed path, so no RTT) the comparison is inconclusive, never passed.
"""

from __future__ import annotations

import random
import statistics
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from probe.inventory import Relay
from probe.verify.judge import Outcome, Round, Verdict

DEFAULT_CONTROL_SIZE = 10
# Round trips kept per group: a 24 h soak of 12 servers every minute offers ~600,000; a uniform sample of this many
# puts the median within a fraction of a percentile of the whole's.
MAX_SAMPLES = 50_000
DEFAULT_MAX_RTT_INCREASE = 0.020  # seconds
DEFAULT_MAX_SUCCESS_DROP = 0.05


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_rtt_increase: float = DEFAULT_MAX_RTT_INCREASE
    max_success_drop: float = DEFAULT_MAX_SUCCESS_DROP


@dataclass
class GroupStats:
    """What one group's judged rounds measured."""

    paths: int = 0  # judged paths
    passed: int = 0
    rounds: int = 0  # judged rounds
    rtts: list[float] = field(default_factory=list)

    seen: int = 0  # round trips offered, of which `rtts` keeps a uniform sample of at most MAX_SAMPLES
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def add(self, rounds: Iterable[Round]) -> None:
        for r in rounds:
            if r.outcome is Outcome.unjudged:
                continue
            self.rounds += 1
            self.paths += r.paths - len(r.unjudged)
            self.passed += r.passed_paths
            for rtt in r.forward_rtts:
                self._sample(rtt)

    def _sample(self, rtt: float) -> None:
        """Reservoir sampling (Vitter's algorithm R): a day's soak keeps a bounded, uniform sample for the median."""
        self.seen += 1
        if len(self.rtts) < MAX_SAMPLES:
            self.rtts.append(rtt)
        elif (slot := self.rng.randrange(self.seen)) < MAX_SAMPLES:
            self.rtts[slot] = rtt

    @property
    def success_ratio(self) -> float | None:
        return self.passed / self.paths if self.paths else None

    @property
    def median_rtt(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None


@dataclass(frozen=True, slots=True)
class Comparison:
    verdict: Verdict  # passed, failed or inconclusive
    success_drop: float | None  # control's ratio minus the canary's (positive: the canary is worse)
    rtt_increase: float | None  # canary's median minus the control's, seconds
    detail: str


def compare(canary: GroupStats, control: GroupStats, thresholds: Thresholds) -> Comparison:
    if canary.success_ratio is None or control.success_ratio is None:
        side = "deployed servers" if canary.success_ratio is None else "control group"
        return Comparison(Verdict.inconclusive, None, None, f"no judged round of the {side}")
    drop = control.success_ratio - canary.success_ratio
    canary_rtt, control_rtt = canary.median_rtt, control.median_rtt
    if canary_rtt is None or control_rtt is None:
        side = "deployed servers" if canary_rtt is None else "control group"
        return Comparison(Verdict.inconclusive, drop, None, f"no passed path of the {side}, so no round trip")
    increase = canary_rtt - control_rtt
    ratios = f"success {canary.success_ratio:.1%} against {control.success_ratio:.1%}"
    rtts = f"median forward RTT {canary_rtt * 1000:.1f} ms against {control_rtt * 1000:.1f} ms"
    worse = []
    if drop > thresholds.max_success_drop:
        worse.append(f"success ratio {drop:.1%} lower (at most {thresholds.max_success_drop:.1%} allowed)")
    if increase > thresholds.max_rtt_increase:
        worse.append(
            f"median RTT {increase * 1000:.1f} ms higher (at most {thresholds.max_rtt_increase * 1000:g} ms allowed)"
        )
    if worse:
        return Comparison(Verdict.failed, drop, increase, f"worse than the control group: {'; '.join(worse)}")
    return Comparison(Verdict.passed, drop, increase, f"within thresholds: {ratios}, {rtts}")


def choose_control(relays: Sequence[Relay], canary: Sequence[Relay], size: int) -> list[Relay]:
    """Up to `size` relays not in `canary`: same location first, then same country, then the rest."""
    names = {relay.name for relay in canary}
    sites = {relay.location for relay in canary if relay.location}
    countries = {site.split("-")[0] for site in sites}

    def rank(relay: Relay) -> tuple[int, int]:
        site = relay.location or ""
        tier = 0 if site in sites else 1 if site.split("-")[0] in countries else 2
        return tier, zlib.crc32(relay.name.encode())

    return sorted((relay for relay in relays if relay.name not in names), key=rank)[:size]
