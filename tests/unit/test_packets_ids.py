"""Identifier allocation: concurrent probes behind one relay's NAT never share an echo identifier or port."""

import random
import subprocess
import sys
import threading

import pytest

from probe.packets import IdAllocator, IdsExhaustedError, icmp_identifiers, source_ports


def test_values_are_unique_until_the_range_is_exhausted() -> None:
    allocator = IdAllocator(100, 109, rng=random.Random(1))
    values = [allocator.acquire() for _ in range(10)]
    assert sorted(values) == list(range(100, 110))
    with pytest.raises(IdsExhaustedError):
        allocator.acquire()
    allocator.release(104)
    assert allocator.acquire() == 104


def test_a_released_value_is_not_handed_straight_back() -> None:
    # A late reply to a finished probe must not match the next probe: the allocator moves on.
    allocator = IdAllocator(0, 0xFFFF, rng=random.Random(2))
    first = allocator.acquire()
    allocator.release(first)
    assert allocator.acquire() != first
    assert allocator.in_use() == 1


def test_lease_releases_when_the_probe_fails() -> None:
    allocator = IdAllocator(1, 2)
    with pytest.raises(RuntimeError), allocator.lease() as value:
        assert allocator.in_use() == 1
        raise RuntimeError(value)
    assert allocator.in_use() == 0


def test_concurrent_acquires_from_threads_never_collide() -> None:
    allocator = source_ports()
    got: list[int] = []
    lock = threading.Lock()

    def grab() -> None:
        mine = [allocator.acquire() for _ in range(200)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(set(got)) == len(got) == 1600
        assert all(49152 <= port <= 65535 for port in got), "RFC 6335 dynamic ports"
    finally:
        for port in got:
            allocator.release(port)


def test_process_wide_allocators_are_shared() -> None:
    assert icmp_identifiers() is icmp_identifiers()
    assert source_ports() is source_ports()
    assert icmp_identifiers() is not source_ports()


def test_each_process_starts_at_its_own_random_offset() -> None:
    # Two agents started at once must not walk the same identifiers in lockstep. Chance of a false failure:
    # all three processes drawing the same of 65536 starting points.
    code = "from probe.packets import icmp_identifiers; print(icmp_identifiers().acquire())"
    firsts = {subprocess.check_output([sys.executable, "-c", code], text=True).strip() for _ in range(3)}
    assert len(firsts) > 1
