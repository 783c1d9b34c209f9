"""wgprobe: end-to-end connectivity probing for fleets of WireGuard VPN relays.

Importing this package starts nothing and imports nothing heavy: the CLI, the lab and the agent load what they
need when they run. A test (tests/unit/test_imports.py) holds that line.
"""

__version__ = "0.1.0"
