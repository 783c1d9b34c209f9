"""The project's one exception hierarchy.

Every boundary (netlink, subprocesses, sockets, files, the network) converts what it catches into one of these, so
callers handle `WgProbeError` and nothing foreign escapes a stage or the CLI.
"""


class WgProbeError(Exception):
    """Base of every error wgprobe raises on purpose."""


class ConfigError(WgProbeError):
    """A config file, inventory or command-line value is unusable; the message says which and why."""


class LabError(WgProbeError):
    """The lab could not be built, changed or torn down."""
