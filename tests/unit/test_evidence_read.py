"""Reading back evidence pcaps (for `probe dissect`): what write_pcap wrote comes back intact; anything else is a
clear EvidenceError, never a foreign exception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.packets import EvidenceError, build_icmp_echo, read_pcap, write_pcap
from probe.packets.evidence import PcapRecords, scan_pcap

REPO = Path(__file__).resolve().parents[2]


def test_read_pcap_returns_what_write_pcap_wrote(tmp_path: Path) -> None:
    packets = [
        (1_700_000_000.25, build_icmp_echo("10.64.0.2", "198.18.0.2", 7, 1, b"abc")),
        (1_700_000_000.5, build_icmp_echo("fc00:bbbb:bbbb:bb01::2", "fd77:7770::2", 7, 2, b"defg")),
    ]
    path = tmp_path / "e.pcap"
    write_pcap(path, packets)
    back = read_pcap(path)
    assert [p for _, p in back] == [p for _, p in packets]
    assert [round(t, 6) for t, _ in back] == [t for t, _ in packets]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x00" * 24, "not a raw-IP pcap"),
    ],
)
def test_read_pcap_rejects_what_is_not_evidence(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(EvidenceError, match=message):
        read_pcap(path)


def test_read_pcap_rejects_a_truncated_record(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    write_pcap(path, [(1.0, build_icmp_echo("10.64.0.2", "198.18.0.2", 7, 1, b"abc"))])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(EvidenceError, match="truncated"):
        read_pcap(path)


def test_read_pcap_of_a_missing_file_is_an_evidence_error(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="cannot read"):
        read_pcap(tmp_path / "nope.pcap")


def test_scan_pcap_keeps_the_records_before_a_cut(tmp_path: Path) -> None:
    packets = [(1.0, build_icmp_echo("10.64.0.2", "198.18.0.2", 7, n, b"abc")) for n in range(3)]
    path = tmp_path / "cut.pcap"
    write_pcap(path, packets)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])
    assert scan_pcap(path) == PcapRecords(packets[:2], f"truncated record at byte {len(whole) - 16 - 31}")
    path.write_bytes(whole[: -31 - 8])  # a cut inside the last record's 16-byte header
    assert scan_pcap(path) == PcapRecords(packets[:2], f"truncated record header at byte {len(whole) - 16 - 31}")
    with pytest.raises(EvidenceError, match="truncated record header"):
        read_pcap(path)  # read_pcap wants all of it


@pytest.mark.parametrize(("special", "reason"), [("/dev/zero", "character device"), ("fifo", "FIFO")])
def test_read_pcap_refuses_what_is_not_a_file(tmp_path: Path, special: str, reason: str) -> None:
    path = tmp_path / "x.pcap"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(special)
    with pytest.raises(EvidenceError, match=f"cannot read pcap {path}: is a {reason}"):
        read_pcap(path)


def _dissect(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "probe", "dissect", *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dissect_reports_each_bad_file_and_goes_on(tmp_path: Path) -> None:
    packet = build_icmp_echo("10.64.0.2", "198.18.0.2", 7, 1, b"abc")
    good, cut, header, garbage, missing, last = (
        tmp_path / name for name in ("good.pcap", "cut.pcap", "header.pcap", "garbage.pcap", "missing.pcap", "z.pcap")
    )
    for path in (good, cut, last):
        write_pcap(path, [(1.0, packet), (2.0, packet)])
    cut.write_bytes(cut.read_bytes()[:-5])
    header.write_bytes(good.read_bytes()[:10])
    garbage.write_bytes(b"\x00" * 64)
    done = _dissect(good, cut, header, garbage, missing, last)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # Two packets from the good file, the one before the cut, two from the last file.
    assert sum(line.startswith("-- #") for line in done.stdout.splitlines()) == 5
    assert f"== {good}: 2 packet(s)" in done.stdout and f"== {last}: 2 packet(s)" in done.stdout
    assert f"== {cut}: 1 packet(s)" in done.stdout
    errors = done.stderr.splitlines()
    assert errors == [
        f"error: {cut}: truncated record at byte {24 + 16 + len(packet)}; the 1 packet(s) before it are shown",
        f"error: {header}: too short for a pcap file (10 bytes, the header alone is 24)",
        f"error: {garbage}: not a raw-IP pcap as wgprobe writes (magic 0x0, link type 0)",
        f"error: cannot read pcap {missing}: No such file or directory",
    ]


def test_dissect_of_good_files_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "good.pcap"
    write_pcap(path, [(1.0, build_icmp_echo("10.64.0.2", "198.18.0.2", 7, 1, b"abc"))])
    done = _dissect(path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
