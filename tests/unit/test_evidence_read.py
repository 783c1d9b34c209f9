"""Reading back evidence pcaps (for `probe dissect`): what write_pcap wrote comes back intact; anything else is a
clear EvidenceError, never a foreign exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.packets import EvidenceError, build_icmp_echo, read_pcap, write_pcap


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
