#!/usr/bin/env bash
# The whole test suite: lint, types, then every test tier (unit, in-memory, lab). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check probe agents tests bench
ruff format --check probe agents tests bench
mypy
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
