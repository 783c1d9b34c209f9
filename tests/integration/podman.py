"""Podman for the image test, on a machine with no container registry: Debian's podman with runc, its storage in a
cache directory of its own, and a Debian 12 base image made locally with debootstrap.

The base is what costs time (a debootstrap, then an import), so it is cached between runs under
$WGPROBE_TEST_CACHE (default /var/cache/wgprobe-test): the debootstrapped tree as a tarball, and podman's storage
with the imported base and the build's layer cache. A machine pays for it once; removing the directory is always
safe. A file lock keeps two test runs from making the base at once.
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("WGPROBE_TEST_CACHE", "/var/cache/wgprobe-test"))
BASE_TAG = "localhost/wgprobe-test/debian:bookworm"
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What `debian:*-slim` leaves out of a minbase tree, and what a fresh tree must not carry into an image.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info")


def apt_mirror(sources: Path = HOST_SOURCES, sources_list: Path = Path("/etc/apt/sources.list")) -> str:
    """The Debian mirror apt already uses here (deb822 or one-line format), for the suite's main archive."""
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields: dict[str, str] = dict(re.findall(r"(?m)^(\w[\w-]*):\s*(.*)$", stanza))
            uris = fields.get("URIs", "").split()
            if SUITE in fields.get("Suites", "").split() and uris:
                return uris[0]
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()  # "deb [options] URI SUITE COMPONENTS..."
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return FALLBACK_MIRROR


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def debootstrap_tarball(cache: Path = CACHE) -> Path:
    """A minimal Debian 12 root filesystem as a tarball, made once per machine."""
    tarball = cache / f"debian-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    work = Path(tempfile.mkdtemp(dir=cache, prefix="rootfs."))
    try:
        rootfs = work / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), apt_mirror()],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        for relative in TRIM:
            shutil.rmtree(rootfs / relative, ignore_errors=True)
            (rootfs / relative).mkdir(parents=True)
        if HOST_SOURCES.exists():
            # The same archives as the host (updates and security included), as a debian:bookworm-slim image has.
            shutil.copyfile(HOST_SOURCES, rootfs / "etc/apt/sources.list.d/debian.sources")
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        partial = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def _ulimit(kind: int, name: str, ceiling: int) -> str:
    # Podman asks runc for its own defaults (nofile 1048576, nproc 4194304), which this host's limits refuse with
    # "error setting rlimit type 7: operation not permitted": ask for values well under the host's hard limits.
    hard = resource.getrlimit(kind)[1]
    value = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    return f"{name}={value}:{value}"


ULIMITS = (
    "--ulimit",
    _ulimit(resource.RLIMIT_NOFILE, "nofile", 4096),
    "--ulimit",
    _ulimit(resource.RLIMIT_NPROC, "nproc", 4096),
)


@dataclass(frozen=True)
class Podman:
    """podman with runc (crun fails on this host's cgroup setup) and storage under the cache directory."""

    cache: Path = CACHE

    def command(self, *args: str) -> list[str]:
        state = self.cache / "containers"
        return [
            "podman",
            "--runtime",
            "runc",
            "--root",
            str(state / "storage"),
            "--runroot",
            str(state / "run"),
            "--tmpdir",
            str(state / "tmp"),
            "--events-backend",
            "file",
            "--cgroup-manager",
            "cgroupfs",
            *args,
        ]

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False, input=input
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])}... exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done

    def run(
        self, image: str, *args: str, options: Sequence[str] = (), timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`podman run --rm` with the host's workable ulimits; the caller checks the exit code."""
        return self("run", "--rm", *ULIMITS, *options, image, *args, timeout=timeout, check=False)

    def has_image(self, tag: str) -> bool:
        return self("image", "exists", tag, check=False).returncode == 0

    def ensure_base(self) -> str:
        """The local Debian 12 base image: imported from the cached tarball, debootstrapped first if need be."""
        with locked(self.cache / "base.lock"):
            if not self.has_image(BASE_TAG):
                tarball = debootstrap_tarball(self.cache)
                self("import", str(tarball), BASE_TAG, timeout=600)
        return BASE_TAG

    def build(self, context: Path, tag: str, base: str) -> subprocess.CompletedProcess[str]:
        """Build the Dockerfile in `context` on the local base. The host's CA bundle goes in as a build secret: pip in
        the build reaches PyPI through the same TLS-intercepting egress as the host, and the secret never enters a
        layer. Host networking: the build only needs what the host reaches (the Debian mirror and PyPI)."""
        secret = [f"--secret=id=ca-bundle,src={HOST_CA_BUNDLE}"] if HOST_CA_BUNDLE.exists() else []
        done = self(
            "build",
            "--network",
            "host",
            *secret,
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--tag",
            tag,
            str(context),
            timeout=1500,
        )
        # Images a day old that no tag names any more: bounds what repeated builds leave in the cache.
        self("image", "prune", "--force", "--filter", "until=24h", check=False)
        return done
