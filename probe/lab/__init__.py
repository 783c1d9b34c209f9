"""The lab: a fleet of real wireguard-go relays in network namespaces, with NAT, extended entry port ranges and
injectable faults. Nothing here runs on import; `probe lab up` builds it (see fleet.py and topology.py)."""

# Defaults of `probe lab up`, here rather than in topology.py: every `probe` command builds its argument parser,
# and the lab's planning module is not worth importing for two constants.
DEFAULT_PREFIX = "wgp"
# Keys per agent: a key probes one path of a relay at a time (one session and endpoint per relay), so the paths of
# one `probe server` run (12 on a dual-stack Mullvad relay) are spread over this many keys running side by side:
# two paths per key, so one 25 ms flood-limit gap per run.
DEFAULT_IDENTITIES = 6
