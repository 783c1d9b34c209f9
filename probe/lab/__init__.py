"""The lab: a fleet of real wireguard-go relays in network namespaces, with NAT, extended entry port ranges and
injectable faults. Nothing here runs on import; `probe lab up` builds it (see fleet.py and topology.py)."""
