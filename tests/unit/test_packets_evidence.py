"""Evidence: pcap files that tshark and scapy read, readable dissections, and no scapy on the hot path."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.utils import rdpcap

from probe.packets import EvidenceError, build_icmp_echo, build_udp, dissect, packed, pcap_bytes, write_pcap

US4, TARGET4 = packed("10.64.0.2"), packed("1.1.1.1")
US6, TARGET6 = packed("fc00:bbbb:bbbb:bb01::2"), packed("2606:4700:4700::1111")
T0 = 1_700_000_000.25
PACKETS = [
    (T0, build_icmp_echo(US4, TARGET4, 0x1234, 1, b"ping")),
    (T0 + 0.5, build_icmp_echo(US6, TARGET6, 0x1234, 2, b"ping6")),
    (T0 + 1.000001, build_udp(US4, TARGET4, 50000, 7, b"udp-probe")),
]


def test_importing_the_codec_does_not_import_scapy() -> None:
    # scapy costs ~0.5 s to import (DESIGN.md); an agent probing hundreds of relays must not pay it to ping.
    code = "import probe.packets, sys; assert 'scapy' not in sys.modules, 'scapy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pcap_reads_back_in_scapy(tmp_path: Path) -> None:
    path = tmp_path / "failed-probe.pcap"
    write_pcap(path, PACKETS)
    # LINKTYPE_RAW records dissect as IPv4 or IPv6 by version nibble once scapy's inet6 layer is loaded.
    read = rdpcap(str(path))
    assert [float(packet.time) for packet in read] == pytest.approx([t for t, _ in PACKETS], abs=1e-6)
    assert [bytes(packet) for packet in read] == [raw for _, raw in PACKETS]
    assert (read[0][IP].dst, read[0][ICMP].id) == ("1.1.1.1", 0x1234)
    assert (read[1][IPv6].src, read[1][ICMPv6EchoRequest].seq) == ("fc00:bbbb:bbbb:bb01::2", 2)
    assert read[2][UDP].dport == 7


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_pcap_reads_in_tshark(tmp_path: Path) -> None:
    path = tmp_path / "failed-probe.pcap"
    path.write_bytes(pcap_bytes(PACKETS))
    result = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.protocols", "-e", "ip.dst", "-e", "ipv6.dst"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].split("\t")[:2] == ["raw:ip:icmp:data", "1.1.1.1"]
    assert lines[1].startswith("raw:ipv6:icmpv6") and lines[1].endswith("2606:4700:4700::1111")
    assert lines[2].startswith("raw:ip:udp")


def test_write_pcap_failure_is_an_evidence_error(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError):
        write_pcap(tmp_path / "missing-dir" / "x.pcap", PACKETS)


def test_dissect_names_the_fields_an_engineer_looks_for() -> None:
    text = dissect(build_icmp_echo(US4, TARGET4, 0x1234, 7, b"ping", ttl=33))
    first, *rest = text.splitlines()
    assert "10.64.0.2 > 1.1.1.1" in first and "echo-request" in first
    assert any("ttl" in line and "33" in line for line in rest)
    assert "IPv6" in dissect(PACKETS[1][1]).splitlines()[0]


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01", b"\x45garbage", b"\x60" + bytes(10)])
def test_dissect_never_raises_on_garbage(garbage: bytes) -> None:
    # The evidence of a broken packet is its bytes: they must survive into the report.
    text = dissect(garbage)
    assert text.startswith(("not an IP packet", "undecodable IPv"))
    assert text.endswith(garbage.hex())
