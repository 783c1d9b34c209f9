#!/usr/bin/env bash
# The main job on the built-in lab: install what is needed, build a fleet of real wireguard-go relays with two
# faults injected (se-got-wg-002 stops NATing, se-got-wg-003 loses its extended port ranges), sweep the fleet, then
# probe one relay the way an engineer would during an incident. The lab stays up afterwards: play with it
# (probe lab break/heal, probe server ...) and remove it with `.venv/bin/probe lab down`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

probe lab up --servers 5 --fault se-got-wg-002:nat --fault se-got-wg-003:ports
echo
echo "== probe sweep --config lab/agent.toml   (every relay, every path, failures grouped by reason and label)"
probe sweep --config lab/agent.toml || true
echo
echo "== probe server se-got-wg-002 --config lab/agent.toml   (the engineer's one-off command)"
probe server se-got-wg-002 --config lab/agent.toml || true
echo
echo "== probe server se-got-wg-001 --config lab/agent.toml --json --port 51820 --family ipv4"
probe server se-got-wg-001 --config lab/agent.toml --json --port 51820 --family ipv4
echo
echo "The lab is still up: try 'probe lab break se-got-wg-004 egress', 'probe lab status', 'probe lab down'"
echo "(with PATH=\$PWD/.venv/bin:\$PATH, or .venv/bin/probe)."
