"""What an idle pause costs: the same work (a result's JSON and its spool INSERT, what the agent's outbox does for
each result) done back to back, and each time after a pause as long as the gap between two relays' probes when
they are spread one by one (522 relays every 15 s: 28 ms). CPU time of the work alone, medians, and the ratio.

The reason the agent's relays start in slots (agents/schedule.py, SLOT_SECONDS): after a pause the core starts
cold (caches, clock), so spreading work thin costs more CPU than doing it in bursts. No root, no network:

    .venv/bin/python -m bench.bench_idle [--results 300] [--gap 0.028]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from agents.spool import Spool
from bench.common import report
from probe.aggregator.testing import make_result
from probe.messages import ResultMessage, result_topic

AGENT = "agent-a"


def one_pass(
    results: list[bytes], models: list[ResultMessage], gap: float, work: Path
) -> tuple[list[float], list[float]]:
    """CPU seconds of each JSON dump and each spool put, with `gap` seconds of sleep before each result."""
    dumps: list[float] = []
    puts: list[float] = []
    with Spool(work / "spool.sqlite", max_bytes=1 << 30, max_age_seconds=86400, now=time.time) as spool:
        held: list[int | None] = []
        for n, (payload, model) in enumerate(zip(results, models, strict=True)):
            if gap:
                time.sleep(gap)
            started = time.process_time()
            model.model_dump_json()
            dumps.append(time.process_time() - started)
            started = time.process_time()
            held.append(spool.put(result_topic(AGENT, f"se-got-wg-{n % 50:03d}"), payload, str(n)))
            puts.append(time.process_time() - started)
            if len(held) >= 7:  # acknowledged in batches, as the outbox's drain does
                spool.ack(i for i in held if i is not None)
                held = []
    return dumps, puts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.028, help="seconds of pause before each result (28 ms)")
    args = parser.parse_args()
    models = [
        make_result(f"se-got-wg-{n % 50:03d}", AGENT, taken_at=time.time(), round=n, ports=(51820, 4000, 5000))
        for n in range(args.results)
    ]
    payloads = [m.model_dump_json().encode() for m in models]
    figures: dict[str, object] = {"results": args.results, "gap_seconds": args.gap}
    for name, gap in (("back_to_back", 0.0), ("after_gap", args.gap)):
        with tempfile.TemporaryDirectory(prefix="wgprobe-bench-idle-") as tmp:
            dumps, puts = one_pass(payloads, models, gap, Path(tmp))
        figures[f"{name}_json_us_median"] = 1e6 * statistics.median(dumps)
        figures[f"{name}_put_us_median"] = 1e6 * statistics.median(puts)
    for what in ("json", "put"):
        after, hot = figures[f"after_gap_{what}_us_median"], figures[f"back_to_back_{what}_us_median"]
        assert isinstance(after, float) and isinstance(hot, float)
        figures[f"{what}_after_gap_over_back_to_back"] = after / hot
    report("idle", figures)


if __name__ == "__main__":
    main()
