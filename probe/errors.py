"""The project's one exception hierarchy.

Every boundary (netlink, subprocesses, sockets, files, the network) converts what it catches into one of these, so
callers handle `WgProbeError` and nothing foreign escapes a stage or the CLI.
"""

# Exit codes of every command, documented once here and in the README: they say who is at fault.
EXIT_OK = 0  # every relay judged and every path ok
EXIT_FAILED = 1  # a relay failed: the relay's fault
EXIT_USAGE = 2  # usage or config error: the operator's to fix
EXIT_UNJUDGED = 3  # could not judge: the inventory is unreachable, or the agent's own network is down
EXIT_BUG = 70  # a bug in wgprobe (EX_SOFTWARE of sysexits.h): never mistaken for a verdict


class WgProbeError(Exception):
    """Base of every error wgprobe raises on purpose."""


class ConfigError(WgProbeError):
    """A config file, inventory or command-line value is unusable; the message says which and why."""


class LabError(WgProbeError):
    """The lab could not be built, changed or torn down."""


class UnavailableError(WgProbeError):
    """Something wgprobe depends on outside the relays (the inventory source, the agent's own network) is
    unreachable: nothing can be said about the relays, so the commands exit with EXIT_UNJUDGED, never "failed"."""
