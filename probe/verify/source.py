"""Where a verification's results come from: this host probing (direct, probe/verify/direct.py) or, later, the
aggregator asking every online agent (the `--aggregator` mode). The judging (judge.py) is the same for both.

A source is driven by one callback: `accept(observation)` takes each result as it comes, judges it on the spot
(a verdict is reported the moment it is certain), and answers whether that server wants another round from that
vantage point. The verifier cancels `run` as soon as the whole verification's verdict is certain, so a source
must stop cleanly when cancelled (no probe left running, no socket left open).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from probe.inventory import Relay
from probe.verify.judge import Observation

Accept = Callable[[Observation], bool]


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

    async def run(self, relays: Sequence[Relay], accept: Accept) -> None:
        """Observe every relay, round after round while `accept` asks for more; return when none does."""
        ...

    async def close(self) -> None:
        """Release what the source holds (connections, pending checks)."""
        ...
