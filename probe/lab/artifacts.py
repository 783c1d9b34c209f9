"""Files the lab writes for its users: keys (mode 0600), `relays.json` in the Mullvad app relay-list format, and a
ready agent config per vantage point (`agent.toml`, `agent-2.toml`, ...). The probe reads the lab exactly as it
reads production: through the inventory and config loaders, with nothing lab-specific."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from probe.lab.topology import (
    PORT_RANGES,
    TUNNEL_V4_GATEWAY,
    TUNNEL_V6_GATEWAY,
    AgentPlan,
    LabPlan,
)
from probe.wireguard import PrivateKey


def write_private_key(path: Path) -> str:
    """Create a WireGuard private key file (base64, mode 0600 from the start) unless one exists; return the
    base64 public key. Existing keys are kept so a rebuilt lab keeps its identities."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        key = PrivateKey.from_base64(path.read_text())
    else:
        key = PrivateKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.to_base64() + "\n")
    os.chmod(path, 0o600)
    return key.public_key().to_base64()


# Hosting providers cycle as on Mullvad's list, so a sweep has a label to group failing relays by (the post-mortem's
# shared factor was a kernel version; the app list carries provider, not kernel).
LAB_PROVIDERS = ("31173", "M247", "M247", "31173", "xtom")
# What configuration management would know and the public list does not: the kernel each relay runs. Written as
# labels.json and merged by the inventory's `labels` key, so the fleet view can say which kernel failing relays share.
LAB_KERNELS = ("6.1.0-26", "6.1.0-28", "6.1.0-28", "6.1.0-26", "5.10.0-32")
LABELS_FILE = "labels.json"


def relay_labels(plan: LabPlan) -> dict[str, dict[str, str]]:
    """labels.json: {hostname: {label: value}}, as configuration management writes it (probe/inventory/labels.py)."""
    return {
        relay.name: {"kernel": LAB_KERNELS[(relay.index - 1) % len(LAB_KERNELS)], "os": "debian-12"}
        for relay in plan.relays
    }


def relay_list(plan: LabPlan, public_keys: dict[str, str]) -> dict[str, Any]:
    """The lab fleet as Mullvad's `/app/v1/relays` document (the fields the app and wgprobe read)."""
    return {
        "locations": {
            "se-got": {"country": "Sweden", "city": "Gothenburg", "latitude": 57.70887, "longitude": 11.97456}
        },
        "wireguard": {
            "port_ranges": [[lo, hi] for lo, hi in PORT_RANGES],
            "ipv4_gateway": str(TUNNEL_V4_GATEWAY),
            "ipv6_gateway": str(TUNNEL_V6_GATEWAY),
            "relays": [
                {
                    "hostname": relay.name,
                    "location": "se-got",
                    "active": True,
                    "owned": True,
                    "provider": LAB_PROVIDERS[(relay.index - 1) % len(LAB_PROVIDERS)],
                    "ipv4_addr_in": str(relay.ipv4),
                    "include_in_country": True,
                    "weight": 100,
                    "public_key": public_keys[relay.name],
                    "ipv6_addr_in": str(relay.ipv6),
                }
                for relay in plan.relays
            ],
        },
    }


def agent_toml(plan: LabPlan, agent: AgentPlan) -> str:
    lines = [
        "# Written by `probe lab up`: a ready agent config for this lab's vantage point " + agent.netns + ".",
        "[agent]",
        f'name = "{agent.name}"',
        f'netns = "{agent.netns}"  # probe from this vantage point\'s namespace, even when run from the host',
        "",
    ]
    for ident in agent.identities:
        lines += [
            "[[identities]]",
            f'private_key_file = "{ident.key_file}"',
            f'ipv4 = "{ident.ipv4}"',
            f'ipv6 = "{ident.ipv6}"',
            "",
        ]
    lines += [
        "[inventory]",
        'source = "relays.json"',
        f'labels = "{LABELS_FILE}"  # kernel and OS per relay, merged into the inventory\'s labels',
        "",
        "[checks]",
        f'forward_target = "{plan.outside_ipv4}"',
        f'forward_target_v6 = "{plan.outside_ipv6}"',
        f'reflector = "{plan.outside_ipv4}:{plan.reflector_port}"',
        f'reflector_v6 = "[{plan.outside_ipv6}]:{plan.reflector_port}"',
        "",
    ]
    return "\n".join(lines)


def write_artifacts(lab_dir: Path, plan: LabPlan) -> dict[str, str]:
    """Write keys, relays.json and agent configs; return {relay name: relay public key}."""
    relay_keys = {relay.name: write_private_key(lab_dir / "relays" / f"{relay.name}.key") for relay in plan.relays}
    (lab_dir / "relays.json").write_text(json.dumps(relay_list(plan, relay_keys), indent=2) + "\n")
    (lab_dir / LABELS_FILE).write_text(json.dumps(relay_labels(plan), indent=2) + "\n")
    for agent in plan.agents:
        (lab_dir / agent.config_file).write_text(agent_toml(plan, agent))
    return relay_keys


def identity_public_keys(lab_dir: Path, plan: LabPlan) -> list[tuple[str, str]]:
    """(public key, allowed-ips) of every agent identity, creating keys that do not exist yet."""
    peers = []
    for agent in plan.agents:
        for ident in agent.identities:
            public = write_private_key(lab_dir / ident.key_file)
            peers.append((public, f"{ident.ipv4}/32,{ident.ipv6}/128"))
    return peers
