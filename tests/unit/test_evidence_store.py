"""Evidence on disk: only EvidenceError ever escapes, files are private, one path's pcap is capped, and the directory
an agent writes all day is kept within its size and age, removing only what wgprobe wrote, oldest first."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from probe.evidence import EvidenceStore, SavedPcap, save_path_pcap, save_result
from probe.packets import EvidenceError, build_icmp_echo, read_pcap
from probe.results import PathResult, ServerResult, StageName, StageResult
from probe.tunnel import Record

REPO = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
PACKET = build_icmp_echo("10.64.0.2", "198.18.0.2", 7, 1, b"x" * 72)  # 100 bytes: 116 in a pcap with its header
PACKETS = [(T0 + n, PACKET) for n in range(10)]
PCAP_HEADER, RECORD = 24, 16 + len(PACKET)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _result(ok: bool = False) -> ServerResult:
    stage = StageResult(name=StageName.handshake, ok=ok, seconds=1.0, loss=1.0)
    path = PathResult(port=51820, family="ipv4", ok=ok, stages=(stage,), entry="192.0.2.1")
    return ServerResult(
        server="se-got-wg-001",
        agent="lab-agent",
        ok=ok,
        started_at=datetime.fromtimestamp(T0, UTC),
        duration_seconds=1.0,
        paths=(path,),
    )


def _store(root: Path, clock: Clock | None = None, /, **bounds: float) -> EvidenceStore:
    max_bytes = int(bounds.get("max_bytes", 1 << 30))
    return EvidenceStore(
        root,
        path_max_bytes=int(bounds.get("path_max_bytes", min(1 << 20, max_bytes))),
        max_bytes=max_bytes,
        max_age_seconds=bounds.get("max_age_seconds", 7 * 86400),
        now=clock or Clock(),
    )


# --- what is written --------------------------------------------------------------------------------------------


def test_a_path_pcap_and_the_result_are_written_where_the_names_say(tmp_path: Path) -> None:
    store = _store(tmp_path / "evidence")
    saved = store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS[:2])
    assert saved == SavedPcap(
        path=str(tmp_path / "evidence" / "se-got-wg-001" / "20270115T080000.000000Z-lab-agent-51820-ipv4.pcap"),
        packets=2,
        left_out=0,
    )
    assert read_pcap(saved.path) == PACKETS[:2]
    result = store.save_result(_result())
    assert result.evidence == str(tmp_path / "evidence" / "se-got-wg-001" / "20270115T080000.000000Z-lab-agent.json")
    assert json.loads(Path(result.evidence).read_text())["evidence"] == result.evidence
    # The same second twice (two paths of one port and family never are; a test clock is) does not overwrite.
    again = store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS[:1])
    assert again.path.endswith("-lab-agent-51820-ipv4-1.pcap")
    assert len(read_pcap(saved.path)) == 2


def test_files_are_0640_and_directories_0750_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = _store(tmp_path / "new" / "evidence")
        pcap = Path(store.save_path_pcap("se-got-wg-001", "lab-agent", 53, "ipv6", PACKETS[:1]).path)
        result = store.save_result(_result())
    finally:
        os.umask(old)
    assert result.evidence is not None
    for file in (pcap, Path(result.evidence)):
        assert stat.S_IMODE(file.stat().st_mode) == 0o640
    for directory in (tmp_path / "new", tmp_path / "new" / "evidence", pcap.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    old = os.umask(0o077)
    try:
        pcap = Path(store.save_path_pcap("se-got-wg-002", "lab-agent", 53, "ipv6", PACKETS[:1]).path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(pcap.stat().st_mode) == 0o640  # not 0600 either: the group is for the people on call
    assert stat.S_IMODE(pcap.parent.stat().st_mode) == 0o750


def test_one_paths_pcap_keeps_its_first_packets_up_to_the_cap(tmp_path: Path) -> None:
    cap = PCAP_HEADER + 3 * RECORD + RECORD // 2  # room for three and a half packets
    store = _store(tmp_path, path_max_bytes=cap)
    saved = store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS)
    assert (saved.packets, saved.left_out) == (3, 7)
    assert saved.path.endswith("-lab-agent-51820-ipv4-7-left-out.pcap")  # whoever opens it knows it is not all
    assert read_pcap(saved.path) == PACKETS[:3]
    assert Path(saved.path).stat().st_size <= cap


def test_the_old_functions_still_work(tmp_path: Path) -> None:
    record = Record()
    record.packets.extend((at, "out", packet) for at, packet in PACKETS[:2])
    path = save_path_pcap(tmp_path, "se-got-wg-001", "lab-agent", 51820, "ipv4", record)
    assert read_pcap(path) == PACKETS[:2]
    saved = save_result(tmp_path, _result())
    assert saved.evidence is not None and Path(saved.evidence).is_file()


# --- what cannot be written is an EvidenceError with a one-line reason --------------------------------------------


def test_evidence_dir_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "evidence"
    root.write_text("not a directory")
    store = _store(root)
    with pytest.raises(EvidenceError) as caught:
        store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS[:1])
    assert str(caught.value) == f"cannot save evidence: {root} is not a directory"
    with pytest.raises(EvidenceError, match="is not a directory"):
        store.save_result(_result())
    with pytest.raises(EvidenceError, match="is not a directory"):
        _store(root / "below").save_result(_result())


@pytest.mark.parametrize("name", ["ev[1]", "ev [bold]x[/]", "évidence", "a\tb"])
def test_odd_characters_in_the_evidence_dir_are_only_characters(tmp_path: Path, name: str) -> None:
    saved = _store(tmp_path / name).save_result(_result())
    assert saved.evidence is not None and Path(saved.evidence).is_file()


def test_a_nul_in_the_evidence_dir_is_an_evidence_error(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="NUL"):
        _store(tmp_path / "a\0b").save_result(_result())


@pytest.mark.parametrize(
    ("relay", "agent", "port", "family"),
    [
        ("../../etc", "lab-agent", 1, "ipv4"),
        ("se-got-wg-001", "lab/agent", 1, "ipv4"),
        ("se-got-wg-001", "", 1, "ipv4"),
        (".hidden", "lab-agent", 1, "ipv4"),
        ("se-got-wg-001", "lab-agent", 70000, "ipv4"),
        ("se-got-wg-001", "lab-agent", 1, "ipv5"),
    ],
)
def test_names_that_are_not_safe_file_names_are_refused(
    tmp_path: Path, relay: str, agent: str, port: int, family: str
) -> None:
    with pytest.raises(EvidenceError, match="cannot save evidence: "):
        _store(tmp_path).save_path_pcap(relay, agent, port, family, PACKETS[:1])
    assert list(tmp_path.iterdir()) == []


def _without_dac_override() -> None:
    """For a child of root, before it execs: drop the capabilities that let root ignore file modes, so a read-only
    directory is read-only for it too (PR_CAPBSET_DROP of CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_as_a_mere_user(script: str) -> subprocess.CompletedProcess[str]:
    drop = _without_dac_override if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        preexec_fn=drop,  # the child execs at once: nothing else runs in between
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SAVE_SCRIPT = """
import sys
from pathlib import Path
from probe.evidence import EvidenceStore
from probe.packets import EvidenceError, build_icmp_echo
store = EvidenceStore(Path(sys.argv[1]), path_max_bytes=1 << 20, max_bytes=1 << 30, max_age_seconds=3600)
packet = build_icmp_echo("10.64.0.2", "198.18.0.2", 7, 1, bytes(3000))
try:
    store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", [(1.0, packet)])
except EvidenceError as e:
    print("EvidenceError:", e)
"""


def test_a_read_only_directory(tmp_path: Path) -> None:
    readonly = tmp_path / "evidence"
    readonly.mkdir()
    readonly.chmod(0o555)
    done = _run_as_a_mere_user(SAVE_SCRIPT.replace("sys.argv[1]", repr(str(readonly))))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"EvidenceError: cannot save evidence: {readonly / 'se-got-wg-001'}: Permission denied\n"
    assert list(readonly.iterdir()) == []


def test_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    # A file-size limit fails the write as a full disk would (EFBIG rather than ENOSPC: the same OSError path).
    script = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        + SAVE_SCRIPT.replace("sys.argv[1]", repr(str(tmp_path)))
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("EvidenceError: cannot save evidence: ")
    assert done.stdout.endswith(": File too large\n")
    assert list((tmp_path / "se-got-wg-001").iterdir()) == []


# --- retention ----------------------------------------------------------------------------------------------------


def _age(path: str | Path, at: float) -> None:
    os.utime(path, (at, at))


def test_files_older_than_the_age_limit_go_and_nothing_else(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, max_age_seconds=3600)
    old = store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS[:1]).path
    _age(old, T0 - 3601)
    young = store.save_path_pcap("se-got-wg-002", "lab-agent", 51820, "ipv4", PACKETS[:1]).path
    _age(young, T0 - 3500)
    foreign = [tmp_path / "se-got-wg-001" / "notes.txt", tmp_path / "README", tmp_path / "other" / "x.pcap"]
    for path in foreign:
        path.parent.mkdir(exist_ok=True)
        path.write_text("kept")
        _age(path, T0 - 10 * 86400)
    clock.now += 61  # past the scan throttle
    assert store.prune() == 1
    assert not Path(old).exists() and Path(young).exists()
    assert all(path.exists() for path in foreign)  # only names wgprobe writes are ever removed


def test_the_total_is_kept_under_the_limit_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    size = PCAP_HEADER + RECORD
    store = _store(tmp_path, clock, max_bytes=10 * size)
    paths = []
    for n in range(15):
        clock.now = T0 + n
        paths.append(store.save_path_pcap(f"se-got-wg-{n % 3:03d}", "lab-agent", 51820, "ipv4", PACKETS[:1]).path)
        _age(paths[-1], T0 + n)
    left = sorted(tmp_path.glob("*/*.pcap"))
    assert sum(p.stat().st_size for p in left) <= 10 * size
    assert {str(p) for p in left} == set(paths[-len(left) :])  # the newest are the ones kept
    assert len(left) >= 8  # pruned to a low-water mark, not to nothing


def test_empty_relay_directories_are_removed(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, max_age_seconds=60)
    saved = store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS[:1]).path
    _age(saved, T0 - 120)
    (tmp_path / "se-got-wg-009").mkdir()
    keep = tmp_path / "kept-dir"
    keep.mkdir()
    (keep / "x").write_text("")
    clock.now += 120
    store.prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept-dir"]
    # ...and a save after that recreates what it needs.
    assert Path(store.save_result(_result()).evidence or "").is_file()


def test_prune_scans_at_most_once_a_minute_unless_over_the_limit(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock, max_age_seconds=60)
    first = store.save_path_pcap("se-got-wg-001", "lab-agent", 51820, "ipv4", PACKETS[:1]).path
    _age(first, T0 - 3600)  # already too old, but the last scan was just now (the save's)
    assert store.prune() == 0
    assert Path(first).exists()
    clock.now += 60
    assert store.prune() == 1


def test_evidence_written_by_another_process_counts_at_the_next_scan(tmp_path: Path) -> None:
    clock = Clock()
    size = PCAP_HEADER + RECORD
    store = _store(tmp_path, clock, max_bytes=4 * size)
    other = _store(tmp_path, clock, max_bytes=1 << 30)
    for n in range(6):
        _age(other.save_path_pcap("se-got-wg-001", "lab-agent", 1000 + n, "ipv4", PACKETS[:1]).path, T0 - 100 + n)
    clock.now += 60
    assert store.prune() >= 2
    assert sum(p.stat().st_size for p in tmp_path.glob("*/*.pcap")) <= 4 * size


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"path_max_bytes": 10}, "path_max_bytes"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_age_seconds": 0}, "max_age_seconds"),
        ({"path_max_bytes": 2 << 20, "max_bytes": 1 << 20}, "path_max_bytes"),
    ],
)
def test_bounds_must_make_sense(tmp_path: Path, bounds: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _store(tmp_path, None, **bounds)
