"""The asyncio shell that runs a path's exchanges over its tunnel (the exchanges themselves are sans-I/O).

One coroutine per path: it sends every exchange's first probes, resends for the ones still waiting every
`RESEND_INTERVAL`, and sleeps in between. Answers are booked by the demultiplexer in the socket's reader callback,
which wakes this coroutine only when the last exchange is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from probe.results import Reason
from probe.stages.base import RESEND_INTERVAL, Demux, Exchange
from probe.tunnel import Inbox, Tunnel


async def drive(tunnel: Tunnel, exchanges: list[Exchange], timeout: float, clock: Callable[[], float]) -> Demux:
    """Run `exchanges` until each is done or `timeout` passes; every exchange is ended (booked) on return."""
    waker: Inbox[None] = Inbox(asyncio.get_running_loop())
    demux = Demux(exchanges, clock, waker.wake)

    def all_done() -> bool:
        return all(ex.done for ex in exchanges)

    start = clock()
    deadline = start + timeout
    tunnel.listen(demux.dispatch)
    try:
        for _ in range(max((ex.wanted for ex in exchanges), default=0)):
            _send_round(tunnel, exchanges, clock, first=True)
        next_resend = start + RESEND_INTERVAL
        while not all_done():
            now = clock()
            if tunnel.flow.error:
                for exchange in exchanges:
                    if not exchange.done:
                        exchange.fail(Reason.socket_error, f"cannot send: {tunnel.flow.error}", now)
                break
            if now >= deadline:
                break
            if now >= next_resend:
                _send_round(tunnel, exchanges, clock)
                next_resend = now + RESEND_INTERVAL
            await waker.wait(min(next_resend, deadline) - now, all_done)
    finally:
        tunnel.listen(None)
        end = clock()
        for exchange in exchanges:
            exchange.end(end)
            exchange.close()
    return demux


def _send_round(tunnel: Tunnel, exchanges: list[Exchange], clock: Callable[[], float], *, first: bool = False) -> None:
    """One more probe for every exchange still waiting (at the start: up to each one's `wanted`)."""
    for exchange in exchanges:
        if exchange.done or (first and exchange.sequence >= exchange.wanted):
            continue
        now = clock()
        try:
            packet = exchange.next_probe(now)
        except Exception as exc:  # a stage that cannot even build its probe: its bug, not the relay's fault
            exchange.fail(Reason.internal_error, f"{type(exc).__name__}: {exc}", now)
            continue
        tunnel.send(packet)
