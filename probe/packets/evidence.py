"""Evidence of failed probes: pcap files and human-readable dissection.

scapy is imported inside `dissect` only: it takes about half a second to import and 200 to 1200 us per packet,
which the hot path cannot afford (DESIGN.md), while evidence is written rarely, after a probe has already
failed. The pcap writer needs no scapy at all: the classic libpcap format is a 24-byte file header and a
16-byte header per record (https://wiki.wireshark.org/Development/LibpcapFileFormat).
"""

import struct
from pathlib import Path
from typing import Final

from probe.packets.errors import EvidenceError

# LINKTYPE_RAW (101, https://www.tcpdump.org/linktypes.html): each record is a bare IPv4 or IPv6 packet, told
# apart by the version nibble, which is exactly what comes out of a WireGuard tunnel.
LINKTYPE_RAW: Final = 101
_PCAP_MAGIC: Final = 0xA1B2C3D4  # microsecond timestamps
_SNAPLEN: Final = 65535
_FILE_HEADER: Final = struct.Struct("<IHHiIII")
_RECORD_HEADER: Final = struct.Struct("<IIII")


def pcap_bytes(packets: list[tuple[float, bytes]]) -> bytes:
    """A complete pcap file, in memory, of (unix timestamp, raw IP packet) records."""
    parts = [_FILE_HEADER.pack(_PCAP_MAGIC, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_RAW)]
    for timestamp, packet in packets:
        micros = round(timestamp * 1_000_000)
        seconds, micros = divmod(micros, 1_000_000)
        captured = packet[:_SNAPLEN]
        parts.append(_RECORD_HEADER.pack(seconds, micros, len(captured), len(packet)))
        parts.append(captured)
    return b"".join(parts)


def write_pcap(path: str | Path, packets: list[tuple[float, bytes]]) -> None:
    """Write (unix timestamp, raw IP packet) records to `path`: a pcap readable by tcpdump, tshark, scapy."""
    try:
        content = pcap_bytes(packets)
        Path(path).write_bytes(content)
    except (OSError, struct.error) as exc:
        raise EvidenceError(f"cannot write pcap {path}: {exc}") from exc


def dissect(packet: bytes) -> str:
    """A multi-line, human-readable dissection of a raw IP packet, headed by scapy's one-line summary.

    Never raises: evidence of a broken packet must not break the report about it, so anything scapy trips over
    ends up as a hex dump.
    """
    # Imported here, not at module level: `import probe.packets` must not pull in scapy.
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    version = packet[0] >> 4 if packet else 0
    layer = {4: IP, 6: IPv6}.get(version)
    if layer is None:
        return f"not an IP packet ({len(packet)} bytes): {packet.hex()}"
    try:
        parsed = layer(packet)
        return f"{parsed.summary()}\n{parsed.show(dump=True)}".rstrip()
    except Exception as exc:  # scapy is lenient, but a dissector bug must not hide the evidence
        return f"undecodable IPv{version} packet ({len(packet)} bytes, {exc!r}): {packet.hex()}"


def read_pcap(path: str | Path) -> list[tuple[float, bytes]]:
    """The (unix timestamp, raw IP packet) records of a pcap written by `write_pcap` (microsecond, LINKTYPE_RAW)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EvidenceError(f"cannot read pcap {path}: {exc.strerror or exc}") from exc
    if len(data) < _FILE_HEADER.size:
        raise EvidenceError(f"{path}: too short for a pcap file")
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = _FILE_HEADER.unpack_from(data)
    if magic != _PCAP_MAGIC or linktype != LINKTYPE_RAW:
        raise EvidenceError(f"{path}: not a raw-IP pcap as wgprobe writes (magic {magic:#x}, link type {linktype})")
    records = []
    offset = _FILE_HEADER.size
    while offset + _RECORD_HEADER.size <= len(data):
        seconds, micros, captured, _length = _RECORD_HEADER.unpack_from(data, offset)
        offset += _RECORD_HEADER.size
        if offset + captured > len(data):
            raise EvidenceError(f"{path}: truncated record at byte {offset}")
        records.append((seconds + micros / 1_000_000, data[offset : offset + captured]))
        offset += captured
    return records
