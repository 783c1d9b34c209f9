"""Signals that reach a service (`probe agent`, `aggregator`, `serve`) while it is still starting.

Until the event loop's handlers are installed, SIGHUP's default action ends the process (exit 129, no log line:
`systemctl reload` during a start, or while the first inventory could not be fetched, left the agent dead) and
SIGTERM's ends it with 143 instead of the documented 0. `hold()` is called first thing: from then on these signals
are only noted, and each service takes what was noted when its own handlers are in place (`take`): a stop asked
for during start-up stops it cleanly, a reload asked for is done once there is something to reload.
"""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_noted: set[int] = set()


def hold() -> None:
    for signum in HELD:
        signal.signal(signum, _note)


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.add(signum)


def take(*signums: int) -> bool:
    """Whether any of `signums` arrived while held; forgets them."""
    seen = any(signum in _noted for signum in signums)
    _noted.difference_update(signums)
    return seen
