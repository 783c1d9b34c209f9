"""Errors raised by the packet codec.

The rule the codec keeps: any bytes handed to any parser give back a parsed value or a `PacketError`, never a
foreign exception (IndexError, struct.error, ValueError...). The fuzz tests in
tests/unit/test_packets_fuzz.py hold that line, so a stage can catch `PacketError` alone around a parse of
whatever came out of a tunnel.
"""

from probe.errors import WgProbeError


class PacketError(WgProbeError):
    """Bytes are not a well-formed packet: truncated, inconsistent lengths, unknown version, bad checksum.

    Builders raise it too when given values a header field cannot hold (an identifier above 65535, an address
    that is neither 4 nor 16 bytes), so nothing foreign escapes the codec in either direction.
    """


class ChecksumError(PacketError):
    """The packet is well formed but a checksum over it does not verify (RFC 1071).

    A subclass rather than a flag so verifiers can tell corruption (`Mismatch.bad_checksum`) from garbage
    (`Mismatch.malformed`) while callers that do not care still catch `PacketError` alone.
    """


class IdsExhaustedError(WgProbeError):
    """Every identifier or port in an allocator's range is held by a running probe.

    Not a `PacketError`: nothing is wrong with any packet, the agent is running more concurrent probes than
    the range allows.
    """


class EvidenceError(WgProbeError):
    """Writing evidence (a pcap file of a failed probe) failed; wraps the OSError for one hierarchy."""
