"""Bounds on what comes from outside: files of the right kind and size, data of a sane depth, URLs shown without
their credentials.

Config files, key files, inventories and evidence pcaps are all read through `read_regular_file`, so none of them
can be `/dev/zero` (which grows without bound), a FIFO (which blocks until a writer comes) or a directory, and none is
read past its cap. Decoded JSON and TOML go through `check_nesting` before anything walks them recursively: the
parsers themselves recurse and raise RecursionError on deep input, and so would any later repr or dump.
"""

import os
import re
import stat
from typing import Any, Final

from probe.errors import WgProbeError

# Deeper than any real config or relay list (the Mullvad app list is 6 levels deep), far from Python's recursion limit.
MAX_NESTING: Final = 32

_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
# scheme://userinfo@: greedy up to the netloc's last "@", as urllib splits it, so "user:p@ss@host" hides "p@ss" too.
_USERINFO: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


class InputError(WgProbeError):
    """Input refused before it was parsed. The message is a reason without the path or any of the content, so each
    caller names the input its own way (a config file, an inventory, a key file) and nothing secret is quoted."""


def describe_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _check_kind(mode: int) -> None:
    for test, name in _KINDS:
        if test(mode):
            raise InputError(f"is {name}, not a regular file")
    if not stat.S_ISREG(mode):
        raise InputError("is not a regular file")


def read_regular_file(path: str | os.PathLike[str], *, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; InputError for anything else.

    The file is stat'ed before it is opened (opening some devices has effects of its own) and fstat'ed after (it may
    have been swapped in between). O_NONBLOCK keeps the open of a FIFO that appeared in between from waiting for a
    writer; on a regular file it changes nothing.
    """
    try:
        _check_kind(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(e.strerror or str(e)) from None
    except ValueError:  # an embedded NUL byte in the path
        raise InputError("the path holds a NUL byte") from None
    try:
        status = os.fstat(fd)
        _check_kind(status.st_mode)
        too_big = InputError(f"is larger than {describe_size(max_bytes)}")
        if status.st_size > max_bytes:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # the file grew after fstat
                raise too_big
        return b"".join(chunks)
    except OSError as e:
        raise InputError(e.strerror or str(e)) from None
    finally:
        os.close(fd)


def check_nesting(data: Any, limit: int = MAX_NESTING) -> None:
    """InputError if lists and dicts in `data` nest deeper than `limit`; walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > limit:
            raise InputError(f"nested more than {limit} levels deep")
        stack.extend((child, depth + 1) for child in children)


def redact_url(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by "***": https://***@host/path.

    The one helper for showing a URL (or a message that holds one) to anyone: logs, errors, `Inventory.source`.
    """
    return _USERINFO.sub(r"\1***@", text)
