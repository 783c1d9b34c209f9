"""The agent's on-disk spool: results the broker has not acknowledged yet, in arrival order, bounded.

SQLite (standard library) in WAL mode: each `put` and `ack` is one transaction, so a crash (SIGKILL, OOM) mid-write
leaves either the whole row or none of it, never a torn file. A `put` is committed before it returns: a result the
agent handed over is never only in memory. The usual `put` and `ack` are one statement each (SQLite commits a lone
statement as its own transaction): the bounds are checked from figures kept in memory, and the age bound's query
and a transaction around several statements are paid only when something may have to be dropped. At fleet rate
each statement costs the agent 50-250 us of CPU (issue 8's budget; README, "The agent's budget").
`synchronous=NORMAL` is durable across a crash of the process; a power loss of the machine may lose the last commits
(never corrupt the file), which is the trade for not waiting on an fsync per result.

Bounds, for a long broker outage: `max_bytes` of stored results (payload and topic bytes) and `max_age_seconds`.
Past them the oldest results are dropped first and counted by reason; the counters live in the file, so they
survive restarts. The agent's latest status is kept apart (only the newest matters) and never counts against the
bound.

The spool also remembers the result topics the agent has published to (`retained`, a topic the first time a result
for it is put): the broker keeps the last result on each, retained, until the agent clears it, which it does for a
relay no longer in its inventory even when the relay was removed while the agent was not running.

Sans-I/O in spirit: no network, and time only from the `now` passed in. One process owns a spool at a time (an
exclusive lock, taken at open): a second agent pointed at the same file gets a clear error, not shared rows.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from probe.agent_config import SpoolSection
from probe.errors import ConfigError

APPLICATION_ID = 0x77677370  # "wgsp": this file is a wgprobe spool (PRAGMA application_id)
SCHEMA_VERSION = 1  # PRAGMA user_version
_JOURNAL_LIMIT = 4 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint
_INSERT = "INSERT INTO results (topic, payload, result_id, created, size) VALUES (?, ?, ?, ?, ?)"
_ACK_CHUNK = 500  # ids per DELETE statement (SQLite allows at least 999 parameters per statement)
# Statements one by one, in one transaction (executescript would commit on its own).
_SCHEMA = (
    # id is the arrival order; AUTOINCREMENT so an id is never reused after a drop (a cursor stays valid).
    "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
    " result_id TEXT NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE status (id INTEGER PRIMARY KEY CHECK (id = 1), payload BLOB NOT NULL, updated REAL NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO counters VALUES ('dropped_size', 0), ('dropped_age', 0)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


# Added after schema version 1 shipped, so made when missing at every open; a wgprobe from before ignores it.
_RETAINED_TABLE = "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY)"


class SpoolError(ConfigError):
    """The spool file cannot be used (not a spool, corrupt, in use, unwritable): the operator's to fix."""


@dataclass(slots=True)
class _Tally:
    """What one transaction changes in the figures kept in memory."""

    count: int = 0
    bytes: int = 0
    dropped_size: int = 0
    dropped_age: int = 0


@dataclass(frozen=True, slots=True)
class Spooled:
    """One result waiting for the broker's acknowledgement."""

    id: int
    topic: str
    payload: bytes
    result_id: str
    created: float


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, max_age_seconds: float, now: Callable[[], float]) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.now = now
        self._db = self._open(path)
        try:
            self._check_schema()
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(id), 0) FROM results"
            ).fetchone()
            self.count, self.bytes, self._last_id = int(row[0]), int(row[1]), int(row[2])
            head = self._db.execute("SELECT created FROM results ORDER BY id LIMIT 1").fetchone()
            self._head_created: float | None = None if head is None else float(head[0])
            self.dropped_size, self.dropped_age = self._counter("dropped_size"), self._counter("dropped_age")
            self._db.execute(_RETAINED_TABLE)
            self._retained: set[str] = {str(row[0]) for row in self._db.execute("SELECT topic FROM retained")}
        except sqlite3.Error as e:
            self._db.close()
            raise self._error(e) from None
        except SpoolError:
            self._db.close()
            raise

    @classmethod
    def open(cls, section: SpoolSection, *, now: Callable[[], float]) -> Spool:
        return cls(section.path, max_bytes=section.max_bytes, max_age_seconds=section.max_age_hours * 3600.0, now=now)

    # -- opening ---------------------------------------------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            # Created 0600 before SQLite sees it (its WAL inherits the mode): results are not for every local user.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise SpoolError(f"spool {path} is not a regular file")
            if mode & 0o027:
                os.chmod(path, stat.S_IMODE(mode) & 0o640)
        except OSError as e:
            raise SpoolError(f"spool {path}: {e.strerror or e}") from None
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        except sqlite3.Error as e:
            raise self._error(e) from None
        try:
            # Exclusive before the first access: the lock is held from the first write until close, so a second
            # process gets "locked", and WAL needs no shared-memory file beside the spool.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={_JOURNAL_LIMIT}")
            db.execute("BEGIN IMMEDIATE")  # takes the lock now, rather than at the first result
            db.execute("COMMIT")
        except sqlite3.Error as e:
            db.close()
            raise self._error(e) from None
        return db

    def _check_schema(self) -> None:
        app, version = self._pragma("application_id"), self._pragma("user_version")
        if app == APPLICATION_ID:
            if version != SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {self.path} has schema version {version}; this wgprobe reads {SCHEMA_VERSION}. "
                    "Move the file aside to start an empty spool"
                )
            if self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise self._error(sqlite3.DatabaseError("database disk image is malformed"))
            return
        tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if app != 0 or tables:
            raise SpoolError(f"spool {self.path} is an SQLite database but not a wgprobe spool; choose another path")
        self._create()

    def _create(self) -> None:
        # One transaction, so a crash while creating leaves an empty file (created again next time), not half a schema.
        self._db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._db.execute("COMMIT")

    def _pragma(self, name: str) -> int:
        return int(self._db.execute(f"PRAGMA {name}").fetchone()[0])

    def _counter(self, name: str) -> int:
        return int(self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _error(self, error: sqlite3.Error) -> SpoolError:
        text = str(error)
        if "not a database" in text or "malformed" in text:
            return SpoolError(
                f"spool {self.path} is not an SQLite database or is corrupt ({text}); "
                "move it aside to start an empty spool (the results in it are lost)"
            )
        if "locked" in text:
            return SpoolError(f"spool {self.path} is in use by another process (another agent with this [spool] path?)")
        return SpoolError(f"spool {self.path}: {text}")

    # -- results ---------------------------------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, result_id: str) -> int | None:
        """Keep one result, in arrival order, committed before this returns; its id, or None if it alone is larger
        than the bound (dropped and counted). Drops the oldest results first to stay within the bounds."""
        if payload and topic not in self._retained:
            # Noted before the result: a crash in between leaves a topic to clear that holds nothing (clearing it
            # is a no-op), never a retained result nobody knows to clear.
            self._note_retained(topic)
        size = len(payload) + len(topic.encode())
        now = self.now()
        if self.bytes + size <= self.max_bytes and not self._age_due(now):
            # Nothing can have to be dropped: the INSERT alone, which SQLite commits as its own transaction.
            try:
                row_id = self._db.execute(_INSERT, (topic, payload, result_id, now, size)).lastrowid
            except sqlite3.Error as e:
                raise self._error(e) from None
            if self.count == 0:
                self._head_created = now
            self.count += 1
            self.bytes += size
        else:
            with self._transaction() as tally:
                self._prune_age(now, tally)
                if size > self.max_bytes:
                    tally.dropped_size += 1
                    row_id = None
                else:
                    held = self.bytes + tally.bytes  # after the age drop above (the figures follow at commit)
                    if held + size > self.max_bytes:
                        self._drop_oldest(held + size - self.max_bytes, tally)
                    row_id = self._db.execute(_INSERT, (topic, payload, result_id, now, size)).lastrowid
                    tally.count += 1
                    tally.bytes += size
            self._find_head()
            if row_id is None:
                return None
        assert row_id is not None  # an INSERT into a rowid table always has one
        self._last_id = row_id
        return row_id

    def peek(self, n: int, *, after: int = 0) -> list[Spooled]:
        """The `n` oldest results with an id above `after` (results past the age bound are dropped first)."""
        self.prune()
        if after >= self._last_id:
            return []  # nothing was put after it: no query needed (ids only grow; this process alone writes)
        try:
            rows = self._db.execute(
                "SELECT id, topic, payload, result_id, created FROM results WHERE id > ? ORDER BY id LIMIT ?",
                (after, n),
            ).fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from None
        return [Spooled(int(r[0]), str(r[1]), bytes(r[2]), str(r[3]), float(r[4])) for r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Forget these results (delivered, or refused for good); ids no longer held are ignored. How many went."""
        wanted = list(ids)
        if not wanted:
            return 0
        if len(wanted) > _ACK_CHUNK:
            with self._transaction() as tally:
                for at in range(0, len(wanted), _ACK_CHUNK):
                    self._delete(wanted[at : at + _ACK_CHUNK], tally)
        else:
            # One statement, committed on its own: the whole batch goes, or none of it.
            tally = _Tally()
            try:
                self._delete(wanted, tally)
            except sqlite3.Error as e:
                raise self._error(e) from None
            self.count += tally.count
            self.bytes += tally.bytes
        if self.count == 0:
            self._head_created = None
        return -tally.count

    def _delete(self, ids: list[int], tally: _Tally) -> None:
        statement = f"DELETE FROM results WHERE id IN ({','.join('?' * len(ids))}) RETURNING size"  # noqa: S608 -- "?"s only
        for (size,) in self._db.execute(statement, ids):
            tally.count -= 1
            tally.bytes -= size

    def ack_through(self, up_to: int) -> int:
        """Forget every result up to and including id `up_to`; how many went."""
        with self._transaction() as tally:
            for (size,) in self._db.execute("DELETE FROM results WHERE id <= ? RETURNING size", (up_to,)):
                tally.count -= 1
                tally.bytes -= size
        self._find_head()
        return -tally.count

    def prune(self) -> int:
        """Drop (and count) results older than the age bound; how many."""
        now = self.now()
        if not self._age_due(now):
            return 0
        with self._transaction() as tally:
            self._prune_age(now, tally)
        self._find_head()
        return tally.dropped_age

    def _age_due(self, now: float) -> bool:
        """Whether the oldest result may be past the age bound. `_head_created` is the creation time of the oldest
        result when it was last looked up: acknowledgements that take the oldest away leave it as it was, which is
        earlier than the new oldest's (so the query below runs early, finds nothing and looks again), unless the
        clock was stepped back, which only delays a drop, as `_prune_age` says."""
        return self._head_created is not None and self._head_created < now - self.max_age_seconds

    def _find_head(self) -> None:
        try:
            row = self._db.execute("SELECT created FROM results ORDER BY id LIMIT 1").fetchone()
        except sqlite3.Error as e:
            raise self._error(e) from None
        self._head_created = None if row is None else float(row[0])

    def oldest_created(self) -> float | None:
        self._find_head()
        return self._head_created

    @property
    def dropped(self) -> int:
        return self.dropped_size + self.dropped_age

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tally]:
        """One write transaction; the in-memory figures follow only once it committed."""
        tally = _Tally()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield tally
                for name in ("dropped_size", "dropped_age"):
                    if getattr(tally, name):
                        self._db.execute(
                            "UPDATE counters SET value = value + ? WHERE name = ?", (getattr(tally, name), name)
                        )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._error(e) from None
        self.count += tally.count
        self.bytes += tally.bytes
        self.dropped_size += tally.dropped_size
        self.dropped_age += tally.dropped_age

    def _prune_age(self, now: float, tally: _Tally) -> None:
        # From the oldest, in arrival order, while past the bound: no index on `created` to keep up on every put,
        # and a clock stepped back only delays the drop of what came after the step.
        cutoff = now - self.max_age_seconds
        last = None
        for row_id, size, created in self._db.execute("SELECT id, size, created FROM results ORDER BY id"):
            if created >= cutoff:
                break
            tally.count -= 1
            tally.bytes -= size
            tally.dropped_age += 1
            last = row_id
        if last is not None:
            self._db.execute("DELETE FROM results WHERE id <= ?", (last,))

    def _drop_oldest(self, excess: int, tally: _Tally) -> None:
        """The oldest results whose sizes add up to at least `excess`, dropped."""
        freed = 0
        last = None
        for row_id, size in self._db.execute("SELECT id, size FROM results ORDER BY id"):
            freed += size
            tally.count -= 1
            tally.bytes -= size
            tally.dropped_size += 1
            last = row_id
            if freed >= excess:
                break
        if last is not None:
            self._db.execute("DELETE FROM results WHERE id <= ?", (last,))

    # -- retained topics -------------------------------------------------------------------------------------------

    @property
    def retained(self) -> frozenset[str]:
        """The result topics a result was put for and not forgotten since (`forget_retained`)."""
        return frozenset(self._retained)

    def _note_retained(self, topic: str) -> None:
        try:
            self._db.execute("INSERT OR IGNORE INTO retained (topic) VALUES (?)", (topic,))
        except sqlite3.Error as e:
            raise self._error(e) from None
        self._retained.add(topic)

    def forget_retained(self, topic: str) -> None:
        """`topic` holds nothing of ours on the broker any more (its clear is spooled)."""
        try:
            self._db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
        except sqlite3.Error as e:
            raise self._error(e) from None
        self._retained.discard(topic)

    # -- status ----------------------------------------------------------------------------------------------------

    def put_status(self, payload: bytes) -> None:
        """Keep the agent's latest status, replacing the one before."""
        try:
            self._db.execute(
                "INSERT INTO status (id, payload, updated) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET payload = excluded.payload, updated = excluded.updated",
                (payload, self.now()),
            )
        except sqlite3.Error as e:
            raise self._error(e) from None

    def status(self) -> bytes | None:
        try:
            row = self._db.execute("SELECT payload FROM status WHERE id = 1").fetchone()
        except sqlite3.Error as e:
            raise self._error(e) from None
        return None if row is None else bytes(row[0])

    # -- closing ---------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
