"""The agent's spool (agents/spool.py): order, bounds, counters that survive restarts, crashes and bad files."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agents.spool import Spool, SpoolError
from probe.agent_config import SpoolSection
from probe.aggregator.testing import FakeClock

HOUR = 3600.0
ROW_TOPIC = len("wgprobe/v1/results/a/s000")


def open_spool(path: Path, clock: FakeClock, *, max_bytes: int = 1 << 20, max_age: float = HOUR) -> Spool:
    return Spool(path, max_bytes=max_bytes, max_age_seconds=max_age, now=clock)


def put(spool: Spool, n: int, *, size: int = 100) -> int | None:
    return spool.put(f"wgprobe/v1/results/a/s{n:03d}", bytes([n % 256]) * size, f"a-{n}")


def put_kept(spool: Spool, n: int) -> int:
    row = put(spool, n)
    assert row is not None
    return row


def test_results_come_back_in_arrival_order(tmp_path: Path) -> None:
    clock = FakeClock()
    with open_spool(tmp_path / "spool.sqlite", clock) as spool:
        ids = [put_kept(spool, n) for n in range(10)]
        assert [row.result_id for row in spool.peek(100)] == [f"a-{n}" for n in range(10)]
        first = spool.peek(3)
        assert [row.result_id for row in first] == ["a-0", "a-1", "a-2"]
        assert first[0].topic == "wgprobe/v1/results/a/s000"
        assert first[1].payload == b"\x01" * 100
        assert first[0].created == clock.at
        assert [row.result_id for row in spool.peek(2, after=first[-1].id)] == ["a-3", "a-4"]
        assert spool.count == 10
        assert ids == sorted(ids)


def test_ack_by_ids_and_through_an_id(tmp_path: Path) -> None:
    with open_spool(tmp_path / "spool.sqlite", FakeClock()) as spool:
        ids = [put_kept(spool, n) for n in range(6)]
        assert spool.ack([ids[1], ids[3], 999_999]) == 2
        assert [row.result_id for row in spool.peek(10)] == ["a-0", "a-2", "a-4", "a-5"]
        assert spool.ack_through(ids[4]) == 3
        assert [row.result_id for row in spool.peek(10)] == ["a-5"]
        assert spool.count == 1
        assert spool.bytes == 100 + ROW_TOPIC
        assert spool.dropped == 0  # acknowledged is not dropped


def test_size_bound_drops_the_oldest_first_and_counts_them(tmp_path: Path) -> None:
    row = 100 + ROW_TOPIC
    with open_spool(tmp_path / "spool.sqlite", FakeClock(), max_bytes=10 * row) as spool:
        for n in range(25):
            put(spool, n)
            assert spool.bytes <= 10 * row
        assert [r.result_id for r in spool.peek(100)] == [f"a-{n}" for n in range(15, 25)]
        assert spool.dropped_size == 15
        assert spool.dropped_age == 0


def test_a_result_larger_than_the_whole_bound_is_dropped_alone(tmp_path: Path) -> None:
    with open_spool(tmp_path / "spool.sqlite", FakeClock(), max_bytes=1000) as spool:
        put(spool, 1)
        assert put(spool, 2, size=5000) is None
        assert [r.result_id for r in spool.peek(10)] == ["a-1"]  # the smaller ones before it are kept
        assert spool.dropped_size == 1


def test_a_put_that_ages_results_out_drops_for_size_only_what_is_still_over(tmp_path: Path) -> None:
    # The age drop in the put's own transaction frees room: the size bound must see it, or a fresh result that
    # would have fitted costs the newer ones beside it.
    row = 100 + ROW_TOPIC
    clock = FakeClock()
    with open_spool(tmp_path / "spool.sqlite", clock, max_bytes=3 * row, max_age=HOUR) as spool:
        put(spool, 0)
        clock.advance(HOUR / 2)
        put(spool, 1)
        put(spool, 2)
        clock.advance(HOUR / 2 + 1)  # a-0 is past the age bound, a-1 and a-2 are not
        put(spool, 3)  # fits once a-0 is gone
        assert [r.result_id for r in spool.peek(10)] == ["a-1", "a-2", "a-3"]
        assert (spool.dropped_age, spool.dropped_size) == (1, 0)
        assert spool.bytes == 3 * row


def test_age_bound_drops_old_results_and_counts_them(tmp_path: Path) -> None:
    clock = FakeClock()
    with open_spool(tmp_path / "spool.sqlite", clock, max_age=HOUR) as spool:
        put(spool, 0)
        put(spool, 1)
        clock.advance(HOUR / 2)
        put(spool, 2)
        assert spool.oldest_created() == clock.at - HOUR / 2
        clock.advance(HOUR / 2 + 1)
        assert [r.result_id for r in spool.peek(10)] == ["a-2"]
        assert spool.dropped_age == 2
        assert spool.count == 1
        clock.advance(HOUR)
        assert spool.prune() == 1
        assert spool.oldest_created() is None
        assert spool.bytes == 0


def test_age_bound_holds_after_the_oldest_was_acknowledged(tmp_path: Path) -> None:
    """The age bound is checked against the oldest result's time kept in memory: acknowledging the oldest must not
    keep the next one from being dropped in time, nor drop it early."""
    clock = FakeClock()
    with open_spool(tmp_path / "spool.sqlite", clock, max_age=HOUR) as spool:
        first = put_kept(spool, 0)
        clock.advance(HOUR / 2)
        put(spool, 1)
        assert spool.ack([first]) == 1
        clock.advance(HOUR / 2 + 1)  # the first would be past the bound now; the second is not
        assert [r.result_id for r in spool.peek(10)] == ["a-1"]
        assert spool.dropped_age == 0
        clock.advance(HOUR / 2)
        put(spool, 2)
        assert [r.result_id for r in spool.peek(10)] == ["a-2"]
        assert spool.dropped_age == 1
        assert (spool.count, spool.bytes) == (1, 100 + ROW_TOPIC)


def test_a_batch_of_acks_larger_than_one_statement_goes_whole(tmp_path: Path) -> None:
    with open_spool(tmp_path / "spool.sqlite", FakeClock()) as spool:
        ids = [put_kept(spool, n) for n in range(1200)]
        assert spool.ack([*ids[:1100], 999_999]) == 1100
        assert [r.result_id for r in spool.peek(1000)] == [f"a-{n}" for n in range(1100, 1200)]
        assert spool.peek(10, after=ids[-1]) == []
        assert (spool.count, spool.bytes) == (100, 100 * (100 + ROW_TOPIC + 1))  # topics s1100.. are a digit longer
        assert spool.ack(ids) == 100
        assert (spool.count, spool.bytes, spool.oldest_created()) == (0, 0, None)


def test_reopened_spool_keeps_results_counters_and_order(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "spool.sqlite"
    row = 100 + ROW_TOPIC
    with open_spool(path, clock, max_bytes=5 * row) as spool:
        for n in range(8):
            put(spool, n)
        last = spool.peek(10)[-1].id
    with open_spool(path, clock, max_bytes=5 * row) as spool:
        assert spool.count == 5
        assert spool.bytes == 5 * row
        assert spool.dropped_size == 3
        put(spool, 8)
        rows = spool.peek(10)
        assert [r.result_id for r in rows] == [f"a-{n}" for n in range(4, 9)]
        assert rows[-1].id > last  # ids are never reused, so "after" cursors stay valid across drops
        assert spool.dropped_size == 4


def test_the_topics_results_were_put_for_are_remembered_across_restarts_until_forgotten(tmp_path: Path) -> None:
    # What lets an agent clear a relay's retained result when the relay left the inventory while it was down.
    clock = FakeClock()
    path = tmp_path / "spool.sqlite"
    with open_spool(path, clock) as spool:
        for n in (1, 2, 2, 3):
            put(spool, n)
        spool.ack_through(spool.peek(10)[-1].id)  # delivered: gone from the spool, still retained on the broker
        spool.put("wgprobe/v1/results/a/s004", b"", "clear")  # an empty payload (a clear) retains nothing
        assert spool.retained == {f"wgprobe/v1/results/a/s{n:03d}" for n in (1, 2, 3)}
        spool.forget_retained("wgprobe/v1/results/a/s002")
    with open_spool(path, clock) as spool:
        assert spool.retained == {"wgprobe/v1/results/a/s001", "wgprobe/v1/results/a/s003"}


def test_a_spool_made_before_the_retained_table_opens_and_remembers(tmp_path: Path) -> None:
    # Schema version 1 as first shipped had no `retained` table: made at open, the results in the file kept.
    clock = FakeClock()
    path = tmp_path / "spool.sqlite"
    with open_spool(path, clock) as spool:
        put(spool, 1)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE retained")
    db.close()
    with open_spool(path, clock) as spool:
        assert spool.count == 1 and spool.retained == frozenset()
        put(spool, 2)
        assert spool.retained == {"wgprobe/v1/results/a/s002"}


def test_status_is_kept_apart_and_only_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    clock = FakeClock()
    with open_spool(path, clock) as spool:
        assert spool.status() is None
        spool.put_status(b'{"online": true, "n": 1}')
        spool.put_status(b'{"online": true, "n": 2}')
        assert spool.count == 0
        assert spool.bytes == 0
    with open_spool(path, clock) as spool:
        assert spool.status() == b'{"online": true, "n": 2}'


def test_open_from_the_config_section(tmp_path: Path) -> None:
    section = SpoolSection(path=tmp_path / "sub" / "dir" / "spool.sqlite", max_bytes=65536, max_age_hours=2)
    with Spool.open(section, now=FakeClock()) as spool:
        assert spool.max_bytes == 65536
        assert spool.max_age_seconds == 2 * HOUR
        put(spool, 1)
    assert section.path.exists()


def test_new_spool_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with open_spool(path, FakeClock()) as spool:
        put(spool, 1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_spool_others_could_read_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    open_spool(path, FakeClock()).close()
    os.chmod(path, 0o666)  # noqa: S103 -- the mistake under test
    open_spool(path, FakeClock()).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_second_process_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with open_spool(path, FakeClock()), pytest.raises(SpoolError, match="in use by another process"):
        open_spool(path, FakeClock())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database at all\n" * 100, "not an SQLite database or is corrupt"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "not an SQLite database or is corrupt"),
    ],
)
def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(content)
    with pytest.raises(SpoolError, match=message) as raised:
        open_spool(path, FakeClock())
    assert str(path) in str(raised.value)
    assert "move it aside" in str(raised.value)


def test_a_corrupt_spool_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with open_spool(path, FakeClock()) as spool:
        for n in range(200):
            put(spool, n, size=500)
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)  # scribble over pages past the header
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="corrupt"):
        open_spool(path, FakeClock())


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE precious (x)")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="not a wgprobe spool"):
        open_spool(path, FakeClock())
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("precious",)]
    db.close()


def test_a_spool_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    open_spool(path, FakeClock()).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SpoolError, match="schema version 99"):
        open_spool(path, FakeClock())


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="spool"):
        open_spool(tmp_path / "file" / "spool.sqlite", FakeClock())


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from agents.spool import Spool
    spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, max_age_seconds=1e9, now=time.time)
    n = 0
    while True:
        row = spool.put(f"wgprobe/v1/results/a/s{n}", bytes([n % 256]) * (n % 4000 + 1), f"a-{n}")
        print(n, row, flush=True)
        n += 1
    """
)


def test_a_writer_killed_mid_stream_leaves_every_committed_result(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert writer.stdout is not None
    try:
        committed = []
        for line in writer.stdout:
            committed.append(int(line.split()[0]))
            if len(committed) == 500:
                break
    finally:
        writer.send_signal(signal.SIGKILL)  # mid-stream: it was putting the next rows as we read
        writer.wait(10)
        writer.stdout.close()
    assert len(committed) == 500
    with open_spool(path, FakeClock(time.time())) as spool:  # the writer's clock: nothing is past the age bound
        rows = spool.peek(100_000)
        numbers = [int(row.result_id.removeprefix("a-")) for row in rows]
        assert numbers[: len(committed)] == committed  # every committed result, in order
        assert numbers == list(range(len(numbers)))  # and nothing torn or out of order after them
        for row, n in zip(rows, numbers, strict=True):
            assert row.payload == bytes([n % 256]) * (n % 4000 + 1)
        assert spool.count == len(rows)
