"""probe.term's escaping of outside strings: every control character, DEL, C1 control and bidirectional override
shown as its escape, never passed to the terminal; nothing else touched."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from probe.term import clean, clean_lines

# The rule as a pattern, as it was written before the translation tables (one per function) replaced it.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
UNSAFE_KEEP_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def test_each_kind_of_unsafe_character_is_shown_as_its_escape() -> None:
    assert clean("a\x1b]0;title\x07b") == "a\\x1b]0;title\\x07b"
    assert clean("\x00\x7f\x85\x9f") == "\\x00\\x7f\\x85\\x9f"
    assert clean("abc\u202edcba\u2066\u200f") == "abc\\u202edcba\\u2066\\u200f"
    assert clean("line\n\tend") == "line\\x0a\\x09end"
    assert clean_lines("line\n\tend\r") == "line\n\tend\\x0d"
    assert clean("ok: é ✓ [/]") == "ok: é ✓ [/]"
    assert clean(12) == "12"


# Mostly the neighbourhoods of the unsafe ranges, so both sides of every bound are tried.
NEAR = st.sampled_from([*range(0x00, 0x22), *range(0x7E, 0xA2), *range(0x200C, 0x2011), *range(0x2028, 0x2070)])
TEXT = st.lists(st.one_of(NEAR.map(chr), st.characters()), max_size=40).map("".join)


@settings(deadline=None)  # a shared machine; the test is about output, not time
@given(TEXT)
def test_clean_escapes_exactly_the_unsafe_characters(text: str) -> None:
    assert clean(text) == UNSAFE.sub(escaped, text)
    assert clean_lines(text) == UNSAFE_KEEP_LINES.sub(escaped, text)
