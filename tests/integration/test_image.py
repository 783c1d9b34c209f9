"""The container image, built for real from the repository's Dockerfile with podman and run: `probe --help` as its
smoke command, an unprivileged user, the locked dependency versions, and `probe server` from inside the container
against real wireguard-go relays of the lab, one healthy and one with its NAT broken.

No registry is reachable here, so the base image is a local debootstrap of Debian 12 (tests/integration/podman.py
caches it; the first run on a machine takes a few minutes more). The container joins the lab agent's network
namespace with `--network ns:...`, which is how an agent container joins a probing namespace in production too: the
agent config's `netns` key is for processes on the host (entering a namespace needs privileges the image lacks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.podman import Podman

pytestmark = [pytest.mark.integration, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
PREFIX = os.environ.get("WGPROBE_TEST_LAB_PREFIX", "wgi")
IMAGE = f"localhost/wgprobe-test/wgprobe:{PREFIX}"
UID = 10001  # the Dockerfile's user
HEALTHY, BROKEN = "se-got-wg-001", "se-got-wg-002"


@pytest.fixture(scope="module")
def podman() -> Podman:
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (podman storage, the lab's namespaces); run the suite as root")
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is needed (Debian: apt-get install podman runc debootstrap)"
    return Podman()


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    base = podman.ensure_base()
    podman.build(REPO, IMAGE, base)
    return IMAGE


@dataclass
class Lab:
    dir: Path
    agent_netns: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab_dir = tmp_path_factory.mktemp("lab")
    up = [sys.executable, "-m", "probe", "lab", "up", "--dir", str(lab_dir), "--servers", "2"]
    up += ["--fault", f"{BROKEN}:nat", "--prefix", PREFIX]
    done = subprocess.run(up, capture_output=True, text=True, timeout=120, check=False)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        config = tomllib.loads((lab_dir / "agent.toml").read_text())
        yield Lab(lab_dir, config["agent"]["netns"])
    finally:
        down = [sys.executable, "-m", "probe", "lab", "down", "--dir", str(lab_dir), "--prefix", PREFIX]
        subprocess.run(down, capture_output=True, timeout=120, check=False)


@dataclass
class Mounts:
    config: Path  # mounted read-only at /etc/wgprobe
    state: Path  # mounted at /var/lib/wgprobe, the image's working directory

    def options(self, netns: str) -> list[str]:
        # As deploy/compose runs it: read-only root (no tmpfs either), no capabilities, no new privileges.
        return [
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            f"--network=ns:/run/netns/{netns}",
            f"--volume={self.config}:/etc/wgprobe:ro",
            f"--volume={self.state}:/var/lib/wgprobe",
        ]


@pytest.fixture
def mounts(lab: Lab, tmp_path: Path) -> Mounts:
    """The lab's agent config, keys, relay list and labels as the container's user owns them, `netns` dropped (the
    container is in the namespace already), evidence written under the state volume."""
    config, state = tmp_path / "config", tmp_path / "state"
    (config / "keys").mkdir(parents=True)
    state.mkdir()
    shutil.copy(lab.dir / "relays.json", config)
    shutil.copy(lab.dir / "labels.json", config)  # the agent config merges the lab's kernel labels
    for key in (lab.dir / "keys").iterdir():
        shutil.copy(key, config / "keys" / key.name)
        (config / "keys" / key.name).chmod(0o600)
    text = re.sub(r"(?m)^netns\s*=.*\n", "", (lab.dir / "agent.toml").read_text())
    text += '\n[probe]\nevidence_dir = "/var/lib/wgprobe/evidence"\n'
    assert "netns" not in tomllib.loads(text)["agent"]
    (config / "agent.toml").write_text(text)
    for path in (config, state, *config.rglob("*")):
        os.chown(path, UID, UID)
    return Mounts(config, state)


def test_the_smoke_command_prints_the_help(podman: Podman, image: str) -> None:
    # No arguments: the image's CMD is --help, behind the `probe` entrypoint.
    done = podman.run(image, options=["--network=none"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: probe")
    for command in ("server", "sweep", "servers", "reflector", "agent", "aggregator", "serve", "verify"):
        assert command in done.stdout
    for command in ("agent", "aggregator", "serve", "verify"):  # the services' own help, from the image
        helped = podman.run(image, command, "--help", options=["--network=none"])
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: probe {command}"), helped.stderr
    explicit = podman.run(image, "--help", options=["--network=none"])
    assert explicit.returncode == 0 and explicit.stdout == done.stdout


def test_the_image_runs_unprivileged(podman: Podman, image: str) -> None:
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == f"{UID}:{UID}"
    ids = podman.run(
        image,
        "-c",
        "import os; print(os.getuid(), os.getgid(), os.access('/opt/wgprobe', os.W_OK))",
        options=["--network=none", "--entrypoint=python3"],
    )
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.split() == [str(UID), str(UID), "False"]  # and the installed code is not its to change


def test_the_image_holds_the_locked_versions(podman: Podman, image: str) -> None:
    locked: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[_normal(name)] = version
    listing = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    done = podman.run(image, "-c", listing, options=["--network=none", "--entrypoint=/opt/wgprobe/bin/python"])
    assert done.returncode == 0, done.stderr
    installed = {_normal(name): version for name, version in json.loads(done.stdout).items()}
    assert installed.pop("wgprobe") == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert {"pydantic", "cryptography", "aiomqtt", "prometheus-client"} <= installed.keys()
    unlocked = {name: version for name, version in installed.items() if locked.get(name) != version}
    assert unlocked == {}, f"installed versions that constraints.txt does not pin: {unlocked}"
    assert "pip" not in installed and "pytest" not in installed  # no installer, no dev tools in the runtime image


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_probe_server_from_the_container_against_the_lab(podman: Podman, image: str, lab: Lab, mounts: Mounts) -> None:
    options = mounts.options(lab.agent_netns)
    healthy = podman.run(image, "server", HEALTHY, "--config", "/etc/wgprobe/agent.toml", "--json", options=options)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    result = json.loads(healthy.stdout)
    assert result["server"] == HEALTHY and result["ok"] is True
    assert {path["family"] for path in result["paths"]} == {"ipv4", "ipv6"}
    assert all(stage["ok"] for path in result["paths"] for stage in path["stages"])

    broken = podman.run(image, "server", BROKEN, "--config", "/etc/wgprobe/agent.toml", "--json", options=options)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    result = json.loads(broken.stdout)
    assert result["ok"] is False and result["reason"] == "forward_timeout"
    # Handshakes and the tunnel still work on the broken relay: the failure the product exists to see.
    handshakes = [stage["ok"] for path in result["paths"] for stage in path["stages"] if stage["name"] == "handshake"]
    assert handshakes and all(handshakes)
    # The evidence of the failed paths landed on the state volume, written by the container's unprivileged user.
    pcaps = list((mounts.state / "evidence" / BROKEN).glob("*.pcap"))
    assert len(pcaps) == len(result["paths"])
    assert all(pcap.stat().st_uid == UID for pcap in pcaps)


def test_the_human_table_from_the_container(podman: Podman, image: str, lab: Lab, mounts: Mounts) -> None:
    done = podman.run(
        image, "server", HEALTHY, "--config", "/etc/wgprobe/agent.toml", options=mounts.options(lab.agent_netns)
    )
    assert done.returncode == 0, done.stderr
    assert f"{HEALTHY}: OK" in done.stdout
