"""Identifiers for concurrent probes: ICMP echo identifiers and UDP/TCP source ports.

Why this exists: behind one relay, every agent's inner packets go through the same NAT table (DESIGN.md,
"WireGuard facts that bite"). Two probes that use the same echo identifier or source port towards the same
target are one NAT flow, and each may take the other's reply as its own. So each probe holds a value no other
running probe in this process holds, and hands it back when it ends.

Theory of operation: an allocator walks its range cyclically from a random starting point chosen per process,
so agents started together do not all begin at the same value, and skips values still in use. It moves on
after each grant instead of reusing the lowest free value, so a value released by one probe is not handed
straight to the next, where a late reply to the old probe would look like a reply to the new one.
"""

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Final

from probe.packets.errors import IdsExhaustedError

# RFC 792 / RFC 4443: the echo identifier is 16 bits.
ICMP_IDENTIFIER_RANGE: Final = (0, 0xFFFF)
# RFC 6335 section 6: the dynamic (ephemeral) port range, which no service listens on by assignment.
EPHEMERAL_PORT_RANGE: Final = (49152, 65535)


class IdAllocator:
    """Hands out integers in [low, high] not currently held; thread-safe (agents may probe from threads)."""

    def __init__(self, low: int, high: int, *, rng: random.Random | None = None) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"bad range [{low}, {high}]")
        self._low = low
        self._size = high - low + 1
        self._next = (rng or random.Random()).randrange(self._size)
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        """A value no running probe holds; raises `IdsExhaustedError` when every value is held."""
        with self._lock:
            if len(self._held) >= self._size:
                raise IdsExhaustedError(f"all {self._size} values from {self._low} are in use")
            while True:
                value = self._low + self._next
                self._next = (self._next + 1) % self._size
                if value not in self._held:
                    self._held.add(value)
                    return value

    def release(self, value: int) -> None:
        """Give a value back when its probe has ended; releasing a value not held is a no-op."""
        with self._lock:
            self._held.discard(value)

    @contextmanager
    def lease(self) -> Iterator[int]:
        """`with allocator.lease() as ident:` holds a value for the duration of one probe."""
        value = self.acquire()
        try:
            yield value
        finally:
            self.release(value)

    def in_use(self) -> int:
        with self._lock:
            return len(self._held)


@cache
def icmp_identifiers() -> IdAllocator:
    """The process-wide allocator of ICMP/ICMPv6 echo identifiers."""
    return IdAllocator(*ICMP_IDENTIFIER_RANGE)


@cache
def source_ports() -> IdAllocator:
    """The process-wide allocator of UDP and TCP source ports: one pool, so a port is unique across both."""
    return IdAllocator(*EPHEMERAL_PORT_RANGE)
