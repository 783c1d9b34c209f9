"""What the commands print: plain tables, colour when a terminal wants it, and outside strings made harmless.

Hostnames, labels, locations and HTTP reasons come from inventories and relays nobody here controls. Printed as
they are, an ESC or OSC sequence in a hostname would set the terminal's title or worse, so every such string goes
through `clean`, which shows control characters as visible escapes. Nothing here interprets markup either: a label
`[/]` is just three characters. (A rich-text library was used before; besides its markup pitfalls it cost a
tenth of a second of start-up per command.)
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import TextIO

# C0 controls, DEL, C1 controls, and the Unicode bidirectional overrides that can make text read backwards, each
# shown as its escape. A translation table rather than a pattern: compiling the pattern was ~2 M instructions of
# every command's start-up.
_UNSAFE_CODES = (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNSAFE = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNSAFE_CODES}
# For error messages: newlines and tabs kept.
_UNSAFE_KEEP_LINES = {code: shown for code, shown in _UNSAFE.items() if code not in (0x09, 0x0A)}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean(text: object) -> str:
    """`text` as a string safe for a terminal: control characters shown as \\xNN, never acted on."""
    return str(text).translate(_UNSAFE)


def clean_lines(text: object) -> str:
    """As `clean`, but newlines and tabs stay (for multi-line messages of our own that quote outside strings)."""
    return str(text).translate(_UNSAFE_KEEP_LINES)


class Style:
    """ANSI colours when writing to a terminal and NO_COLOR is not set (https://no-color.org/)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None) -> str:
    """Rows under a header, columns padded to their widest cell. Cells must already be `clean`ed (they may carry
    this module's colours, which take no width)."""
    widths = [visible_len(c) for c in columns]
    for row in rows:
        for n, cell in enumerate(row):
            widths[n] = max(widths[n], visible_len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell + " " * (widths[n] - visible_len(cell)) for n, cell in enumerate(cells)).rstrip()

    out = [title] if title else []
    out.append(line(columns))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in rows)
    return "\n".join(out)


class Progress:
    """`done/total` on one self-rewriting line of stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label, self.done = total, label, 0
        self.enabled = self.stream.isatty()

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            self.stream.write(f"\r{self.label} {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
