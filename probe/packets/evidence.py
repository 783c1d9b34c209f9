"""Evidence of failed probes: pcap files and human-readable dissection.

scapy is imported inside `dissect` only: it takes about half a second to import and 200 to 1200 us per packet,
which the hot path cannot afford (DESIGN.md), while evidence is written rarely, after a probe has already
failed. The pcap writer needs no scapy at all: the classic libpcap format is a 24-byte file header and a
16-byte header per record (https://wiki.wireshark.org/Development/LibpcapFileFormat).
"""

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

from probe.inputs import InputError, read_regular_file
from probe.packets.errors import EvidenceError

# LINKTYPE_RAW (101, https://www.tcpdump.org/linktypes.html): each record is a bare IPv4 or IPv6 packet, told
# apart by the version nibble, which is exactly what comes out of a WireGuard tunnel.
LINKTYPE_RAW: Final = 101
_PCAP_MAGIC: Final = 0xA1B2C3D4  # microsecond timestamps
_SNAPLEN: Final = 65535
_FILE_HEADER: Final = struct.Struct("<IHHiIII")
_RECORD_HEADER: Final = struct.Struct("<IIII")
PCAP_HEADER_SIZE: Final = _FILE_HEADER.size
# Evidence files are capped when written (probe.evidence); this only keeps `probe dissect` off a runaway file.
MAX_READ: Final = 256 * 1024 * 1024


class Pcap(NamedTuple):
    content: bytes
    packets: int  # records written
    left_out: int  # records past the cap, not written


def pcap_capped(packets: Iterable[tuple[float, bytes]], max_bytes: int | None = None) -> Pcap:
    """A pcap file, in memory, of (unix timestamp, raw IP packet) records: the first ones that fit in `max_bytes`
    (no cap when None), and how many were left out after them."""
    parts = [_FILE_HEADER.pack(_PCAP_MAGIC, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_RAW)]
    size, written, left_out = PCAP_HEADER_SIZE, 0, 0
    for timestamp, packet in packets:
        captured = packet[:_SNAPLEN]
        if left_out or (max_bytes is not None and size + _RECORD_HEADER.size + len(captured) > max_bytes):
            left_out += 1  # keep the first packets: a failure shows how it started
            continue
        seconds, micros = divmod(round(timestamp * 1_000_000), 1_000_000)
        parts.append(_RECORD_HEADER.pack(seconds, micros, len(captured), len(packet)))
        parts.append(captured)
        size += _RECORD_HEADER.size + len(captured)
        written += 1
    return Pcap(b"".join(parts), written, left_out)


def pcap_bytes(packets: Iterable[tuple[float, bytes]]) -> bytes:
    """A complete pcap file, in memory, of (unix timestamp, raw IP packet) records."""
    return pcap_capped(packets).content


def write_private(fd: int, content: bytes) -> None:
    """Write all of `content` to a file opened for writing, made mode 0640 whatever the umask: evidence holds what a
    relay said to a probe, for the people on call (the group), not for every local user."""
    os.fchmod(fd, 0o640)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]


def write_pcap(path: str | Path, packets: Iterable[tuple[float, bytes]], *, max_bytes: int | None = None) -> Pcap:
    """Write (unix timestamp, raw IP packet) records to `path`, mode 0640: a pcap readable by tcpdump, tshark,
    scapy; with `max_bytes`, the first records that fit. Returns what was written."""
    try:
        pcap = pcap_capped(packets, max_bytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        try:
            write_private(fd, pcap.content)
        finally:
            os.close(fd)
    except (OSError, struct.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EvidenceError(f"cannot write pcap {path}: {reason}") from None
    except ValueError:  # a NUL byte in the path
        raise EvidenceError(f"cannot write pcap {path!r}: the path holds a NUL byte") from None
    return pcap


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


class PcapRecords(NamedTuple):
    records: list[tuple[float, bytes]]
    problem: str | None  # what cut the file short (a truncated record), after the records that could be read


def scan_pcap(path: str | Path) -> PcapRecords:
    """The (unix timestamp, raw IP packet) records of a pcap written by `write_pcap`, and what went wrong after them.

    EvidenceError when nothing can be read (no file, not a regular file, not a raw-IP pcap, a truncated header); a
    file cut short in its records (a disk that filled up, a copy that stopped) gives the records before the cut and
    says where it was.
    """
    try:
        data = read_regular_file(path, max_bytes=MAX_READ)
    except InputError as exc:
        raise EvidenceError(f"cannot read pcap {path}: {exc}") from None
    if len(data) < _FILE_HEADER.size:
        raise EvidenceError(f"{path}: too short for a pcap file ({len(data)} bytes, the header alone is 24)")
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = _FILE_HEADER.unpack_from(data)
    if magic != _PCAP_MAGIC or linktype != LINKTYPE_RAW:
        raise EvidenceError(f"{path}: not a raw-IP pcap as wgprobe writes (magic {magic:#x}, link type {linktype})")
    records: list[tuple[float, bytes]] = []
    offset = _FILE_HEADER.size
    while offset < len(data):
        if offset + _RECORD_HEADER.size > len(data):
            return PcapRecords(records, f"truncated record header at byte {offset}")
        seconds, micros, captured, _length = _RECORD_HEADER.unpack_from(data, offset)
        if offset + _RECORD_HEADER.size + captured > len(data):
            return PcapRecords(records, f"truncated record at byte {offset}")
        offset += _RECORD_HEADER.size
        records.append((seconds + micros / 1_000_000, data[offset : offset + captured]))
        offset += captured
    return PcapRecords(records, None)


def read_pcap(path: str | Path) -> list[tuple[float, bytes]]:
    """The records of a pcap written by `write_pcap`; EvidenceError for anything else, a truncated record included."""
    records, problem = scan_pcap(path)
    if problem is not None:
        raise EvidenceError(f"{path}: {problem}")
    return records
