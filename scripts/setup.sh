#!/usr/bin/env bash
# Install everything wgprobe needs on a fresh Debian 12 machine (as root) and create the project venv in .venv.
# Idempotent and quick when everything is already there. Never installs anything by hand-picked download: system
# packages come from Debian with --no-install-recommends, Python packages from PyPI into the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (the lab builds network namespaces and installs Debian packages)" >&2
  exit 2
fi

# wireguard-go/wireguard-tools: the lab's relays; nftables: their NAT, port redirects and faults; iptables: the NFQUEUE
# target of the delay fault (this kernel has no nft queue); iproute2: netns;
# tcpdump/tshark: captures in lab tests and evidence checks; mosquitto and prometheus (promtool): later tiers;
# chromium: the status page tests drive Debian's browser with Playwright (Playwright's own browser download is not used).
# podman/runc/debootstrap: the container image test (a local Debian base, no registry needed).
pkgs=(wireguard-go wireguard-tools nftables iptables iproute2 tcpdump tshark mosquitto prometheus chromium python3-venv
  procps iputils-ping podman runc debootstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.wgprobe-installed
# constraints.txt pins every Python package CI tested with, the build backend included (PIP_CONSTRAINT reaches
# pip's isolated build environment too): a new release cannot change behaviour or speed behind our back.
# Regenerate it with scripts/lock.sh after changing dependencies in pyproject.toml.
export PIP_CONSTRAINT="$PWD/constraints.txt"
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
