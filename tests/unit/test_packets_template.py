"""Echo templates: the packets they build are the codec's, byte for byte, and so are the replies they predict."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.packets import EchoTemplate, PacketError, build_icmp_echo, parse_icmp, parse_ip


def without_ip_id(packet: bytes) -> bytes:
    """An IPv4 packet less its identification and header checksum (a per-process counter changes them)."""
    return packet[:4] + packet[6:10] + packet[12:] if packet[0] >> 4 == 4 else packet


FAMILIES = [("10.64.0.2", "198.18.0.2"), ("fc00:bbbb:bbbb:bb01::2", "fd77:7770::2")]


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(seq=st.integers(0, 0xFFFF), pad=st.sampled_from([0, 2, 14, 1240]), df=st.booleans())
def test_template_builds_what_the_codec_builds(src: str, dst: str, seq: int, pad: int, df: bool) -> None:
    template = EchoTemplate(src, dst, 4242, os.urandom(8), pad=pad, df=df)
    packet = template.build(seq)
    expected = build_icmp_echo(src, dst, 4242, seq, template.payload(seq), df=df)
    assert without_ip_id(packet) == without_ip_id(expected)
    echo = parse_icmp(parse_ip(packet))  # checksums verify
    assert (echo.sequence, echo.payload) == (seq, template.payload(seq))  # type: ignore[union-attr]


@pytest.mark.parametrize(("src", "dst"), FAMILIES)
@given(seq=st.integers(0, 0xFFFF), pad=st.sampled_from([0, 14, 1240]))
def test_template_predicts_the_reply_byte_for_byte(src: str, dst: str, seq: int, pad: int) -> None:
    template = EchoTemplate(src, dst, 4242, os.urandom(8), pad=pad)
    reply = build_icmp_echo(dst, src, 4242, seq, template.payload(seq), reply=True)
    assert parse_ip(reply).payload == template.reply(seq)
    assert template.reply(seq) != template.reply((seq + 1) & 0xFFFF)


def test_template_head_must_keep_the_sequence_word_aligned() -> None:
    with pytest.raises(PacketError, match="even"):
        EchoTemplate("10.64.0.2", "198.18.0.2", 1, b"odd")
