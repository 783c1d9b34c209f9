"""`--junit FILE`: the report as JUnit XML, the format CI systems read (Jenkins, GitLab, GitHub Actions reporters).

One testsuite; one testcase per deployed server (classname `wgprobe.verify.<location>`, name the server): passed
is an empty testcase, failed has a `<failure>` with the reason, stage and failed paths, inconclusive an `<error>`
(the test could not run: not the server's fault, and never a pass), unfinished a `<skipped>` (the run stopped at
another server's failure). The baseline comparison, when asked, is one more testcase. ElementTree escapes the
text; control characters, which XML 1.0 cannot carry at all, are shown escaped by `clean` first.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from probe.errors import ConfigError
from probe.term import clean, clean_lines
from probe.verify.judge import Verdict
from probe.verify.render import evidence_lines, grouped_paths
from probe.verify.report import ServerReport, VerifyReport

SUITE = "probe verify"


def check_writable(path: Path) -> None:
    """Refuse a --junit FILE that cannot be written before verifying, not after.

    A symlink is followed (the report goes where it points); an existing FIFO or character device (/dev/stdout, a
    named pipe a CI step reads) is written into as it is, never replaced: renaming a file over it would, as root,
    destroy the device node. Anything else that is not a regular file is refused."""
    target = _target(path)
    if target.is_dir():
        raise ConfigError(f"--junit {clean(path)}: is a directory")
    if target.exists() and not target.is_file():
        if _streamed(target):
            if not os.access(target, os.W_OK):
                raise ConfigError(f"--junit {clean(path)}: not writable")
            return
        raise ConfigError(f"--junit {clean(path)}: not a regular file, a FIFO or a character device")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--junit {clean(path)}: cannot write in {clean(parent)} (missing or not writable)")


def _target(path: Path) -> Path:
    """Where the report goes: the end of a symlink chain (a dangling link's target is created)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _streamed(target: Path) -> bool:
    mode = target.stat().st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _seconds(server: ServerReport, report: VerifyReport) -> str:
    end = server.decided_at or report.finished_at
    return f"{max(0.0, (end - report.started_at).total_seconds()):.3f}"


def _paths_text(server: ServerReport) -> str:
    lines = [server.summary, *grouped_paths(server.failed_paths), *evidence_lines(server.evidence)]
    return clean_lines("\n".join(lines))


def _testcase(suite: ET.Element, server: ServerReport, report: VerifyReport) -> str | None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=clean(f"wgprobe.verify.{server.location or 'relays'}"),
        name=clean(server.server),
        time=_seconds(server, report),
    )
    if server.verdict is Verdict.failed:
        failure = ET.SubElement(
            case, "failure", message=clean(f"{server.stage}: {server.reason}"), type=str(server.reason)
        )
        failure.text = _paths_text(server)
        return "failures"
    if server.verdict is Verdict.inconclusive:
        error = ET.SubElement(case, "error", message=clean(server.summary), type="inconclusive")
        error.text = _paths_text(server)
        return "errors"
    if server.verdict is Verdict.unfinished:
        ET.SubElement(case, "skipped", message=clean(f"not finished: the run stopped at a failure ({server.summary})"))
        return "skipped"
    return None


def to_xml(report: VerifyReport) -> bytes:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.Element("testsuites", name=SUITE)
    suite = ET.SubElement(
        root,
        "testsuite",
        name=SUITE,
        timestamp=report.started_at.strftime("%Y-%m-%dT%H:%M:%S"),
        hostname=clean(socket.gethostname()),
        time=f"{report.duration_seconds:.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("verdict", report.verdict),
        ("exit_code", str(report.exit_code)),
        ("mode", report.mode),
        ("vantage_points", ", ".join(report.vantage_points)),
        ("summary", report.summary),
    ):
        ET.SubElement(properties, "property", name=name, value=clean(value))
    for server in report.servers:
        if server.group != "verified":
            continue
        counts["tests"] += 1
        kind = _testcase(suite, server, report)
        if kind:
            counts[kind] += 1
    if report.baseline is not None:
        counts["tests"] += 1
        case = ET.SubElement(suite, "testcase", classname="wgprobe.verify.baseline", name="baseline control", time="0")
        if report.baseline.verdict is Verdict.failed:
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=clean(report.baseline.detail), type="baseline")
        elif report.baseline.verdict is not Verdict.passed:
            counts["errors"] += 1
            ET.SubElement(case, "error", message=clean(report.baseline.detail), type="inconclusive")
    for element in (root, suite):
        for key, count in counts.items():
            element.set(key, str(count))
    root.set("time", f"{report.duration_seconds:.3f}")
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def write_junit(path: Path, report: VerifyReport) -> None:
    """Written whole or not at all: a temporary file beside it, renamed over it. A FIFO or character device is
    written into as it is (see `check_writable`)."""
    data = to_xml(report)
    target = _target(path)
    try:
        if target.exists() and _streamed(target):
            with target.open("wb") as out:
                out.write(data)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"--junit {clean(path)}: cannot write: {exc.strerror or exc}") from None
