"""The agent's outbox alone: CPU per result of `put_result`, the spool and the drain through paho to a real mosquitto,
with results arriving as the agent's probes end at the Mullvad list's size (~35 a second, one every 28 ms).

The part of `bench_agent`'s figure that is the agent's own and not the engine's, measured without the fleet, so a
change to the spool or the drain shows above the noise of a shared machine. This process on CPU 0, the broker on
CPU 1. CPU is this process's (user + system) while the results are put and delivered, less what the idle event loop
spends in the same time (measured just before). Several runs, median. The results are made before the clock
starts. To compare with another checkout, run this file with that checkout first on PYTHONPATH, from its directory:

    .venv/bin/python -m bench.bench_outbox [--results 300] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agents.outbox import MqttOutbox
from agents.spool import Spool
from bench.common import report
from probe.aggregator.testing import make_result
from tests.integration.broker import Mosquitto

AGENT = "agent-a"
RATE = 35.0  # results a second: 522 relays every 15 s
OUTBOX_CPU, BROKER_CPU = 0, 1


async def one_run(work: Path, results: int) -> float:
    """Microseconds of CPU per result, idle loop's share taken off."""
    os.sched_setaffinity(0, {BROKER_CPU})  # the broker inherits it
    broker = Mosquitto(work / "broker")
    broker.start()
    os.sched_setaffinity(0, {OUTBOX_CPU})
    try:
        broker.add_user(AGENT)
        messages = [
            make_result(f"se-got-wg-{n % 50:03d}", AGENT, taken_at=time.time(), round=n, ports=(51820, 4000, 5000))
            for n in range(results)
        ]
        with Spool(work / "spool.sqlite", max_bytes=1 << 26, max_age_seconds=86400, now=time.time) as spool:
            outbox = MqttOutbox(broker.section(AGENT), AGENT, spool)
            task = asyncio.ensure_future(outbox.run())
            while not outbox.stats().connected:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.sleep(2.0)
            idle = (time.process_time() - cpu) / (time.monotonic() - wall)
            cpu, wall = time.process_time(), time.monotonic()
            for message in messages:
                outbox.put_result(message)
                await asyncio.sleep(1 / RATE)
            while outbox.stats().pending:
                await asyncio.sleep(0.01)
            spent, elapsed = time.process_time() - cpu, time.monotonic() - wall
            delivered = outbox.stats().delivered
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if delivered != results:
            sys.exit(f"{delivered} of {results} results delivered")
        return 1e6 * (spent - idle * elapsed) / results
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    samples = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="wgprobe-bench-outbox-") as tmp:
            samples.append(asyncio.run(one_run(Path(tmp), args.results)))
        print(f"{samples[-1]:.0f} us per result", flush=True)
    linger = inspect.signature(MqttOutbox).parameters.get("linger")
    print(f"median {statistics.median(samples):.0f} us per result (runs: {', '.join(f'{s:.0f}' for s in samples)})")
    where = Path(inspect.getfile(MqttOutbox))
    print(f"outbox linger: {'none' if linger is None else linger.default} s; code from {where}")
    report(
        "outbox",
        {
            "results_per_run": args.results,
            "results_per_second": RATE,
            "cpu_us_per_result_median": statistics.median(samples),
            "cpu_us_per_result_runs": samples,
            "linger_seconds": None if linger is None else linger.default,
        },
    )


if __name__ == "__main__":
    main()
