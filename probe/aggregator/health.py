"""One health state per relay from many vantage points: pure functions, no store, no clock.

Theory of operation. Each agent that may judge a relay (its data is fresh, it is online, and its control check held
both when the result was taken and in its latest status) casts one vote from what it saw:

- `failing`: every path of its newest result failed (a relay whose NAT is broken fails them all at once);
- `partial`: some of its fresh paths failed (an extended port range closed, IPv6 forwarding off, one flaky path);
- `up`: every fresh path passed.

The newest result decides `failing` on its own, so a relay that breaks is called down in the next round rather than
when the paths of earlier rounds age out; any fresh failing path keeps a vote at `partial`, so a rotated port
range that fails is not forgotten between the rounds that visit it.

The relay is `down` when at least a quorum of the eligible agents vote `failing` (default: a majority of them),
`degraded` when any vote is not `up` without such a quorum, `up` when every vote is, and `unknown` with no eligible
vote. Agents that are offline, silent or whose control check failed do not vote at all: the quorum is counted among
the agents that can see, so one agent losing its own network never marks relays down, and is reported itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from probe.aggregator.config import Quorum


class HealthState(StrEnum):
    up = "up"
    degraded = "degraded"  # some paths, or some agents, fail; no quorum of agents sees it failing
    down = "down"  # a quorum of the eligible agents sees every path of its newest result fail
    unknown = "unknown"  # no eligible agent has fresh data on it


HEALTH_STATES: tuple[HealthState, ...] = tuple(HealthState)


class Vote(StrEnum):
    up = "up"
    partial = "partial"
    failing = "failing"


class Exclusion(StrEnum):
    """Why an agent's results for a relay do not vote. Closed, like failure reasons."""

    offline = "offline"  # its status (or last will) says offline
    control_failed = "control_failed"  # its own reach, through no relay, failed: its view says nothing of relays
    stale = "stale"  # its newest result for this relay is older than the staleness limit
    no_paths = "no_paths"  # its newest result holds no path


class AgentState(StrEnum):
    """How an agent itself is doing, as the fleet view and `wgprobe_agent_up` report it."""

    ok = "ok"
    control_failed = "control_failed"  # online, but its own reach failed: its results are left out
    offline = "offline"  # its status, or its last will, says offline
    silent = "silent"  # no result and no status from it within the staleness limit


class _Path(Protocol):
    @property
    def ok(self) -> bool: ...


def agent_vote(newest: Sequence[_Path], fresh: Iterable[_Path]) -> Vote | None:
    """One agent's vote on one relay: `newest` are the paths of its newest result, `fresh` every path it measured
    within the staleness limit (the newest included). None when the newest result holds no path."""
    if not newest:
        return None
    if not any(path.ok for path in newest):
        return Vote.failing
    if all(path.ok for path in newest) and all(path.ok for path in fresh):
        return Vote.up
    return Vote.partial


def quorum_size(quorum: Quorum, eligible: int) -> int:
    """How many `failing` votes make a relay down. An integer quorum is absolute: with fewer eligible agents than
    that, nothing is ever called down (it can still be degraded)."""
    return eligible // 2 + 1 if quorum == "majority" else quorum


@dataclass(frozen=True, slots=True)
class Verdict:
    state: HealthState
    eligible: int  # agents that voted
    failing: int  # of which voted `failing`
    partial: int  # of which voted `partial`
    needed: int  # `failing` votes that make it down


_VERDICTS: dict[tuple[int, int, int, int], Verdict] = {}
_VERDICTS_KEPT = 4096  # a handful in any real fleet; the bound is for the theoretical one with hundreds of agents


def judge(votes: Sequence[Vote], quorum: Quorum) -> Verdict:
    eligible = len(votes)
    failing = votes.count(Vote.failing)
    partial = votes.count(Vote.partial)
    needed = quorum_size(quorum, eligible)
    key = (eligible, failing, partial, needed)
    verdict = _VERDICTS.get(key)
    if verdict is None:  # immutable, and a handful in all: made once rather than for every relay at every pass
        verdict = _verdict(eligible, failing, partial, needed)
        if len(_VERDICTS) < _VERDICTS_KEPT:
            _VERDICTS[key] = verdict
    return verdict


def _verdict(eligible: int, failing: int, partial: int, needed: int) -> Verdict:
    if eligible == 0:
        state = HealthState.unknown
    elif failing >= needed:
        state = HealthState.down
    elif failing or partial:
        state = HealthState.degraded
    else:
        state = HealthState.up
    return Verdict(state=state, eligible=eligible, failing=failing, partial=partial, needed=needed)
