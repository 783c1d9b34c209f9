"""`probe verify` put together: options in, a source, the verifier and the session run, the report printed (and
written as JUnit). `execute` is what the command runs, and what tests run in-process against a simulated fleet.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from probe.config import ProbeConfig
from probe.inventory import Inventory, Relay
from probe.term import Style, clean
from probe.verify.baseline import Thresholds
from probe.verify.direct import DEFAULT_CONCURRENCY, DirectSource
from probe.verify.judge import Rules, ServerJudgement, Verdict
from probe.verify.render import decided_line, render, stamp, summary_line
from probe.verify.report import VerifyReport, build_report
from probe.verify.session import Session, Soak
from probe.verify.source import Source
from probe.verify.verifier import PassResult, Verifier

STOPPING = (signal.SIGINT, signal.SIGTERM)

BASELINE_CONCURRENCY = 4  # servers probed at once under --baseline (see execute)


@dataclass(frozen=True)
class Options:
    rules: Rules = field(default_factory=Rules)
    soak: Soak | None = None
    thresholds: Thresholds | None = None  # the baseline comparison, when asked
    keep_going: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    json_out: bool = False
    junit: Path | None = None
    timeout: float | None = None  # --aggregator: seconds a pass waits for the agents' answers


class Printer:
    """Lines as verdicts come: to stdout for people, to stderr when stdout carries the JSON object."""

    def __init__(self, source: Source, options: Options, out: TextIO, err: TextIO) -> None:
        self.source = source
        self.options = options
        self.stream = err if options.json_out else out
        self.style = Style(self.stream)
        self.pass_number = 1

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def decided(self, judgement: ServerJudgement) -> None:
        if judgement.group != "verified":
            return
        # In a soak, passing servers are listed once; failures and verdicts that could not be reached always.
        if judgement.verdict is Verdict.passed and self.pass_number > 1:
            return
        self.say(decided_line(judgement, self.source.describe(), self.style))

    def passed(self, result: PassResult) -> None:
        self.pass_number = result.number + 1
        if self.options.soak is None:
            return
        counts = ", ".join(
            f"{n} {verdict}" for verdict, n in Counter(j.verdict for j in result.group("verified")).items()
        )
        self.say(f"soak pass {result.number} at {stamp(result.started_at)}: {result.verdict} ({counts})")


async def execute(
    config: ProbeConfig | None,
    inventory: Inventory,
    verified: list[Relay],
    control: list[Relay],
    options: Options,
    *,
    source: Source | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> VerifyReport:
    """Verify `verified` (compared with `control` when options.thresholds is set), print, write JUnit. Without a
    `source`, this host probes with `config` (the direct mode)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if source is None:
        if config is None:
            raise ValueError("execute: give a source, or the agent config to probe from this host with")
        # A round trip measured while this host juggles many paths is mostly its own event loop's queue: the
        # baseline wants the network's, so it probes fewer servers at once.
        cap = BASELINE_CONCURRENCY if options.thresholds is not None else options.concurrency
        source = DirectSource(config, inventory, concurrency=min(options.concurrency, cap))
    printer = Printer(source, options, out, err)
    printer.say(
        f"verifying {len(verified)} server(s) from {clean(source.describe())}"
        + (f" against a control group of {len(control)}" if control else "")
        + f": {options.rules.describe()}"
    )
    verifier = Verifier(source, options.rules, keep_going=options.keep_going, on_decided=printer.decided)
    session = Session(
        verifier,
        verified,
        control if options.thresholds is not None else (),
        soak=options.soak,
        thresholds=options.thresholds,
        on_pass=printer.passed,
    )
    # SIGINT (Ctrl-C) and SIGTERM (a CI job cancelled) end the verification with a report, JSON and JUnit of what
    # was judged so far: inconclusive, or failed if a server had failed; never passed.
    loop = asyncio.get_running_loop()
    for signum in STOPPING:
        loop.add_signal_handler(signum, verifier.interrupt)
    try:
        result = await session.run()
    finally:
        for signum in STOPPING:
            loop.remove_signal_handler(signum)
        await source.close()
    if result.interrupted:
        print("interrupted: judging what was seen so far", file=err, flush=True)
    thresholds = options.thresholds
    report = build_report(
        result,
        rules=options.rules,
        mode=source.mode,
        vantage_points=source.vantage_points(),
        locations={relay.name: relay.location for relay in (*verified, *control)},
        summary=summary_line(result),
        max_rtt_increase=thresholds.max_rtt_increase if thresholds else None,
        max_success_drop=thresholds.max_success_drop if thresholds else None,
    )
    junit_error = None
    if options.junit is not None:
        from probe.errors import EXIT_OK, EXIT_USAGE, ConfigError
        from probe.verify.junit import write_junit

        try:
            write_junit(options.junit, report)
        except ConfigError as exc:
            # The verdict must still decide the exit: a failed or inconclusive run stays 1 or 3 (a pipeline must
            # stop), a verified one becomes a usage error (the CI asked for a file it does not get).
            junit_error = exc
            if report.exit_code == EXIT_OK:
                report = report.model_copy(update={"exit_code": EXIT_USAGE})
    if options.json_out:
        print(report.model_dump_json(), file=out, flush=True)
    else:
        print(render(report, source.describe()), file=out, flush=True)
    if junit_error is not None:
        print(f"error: {junit_error}", file=err, flush=True)
    return report
