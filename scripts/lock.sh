#!/usr/bin/env bash
# Re-resolve the Python dependencies from pyproject.toml in a scratch venv and write constraints.txt: the exact
# versions scripts/setup.sh (and so CI) installs. Run after changing dependencies; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q --disable-pip-version-check '.[dev]' 'setuptools>=77' pip
{
  echo "# Exact versions CI tests with; written by scripts/lock.sh from pyproject.toml. Do not edit by hand."
  "$scratch/venv/bin/pip" freeze --all --exclude wgprobe | sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
