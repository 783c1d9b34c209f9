"""What `probe verify` prints for people: a line per server the moment its verdict is certain, and a summary at the
end (what failed, at which stage, on which paths, from which vantage point, with the evidence files). Every name
and detail that came from outside goes through `probe.term.clean`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from probe.term import Style, clean, table
from probe.verify.judge import ServerJudgement, Verdict
from probe.verify.report import GroupReport, PathReport, VerifyReport
from probe.verify.session import SessionResult

MAX_EVIDENCE_LINES = 4  # result files listed per server; the JSON has every file


def stamp(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%H:%M:%S.%f")[:-3] + "Z"


def decided_line(judgement: ServerJudgement, vantage: str, style: Style) -> str:
    """The line printed the moment a deployed server's verdict is certain."""
    name = clean(judgement.server)
    verdict = judgement.verdict
    text = clean(judgement.summary())
    if verdict is Verdict.failed:
        return f"{style.red('FAILED')} {name} at {text}, from {clean(vantage)}"
    if verdict is Verdict.passed:
        return f"{style.green('ok')} {name}: {text}"
    return f"{style.yellow('INCONCLUSIVE')} {name}: {text}"


def grouped_paths(paths: Sequence[PathReport]) -> list[str]:
    """Failed paths by stage and reason, ports by family: one line per way of failing, however many ports."""
    groups: dict[tuple[str, str], dict[str, list[str]]] = {}
    details: dict[tuple[str, str], str] = {}
    for path in paths:
        key = (str(path.stage), str(path.reason))
        ports = groups.setdefault(key, {}).setdefault(path.family, [])
        if f":{path.port}" not in ports:
            ports.append(f":{path.port}")
        if path.detail and key not in details:
            details[key] = path.detail
    lines = []
    for (stage, reason), families in groups.items():
        where = "; ".join(f"{family} {' '.join(ports)}" for family, ports in families.items())
        detail = f" - {clean(details[(stage, reason)])}" if (stage, reason) in details else ""
        lines.append(f"{stage}: {reason} on {where}{detail}")
    return lines


def evidence_lines(evidence: Sequence[str]) -> list[str]:
    """The result files (each names its paths' pcaps), and how many pcaps: every file is in --json."""
    results = [item for item in evidence if item.endswith(".json")]
    pcaps = len(evidence) - len(results)
    lines = [f"evidence: {clean(item)}" for item in results[:MAX_EVIDENCE_LINES]]
    if len(results) > MAX_EVIDENCE_LINES:
        lines.append(f"evidence: ... {len(results) - MAX_EVIDENCE_LINES} more result file(s)")
    if pcaps:
        lines.append(f"evidence: {pcaps} pcap(s) of the failed paths beside them (all in --json)")
    return lines


def summary_line(result: SessionResult) -> str:
    verified = result.last.group("verified")
    failed = [j for j in verified if j.verdict is Verdict.failed]
    verdict = result.verdict
    if verdict is Verdict.failed and failed:
        names = ", ".join(f"{j.server} ({j.stage}: {j.reason})" for j in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        unfinished = sum(1 for j in verified if not j.verdict.certain)
        stopped = f"; stopped there, {unfinished} not finished (--keep-going judges all)" if unfinished else ""
        return f"FAILED: {len(failed)} of {len(verified)} server(s) failed: {names}{more}{stopped}"
    if verdict is Verdict.failed and result.comparison is not None:
        return f"FAILED: the deployed servers are {result.comparison.detail}"
    if verdict is Verdict.inconclusive:
        open_ = [j.server for j in verified if j.verdict is not Verdict.passed]
        why = ["interrupted"] if result.interrupted else []
        if open_:
            why.append(f"{len(open_)} server(s) not judged ({', '.join(open_[:10])})")
        if result.soak is not None and result.unjudged_count:
            why.append(f"{result.unjudged_count} pass(es) could not judge")
        if result.comparison is not None and result.comparison.verdict is not Verdict.passed:
            why.append(f"baseline: {result.comparison.detail}")
        return "INCONCLUSIVE: " + ("; ".join(why) or "nothing could be judged")
    soaked = f", soaked over {result.passes} passes" if result.soak else ""
    return f"VERIFIED: {len(verified)} server(s) passed every path{soaked}"


def render(report: VerifyReport, source: str) -> str:
    style = Style()
    lines = [f"probe verify: {len(report.servers)} server(s) from {clean(source)}, {report.mode}"]
    rows = []
    for server in report.servers:
        if server.group != "verified":
            continue
        verdict = {
            Verdict.passed: style.green("passed"),
            Verdict.failed: style.red("FAILED"),
        }.get(server.verdict, style.yellow(str(server.verdict)))
        rows.append(
            [clean(server.server), verdict, str(server.stage or "-"), str(server.reason or "-"), clean(server.summary)]
        )
    lines.append(table(("server", "verdict", "stage", "reason", "how"), rows))
    for server in report.servers:
        if server.verdict is not Verdict.failed or server.group != "verified":
            continue
        lines.append(f"{clean(server.server)} failed from {clean(', '.join(server.vantage_points))}:")
        lines.extend(f"  {line}" for line in grouped_paths(server.failed_paths))
        lines.extend(f"  {line}" for line in evidence_lines(server.evidence))
    lines.extend(_soak_lines(report))
    lines.extend(_baseline_lines(report))
    colour = {"verified": style.green, "failed": style.red}.get(report.verdict, style.yellow)
    lines.append(colour(clean(report.summary)) + f" (exit {report.exit_code})")
    return "\n".join(lines)


def _soak_lines(report: VerifyReport) -> list[str]:
    soak = report.soak
    if soak is None:
        return []
    lines = [f"soak: {soak.passes} pass(es) over {soak.duration_seconds:g} s, one every {soak.every_seconds:g} s"]
    for server in report.servers:
        if server.group == "verified" and server.failed_at is not None:
            into = (server.failed_at - report.started_at).total_seconds()
            lines.append(
                f"  {clean(server.server)} went down during the soak: verified ok at {stamp(server.last_ok_at)}, "
                f"failed at {stamp(server.failed_at)} ({into:.1f} s into the soak)"
            )
    if soak.unjudged_count:
        times = ", ".join(stamp(t) for t in soak.unjudged_passes)
        lines.append(f"  {soak.unjudged_count} pass(es) could not judge, starting at {times}")
    return lines


def _baseline_lines(report: VerifyReport) -> list[str]:
    baseline = report.baseline
    if baseline is None:
        return []

    def group(name: str, stats: GroupReport) -> str:
        ratio = "-" if stats.success_ratio is None else f"{stats.success_ratio:.1%}"
        rtt = "-" if stats.median_rtt_seconds is None else f"{stats.median_rtt_seconds * 1000:.1f} ms"
        return f"  {name}: {len(stats.servers)} server(s), {stats.paths} paths, success {ratio}, median RTT {rtt}"

    return [
        f"baseline: {baseline.verdict}: {clean(baseline.detail)}",
        group("deployed", baseline.canary),
        group("control ", baseline.control) + f" ({clean(', '.join(baseline.control.servers[:10]))})",
    ]
