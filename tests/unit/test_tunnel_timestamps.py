"""Answers are timed by the kernel's receive timestamp: what a Flow hands over, and how a wait is believed."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from probe.tunnel import MAX_WAIT, Flow, waited


@pytest.mark.asyncio
async def test_a_flow_hands_over_when_the_kernel_took_the_datagram_in() -> None:
    loop = asyncio.get_running_loop()
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ours.bind(("127.0.0.1", 0))
        ours.setblocking(False)
        theirs.bind(("127.0.0.1", 0))
        ours.connect(theirs.getsockname())
        theirs.connect(ours.getsockname())
        flow = Flow(loop, ours)
        got: list[tuple[bytes, float]] = []
        flow.on_datagram = lambda data, arrived: got.append((data, arrived))
        # The kernel turns stamping on through deferred work (probe/tunnel.py, `stamp`): until it has run, a
        # datagram is stamped when read. Wait for a datagram stamped before it was read (a second at most).
        for _ in range(100):
            theirs.send(b"warm-up")
            time.sleep(0.01)
            while not got:
                await asyncio.sleep(0.001)
            if got.pop()[1] < time.time() - 0.005:
                break
        before = time.time()
        theirs.send(b"answer")
        sent = time.time()
        time.sleep(0.05)  # the loop is busy: the datagram waits in the socket
        while not got:
            await asyncio.sleep(0.001)
        flow.close()
    finally:
        theirs.close()
    (data, arrived), *_ = got
    assert data == b"answer"
    assert before <= arrived <= sent  # stamped on arrival, not when read
    assert waited(arrived) >= 0.05


def test_a_wait_is_believed_only_when_it_is_plausible() -> None:
    now = time.time()
    assert waited(0.0) == 0.0  # no timestamp: timed when read
    assert waited(now + 5) == 0.0  # the clock stepped back since the stamp
    assert waited(now - 2 * MAX_WAIT) == 0.0  # or forward: not believed either
    assert 0.2 <= waited(now - 0.2) < MAX_WAIT
