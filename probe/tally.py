"""What a run's results come to (`probe server`, `probe sweep`): the relays, which failed and why, whether any
failure is the relay's to answer for, and whether this host could send at all. Taken one result at a time, so a
sweep of many rounds keeps this and not the results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from probe.results import Reason, ServerResult, blames_relay


@dataclass
class Tally:
    """What a run's results come to, taken one result at a time: a sweep of many rounds keeps this, not every
    result (a 12-path result from the simulated fleet takes ~84 kB in memory: `--rounds 100` over 1,000 relays kept
    ~8 GB)."""

    servers: set[str] = field(default_factory=set)
    failing: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # a result's reason: relays
    failed_reasons: set[str] = field(default_factory=set)  # of the failed paths
    failed_paths: int = 0
    paths: int = 0
    socket_error_paths: int = 0
    all_ok: bool = True
    blamed: bool = False  # a path failed for what would be the relay's reason (blames_relay)

    @classmethod
    def of(cls, results: Iterable[ServerResult]) -> Tally:
        tally = cls()
        for result in results:
            tally.add(result)
        return tally

    def add(self, result: ServerResult) -> None:
        self.servers.add(result.server)
        if not result.ok:
            self.all_ok = False
            self.failing[str(result.reason)].add(result.server)
        self.blamed = self.blamed or blames_relay(result)
        for path in result.paths:
            self.paths += 1
            self.socket_error_paths += path.reason is Reason.socket_error
            if not path.ok:
                self.failed_paths += 1
                self.failed_reasons.add(str(path.reason))

    @property
    def failing_servers(self) -> set[str]:
        return set().union(*self.failing.values())

    @property
    def could_not_judge(self) -> bool:
        """Every path of every result failed because the agent could not send at all: its own network is down."""
        return self.paths > 0 and self.socket_error_paths == self.paths

    @property
    def nothing_blamed(self) -> bool:
        """Some path failed, but every failure is this host's or wgprobe's own (socket_error, internal_error):
        passing paths beside them do not make those paths judged, and no relay failed (`probe verify` counts such a
        round unjudged too)."""
        return not self.all_ok and not self.blamed
