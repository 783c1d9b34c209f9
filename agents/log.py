"""The services' log: one line per event, as text for people or JSON lines for log shippers (`--log-format json`).

An event has a name and fields (`log.info("inventory_reloaded", relays=522, added=3)`); values from outside are
escaped in text lines and JSON-encoded in JSON lines, so neither a hostname nor an HTTP reason can forge a line or
move a terminal's cursor. Callers never pass secrets: a URL goes through `redact_url` before it is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TextIO

from probe.term import clean

LEVELS = ("debug", "info", "warning", "error")
_LOGGING_LEVELS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "error"}


class Log:
    def __init__(
        self,
        *,
        json_lines: bool = False,
        stream: TextIO | None = None,
        level: str = "info",
        now: Callable[[], float] = time.time,
        **context: object,
    ) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stderr
        self.threshold = LEVELS.index(level)
        self.now = now
        self.context = context  # fields every line carries (the agent's name)

    def bind(self, **context: object) -> Log:
        """The same log, with more fields on every line."""
        return Log(
            json_lines=self.json_lines,
            stream=self.stream,
            level=LEVELS[self.threshold],
            now=self.now,
            **{**self.context, **context},
        )

    def event(self, level: str | int, name: str, **fields: object) -> None:
        """One line; `level` is a name ("info") or a `logging` number (the MQTT module's callbacks pass those)."""
        if isinstance(level, int):
            level = _LOGGING_LEVELS.get(level - level % 10, "error" if level > 40 else "debug")
        if LEVELS.index(level) < self.threshold:
            return
        stamp = datetime.fromtimestamp(self.now(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        merged = {**self.context, **fields}
        if self.json_lines:
            line = json.dumps({"ts": stamp, "level": level, "event": name, **merged}, default=str)
        else:
            pairs = " ".join(f"{key}={_text(value)}" for key, value in merged.items())
            line = f"{stamp} {level:<7} {name}" + (f" {pairs}" if pairs else "")
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log stream must not stop the service that logs to it

    def debug(self, name: str, **fields: object) -> None:
        self.event("debug", name, **fields)

    def info(self, name: str, **fields: object) -> None:
        self.event("info", name, **fields)

    def warning(self, name: str, **fields: object) -> None:
        self.event("warning", name, **fields)

    def error(self, name: str, **fields: object) -> None:
        self.event("error", name, **fields)


def _text(value: object) -> str:
    text = clean(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


class _Forward(logging.Handler):
    """Records of wgprobe's Python loggers as lines of a service's log."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self.set_name("wgprobe-log")
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {"logger": record.name}
            if record.exc_info:
                fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
            # The message is the event's name, which a text line writes bare: escaped, as field values are.
            self.log.event(record.levelno, clean(record.getMessage()), **fields)
        except Exception:  # a record that cannot be formatted must not end the service: logging's own way
            self.handleError(record)


@contextlib.contextmanager
def forwarding(log: Log) -> Iterator[None]:
    """While a service runs, what its modules say through Python's `logging` (the `wgprobe` loggers: paho's socket
    errors, a bug answering an HTTP request) goes to `log`, one line each like its own events. Otherwise Python's
    last-resort handler wrote it to stderr as bare text, a traceback over many lines, among the JSON lines of
    `--log-format json`. Warnings and above, as that handler showed: aiohttp's notes on clients stay out."""
    handler = _Forward(log)
    logger = logging.getLogger("wgprobe")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
