"""Where a verification's results come from: this host probing (direct, probe/verify/direct.py) or the aggregator
asking every online agent (the `--aggregator` mode, probe/verify/aggregator.py). The judging (judge.py) is the same
for both.

A source is driven by one callback: `accept(observation)` takes each result as it comes, judges it on the spot
(a verdict is reported the moment it is certain), and answers whether that server wants another round from that
vantage point. A source whose vantage points are known only once it asks (the aggregator's online agents) says who
was asked (`accept.expect`), and who will not answer any more (`accept.give_up`: an agent gone offline, the time
is up, the aggregator unreachable), so that silence is judged inconclusive rather than waited for or passed.
The verifier cancels `run` as soon as the whole verification's verdict is certain, so a source must stop cleanly
when cancelled (no probe left running, no socket left open).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from probe.inventory import Relay
from probe.verify.judge import Observation, Quorum

Accept = Callable[[Observation], bool]


class Sink(Protocol):
    """What a pass hands its source: `accept` with the two calls of a source that asks others to probe."""

    def __call__(self, observation: Observation) -> bool: ...

    def expect(self, vantages: Sequence[str], quorum: Quorum | None = None) -> None:
        """These vantage points were asked; judge them by `quorum` (None: the verifier's)."""

    def give_up(self, vantage: str | None, why: str) -> None:
        """No more results will come from `vantage` (None: from any), for the reason `why` (one line)."""


class Source(Protocol):
    @property
    def mode(self) -> str:
        """The mode, as the JSON report names it: "direct" or "aggregator"."""
        ...

    def vantage_points(self) -> list[str]:
        """The vantage points expected to answer (direct: this host's agent)."""
        ...

    def describe(self) -> str:
        """Where the results come from, for people: "lab-agent (this host)"."""
        ...

    async def run(self, relays: Sequence[Relay], accept: Sink) -> None:
        """Observe every relay, round after round while `accept` asks for more; return when none does."""
        ...

    async def close(self) -> None:
        """Release what the source holds (connections, pending checks)."""
        ...
