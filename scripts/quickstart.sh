#!/usr/bin/env bash
# The main job on the built-in lab: install what is needed, build a fleet of real wireguard-go relays with two
# faults injected (se-got-wg-002 stops NATing, se-got-wg-003 loses its extended port ranges), then run `probe serve`
# against it: the agent probes every relay on its schedule and the aggregator judges them and serves the status
# page and /metrics. Stop it with Ctrl-C; the lab stays up (play with `probe lab break/heal`, `probe server ...`)
# until `.venv/bin/probe lab down`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

probe lab up --servers 5 --fault se-got-wg-002:nat --fault se-got-wg-003:ports
echo
echo "== probe server se-got-wg-002 --config lab/agent.toml   (the engineer's one-off command, for comparison)"
probe server se-got-wg-002 --config lab/agent.toml --port 51820 || true
echo
listen=127.0.0.1:9108  # [http] listen of lab/agent.toml (the default)
cat <<EOF
== probe serve --config lab/agent.toml   (agent + aggregator in one process, no broker)

Look at:
  http://$listen/          the status page: within 30 s se-got-wg-002 turns red (forward_timeout: the NAT),
                           se-got-wg-003 yellow (port_unreachable on the extended ranges), and the labels the
                           failing relays share (kernel=6.1.0-28, provider=M247) are listed above the fleet
  http://$listen/metrics   wgprobe_server_up, wgprobe_stage_success, ... (Prometheus text)
  http://$listen/api/v1/servers
(From another machine: ssh -L 9108:$listen this-host, then the same URLs on localhost.)
Try meanwhile, in another shell:  .venv/bin/probe lab break se-got-wg-004 egress   /   .venv/bin/probe lab heal se-got-wg-002
Ctrl-C stops probe serve; the lab stays up until: .venv/bin/probe lab down

EOF
exec probe serve --config lab/agent.toml
