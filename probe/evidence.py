"""Evidence of failed probes: a pcap of the inner packets each failed path sent and received, and the JSON result of
the run, under the configured evidence directory:

    <evidence_dir>/<relay>/<UTC time>-<agent>-<port>-<family>[-<n>-left-out].pcap
    <evidence_dir>/<relay>/<UTC time>-<agent>.json

An agent writes evidence all day, so `EvidenceStore` keeps it bounded three ways: one path's pcap holds its first
packets up to `path_max_bytes` (a hostile relay once made 99 MB from one path in 0.3 s); the files wgprobe wrote are
kept under `max_bytes` in all and `max_age_seconds` old, oldest removed first. Only names of the two shapes above are
ever removed, so nothing else kept in the directory is touched. Files are 0640 and directories 0750 whatever the
umask. Whatever goes wrong (the directory is a file, read-only, the disk is full) is an `EvidenceError` with a
one-line reason: the caller records it in the result, which is never lost for it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from probe.packets.errors import EvidenceError
from probe.packets.evidence import pcap_capped, write_private

if TYPE_CHECKING:
    from probe.config import ProbeSection
    from probe.results import ServerResult

# Relay and agent names are already held to this alphabet by the inventory and the config; checked again here
# because they become path components, where "/" or ".." would leave the evidence directory. (Pattern strings,
# compiled by `re` at the first save: a healthy run saves nothing, and a compile is ~0.25 ms of every start-up.)
_SAFE_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}"
# What this module writes, and so all that retention ever removes.
_EVIDENCE_FILE: Final = r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[A-Za-z0-9._-]+\.(?:pcap|json)"
_FAMILIES: Final = ("ipv4", "ipv6")
_OPEN_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# Over the size limit, prune to this share of it, so the next few saves do not each trigger a full scan.
_LOW_WATER: Final = 0.9


class _HasPackets(Protocol):
    """A probe.tunnel.Record: (time, direction, inner packet) for each packet a path sent or received."""

    @property
    def packets(self) -> list[tuple[float, str, bytes]]: ...


class SavedPcap(NamedTuple):
    path: str
    packets: int  # written to the file
    left_out: int  # past `path_max_bytes`, not written


class EvidenceStore:
    """Where one agent writes evidence, within its bounds. Make one per process and keep it: it remembers the total
    it wrote since its last scan of the directory, which keeps `prune` cheap enough to run after every save."""

    def __init__(
        self,
        root: Path,
        *,
        path_max_bytes: int,
        max_bytes: int,
        max_age_seconds: float,
        now: Callable[[], float] = time.time,
        scan_interval: float = 60.0,
    ) -> None:
        if path_max_bytes < 64:
            raise ValueError(f"path_max_bytes must be at least 64, got {path_max_bytes}")
        if max_bytes < path_max_bytes:
            raise ValueError(f"max_bytes ({max_bytes}) must be at least path_max_bytes ({path_max_bytes})")
        if not max_age_seconds > 0:
            raise ValueError(f"max_age_seconds must be above 0, got {max_age_seconds}")
        self.root = root
        self.path_max_bytes, self.max_bytes, self.max_age_seconds = path_max_bytes, max_bytes, max_age_seconds
        self.now, self.scan_interval = now, scan_interval
        self._total: int | None = None  # bytes of evidence in the directory, as of the last scan plus what we wrote
        self._scanned_at = 0.0

    @classmethod
    def from_config(cls, probe: ProbeSection, *, now: Callable[[], float] = time.time) -> EvidenceStore:
        return cls(
            probe.evidence_dir,
            path_max_bytes=probe.evidence_path_max_bytes,
            max_bytes=probe.evidence_max_bytes,
            max_age_seconds=probe.evidence_max_age_hours * 3600,
            now=now,
        )

    def save_path_pcap(
        self, relay: str, agent: str, port: int, family: str, packets: Iterable[tuple[float, bytes]]
    ) -> SavedPcap:
        """Write one path's (time, inner packet) records, the first ones up to `path_max_bytes`."""
        _check_name("relay name", relay)
        _check_name("agent name", agent)
        if family not in _FAMILIES or not 0 <= port <= 65535:
            raise EvidenceError(f"cannot save evidence: no path {port}/{family}")
        pcap = pcap_capped(packets, self.path_max_bytes)
        stem = f"{self._stamp()}-{agent}-{port}-{family}" + (f"-{pcap.left_out}-left-out" if pcap.left_out else "")
        path = self._write(relay, stem, ".pcap", lambda _path: pcap.content)
        return SavedPcap(str(path), pcap.packets, pcap.left_out)

    def save_result(self, result: ServerResult) -> ServerResult:
        """Write the result as JSON beside its pcaps; the result, with `evidence` naming the file, is returned."""
        _check_name("relay name", result.server)
        _check_name("agent name", result.agent)
        saved = result

        def content(path: Path) -> bytes:
            nonlocal saved
            saved = result.model_copy(update={"evidence": str(path)})
            return (saved.model_dump_json(indent=2) + "\n").encode()

        self._write(result.server, f"{self._stamp()}-{result.agent}", ".json", content)
        return saved

    def prune(self) -> int:
        """Remove evidence past the age limit, then the oldest until the total is under the size limit; the number
        of files removed. Scans the directory at most once per `scan_interval`, or at once when what this store
        wrote took the total over the limit. Best effort: what cannot be removed stays and is retried next time."""
        now = self.now()
        since = now - self._scanned_at
        if self._total is not None and self._total <= self.max_bytes and 0 <= since < self.scan_interval:
            return 0
        files, relay_dirs = self._scan()
        total = sum(size for _, size, _ in files)
        target = int(self.max_bytes * _LOW_WATER) if total > self.max_bytes else self.max_bytes
        cutoff = now - self.max_age_seconds
        removed = 0
        for mtime, size, path in sorted(files):
            if mtime >= cutoff and total <= target:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # removed by someone else: it no longer counts either way
            except OSError:
                continue
            total -= size
            removed += 1
        for directory in relay_dirs:
            with contextlib.suppress(OSError):  # not empty, or not ours to remove
                directory.rmdir()
        self._total, self._scanned_at = total, now
        return removed

    def _scan(self) -> tuple[list[tuple[float, int, Path]], list[Path]]:
        files: list[tuple[float, int, Path]] = []
        relay_dirs: list[Path] = []
        with contextlib.suppress(OSError, ValueError), os.scandir(self.root) as entries:
            for entry in entries:
                if not re.fullmatch(_SAFE_NAME, entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                relay_dirs.append(Path(entry.path))
                with contextlib.suppress(OSError), os.scandir(entry.path) as inside:
                    for item in inside:
                        if re.fullmatch(_EVIDENCE_FILE, item.name) and item.is_file(follow_symlinks=False):
                            status = item.stat(follow_symlinks=False)
                            files.append((status.st_mtime, status.st_size, Path(item.path)))
        return files, relay_dirs

    def _stamp(self) -> str:
        return datetime.fromtimestamp(self.now(), UTC).strftime("%Y%m%dT%H%M%S.%fZ")

    def _write(self, relay: str, stem: str, suffix: str, content: Callable[[Path], bytes]) -> Path:
        try:
            try:
                path, fd = _create(self._directory(relay), stem, suffix)
            except FileNotFoundError:  # a concurrent prune removed the relay's directory, empty, before our open
                path, fd = _create(self._directory(relay), stem, suffix)
            try:
                data = content(path)
                write_private(fd, data)
                now = self.now()
                os.utime(fd, (now, now))  # the store's clock is the one its retention reads
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()  # no partial evidence: a pcap cut short would only mislead
                raise
            os.close(fd)
        except OSError as e:
            raise EvidenceError(f"cannot save evidence: {e.filename or self.root}: {e.strerror or e}") from None
        except ValueError:  # os functions refuse a path with a NUL byte
            raise EvidenceError(f"cannot save evidence in {self.root!r}: the path holds a NUL byte") from None
        if self._total is not None:
            self._total += len(data)
        self.prune()
        return path

    def _directory(self, relay: str) -> Path:
        if self.root.exists() and not self.root.is_dir():
            raise EvidenceError(f"cannot save evidence: {self.root} is not a directory")
        directory = self.root / relay
        missing = []
        for parent in (directory, *directory.parents):
            if parent.is_dir():
                break
            if parent.exists():
                raise EvidenceError(f"cannot save evidence: {parent} is not a directory")
            missing.append(parent)
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made by a concurrent save
                new.mkdir(mode=0o750)
                new.chmod(0o750)  # mkdir's mode passes through the umask
        return directory


def _create(directory: Path, stem: str, suffix: str) -> tuple[Path, int]:
    """A new file (never one already there), and its descriptor."""
    for n in range(100):
        path = directory / (f"{stem}-{n}{suffix}" if n else f"{stem}{suffix}")
        try:
            return path, os.open(path, _OPEN_NEW, 0o640)
        except FileExistsError:
            continue
    raise EvidenceError(f"cannot save evidence: {directory / stem}{suffix} and 99 more names are taken")


def _check_name(what: str, name: str) -> None:
    if not re.fullmatch(_SAFE_NAME, name):
        raise EvidenceError(f"cannot save evidence: {what} {name!r} is not a safe file name")


def save_path_pcap(root: Path, relay: str, agent: str, port: int, family: str, record: _HasPackets) -> str:
    """One path's pcap under `root` with the default bounds; kept for callers that hold no `EvidenceStore`."""
    packets = [(at, packet) for at, _direction, packet in record.packets]
    return _default_store(root).save_path_pcap(relay, agent, port, family, packets).path


def save_result(root: Path, result: ServerResult) -> ServerResult:
    """A result's JSON under `root` with the default bounds; kept for callers that hold no `EvidenceStore`."""
    return _default_store(root).save_result(result)


def _default_store(root: Path) -> EvidenceStore:
    from probe.config import ProbeSection

    defaults = ProbeSection.model_fields
    hours = defaults["evidence_max_age_hours"].default
    return EvidenceStore(
        root,
        path_max_bytes=defaults["evidence_path_max_bytes"].default,
        max_bytes=defaults["evidence_max_bytes"].default,
        max_age_seconds=hours * 3600,
    )


__all__ = ["EvidenceStore", "SavedPcap", "save_path_pcap", "save_result"]
