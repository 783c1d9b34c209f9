"""The agent's config file: TOML, validated by pydantic models with extra="forbid"; defaults live on the models.

    [agent]
    name = "lab-agent"
    [[identities]]                       # one or more keys registered on the relays
    private_key_file = "keys/lab-agent-1.key"
    ipv4 = "10.64.0.2"
    ipv6 = "fc00:bbbb:bbbb:bb01::2"
    [inventory]
    source = "relays.json"               # path or http(s) URL
    [checks]
    forward_target = "198.18.0.2"        # answers ICMP echo beyond the relays' NAT
    forward_target_v6 = "fd77::2"
    reflector = "198.18.0.2:7777"        # `probe reflector`, for the egress check; or "[v6addr]:port"
    [probe]                              # all optional; the defaults are on ProbeSection
    evidence_dir = "evidence"            # pcaps and JSON of failed probes
    evidence_path_max_bytes = 1048576    # cap of one path's pcap: the first packets are kept, the rest counted
    evidence_max_bytes = 268435456       # the evidence wgprobe keeps in evidence_dir, in all (oldest removed first)
    evidence_max_age_hours = 168         # evidence older than this is removed
    # The long-running agent (`probe agent`, `probe serve`) only; models in probe/agent_config.py:
    [schedule]
    interval_seconds = 15                # every relay's main port, both families, once per interval
    concurrency = 64                     # relays probed at once, at most
    [mqtt]                               # probe/service_config.py: the same table as in aggregator.toml
    url = "mqtts://broker.example.net"
    username = "agent-se-got"
    password_file = "mqtt.password"      # mode 0600
    [http]
    listen = "127.0.0.1:9108"            # the agent's /metrics and /probe?target=NAME
    [spool]
    path = "spool.sqlite"                # results the broker has not acknowledged yet
    max_bytes = 67108864                 # bounds for a long outage: oldest dropped first, and counted
    max_age_hours = 24

Paths in the file are relative to the file's own directory, so a config travels with its keys. `find_config` looks
for the file: --config, then $WGPROBE_CONFIG, then ./agent.toml. Every error a user must fix is a ConfigError that
names the file, the key and the fix. IP addresses are strings: pydantic would read `ipv4 = 12` as 0.0.0.12.
"""

import os
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Annotated, Self, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from probe.addresses import Endpoint, IPv4Field, IPv6Field
from probe.configfile import (
    EndpointField,
    Section,
    check_agent_name,
    check_secret_file,
    read_toml,
    resolve_path,
    validate_data,
)
from probe.errors import ConfigError
from probe.inputs import InputError, read_regular_file
from probe.wireguard.constants import KEY_SIZE
from probe.wireguard.errors import InvalidKeyError
from probe.wireguard.keys import decode_base64_key

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "AgentSection",
    "ChecksSection",
    "Endpoint",
    "Identity",
    "InventorySection",
    "ProbeConfig",
    "ProbeSection",
    "find_config",
    "load_probe_config",
    "read_private_key",
    "with_keys",
]

CONFIG_ENV = "WGPROBE_CONFIG"
DEFAULT_CONFIG = "agent.toml"
# A key file is one line.
_KEY_FILE_MAX_BYTES = 4096
C = TypeVar("C", bound="ProbeConfig")


class AgentSection(Section):
    name: Annotated[str, AfterValidator(check_agent_name)]
    # Open probe sockets inside this network namespace (as `ip netns` names it): a prober host may keep its probing
    # in a namespace of its own, and the lab's agent configs use it so `probe server` works from the root namespace.
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Identity(Section):
    """A WireGuard key this agent probes with, and the tunnel addresses the relays allow for it.

    The private key is read from its file by `load_config` and held in a private attribute: it is not a field, so it
    can neither be written in the TOML nor appear in repr(), str() or model_dump().
    """

    private_key_file: Path
    ipv4: IPv4Field
    ipv6: IPv6Field | None = None

    _private_key: bytes | None = PrivateAttr(default=None)

    _resolve_key_file = field_validator("private_key_file")(resolve_path)

    @classmethod
    def with_private_key(cls, private_key: bytes, *, ipv4: IPv4Address, ipv6: IPv6Address | None = None) -> "Identity":
        """An identity built in code (tests, the lab) rather than loaded from a key file."""
        if len(private_key) != KEY_SIZE:
            raise ConfigError(f"a WireGuard private key is {KEY_SIZE} bytes, got {len(private_key)}")
        identity = cls(private_key_file=Path("<memory>"), ipv4=ipv4, ipv6=ipv6)
        identity._private_key = private_key
        return identity

    @property
    def private_key(self) -> bytes:
        if self._private_key is None:
            raise ConfigError(f"identity {self.ipv4}: private key not loaded (use load_config)")
        return self._private_key


def _resolve_location(location: str | None, info: ValidationInfo) -> str | None:
    """A file path (relative to the config file) or an http(s) URL, as `source` and `labels` are written."""
    if location is None or location.startswith(("http://", "https://")):
        return location
    if "://" in location:
        raise ValueError("use a file path or an http:// or https:// URL")
    return str(resolve_path(Path(location), info))


class InventorySection(Section):
    """`[inventory]`, the same table in agent.toml and aggregator.toml."""

    source: str = Field(min_length=1)  # a path (made absolute by load_config) or an http(s) URL
    include_inactive: bool = False
    # How often a long-running agent or aggregator reloads the source (and on SIGHUP); a URL is fetched with
    # If-None-Match, so this is cheap.
    refresh_seconds: float = Field(default=300.0, ge=1.0, le=86400.0)
    # Labels (kernel, os, site...) keyed by hostname from a second source that configuration management writes,
    # merged over the inventory's own: public relay lists carry no kernel or OS, which is what the 2020-04-27
    # post-mortem needed an hour to find. A file path or an http(s) URL (probe/inventory/labels.py).
    labels: str | None = Field(default=None, min_length=1)

    _resolve = field_validator("source", "labels")(_resolve_location)

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


class ChecksSection(Section):
    forward_target: IPv4Field
    forward_target_v6: IPv6Field | None = None
    reflector: EndpointField | None = None  # no reflector: the egress check is not run
    reflector_v6: EndpointField | None = None  # for the IPv6 egress check when `reflector` is IPv4

    @field_validator("forward_target", "forward_target_v6", "reflector", "reflector_v6")
    @classmethod
    def _one_host(cls, value: IPv4Address | IPv6Address | Endpoint | None) -> object:
        # 0.0.0.0 or :: reaches this host itself, so the control check passes and every relay is blamed; no single
        # host answers for a multicast address. Loopback stays allowed: the simulated fleet answers for it.
        host = value.host if isinstance(value, Endpoint) else value
        if host is not None and (host.is_unspecified or host.is_multicast):
            kind = "an unspecified" if host.is_unspecified else "a multicast"
            raise ValueError(f"{host} is {kind} address, not a host beyond the relays' NAT")
        return value

    @field_validator("reflector_v6")
    @classmethod
    def _reflector_v6_is_v6(cls, endpoint: Endpoint | None) -> Endpoint | None:
        if endpoint is not None and endpoint.host.version != 6:
            raise ValueError(f"{endpoint} is not an IPv6 endpoint; write [V6ADDR]:PORT")
        return endpoint

    def reflector_for(self, version: int) -> Endpoint | None:
        """The reflector to use for the egress check over IPv4 (4) or IPv6 (6), if any."""
        for endpoint in (self.reflector_v6, self.reflector) if version == 6 else (self.reflector,):
            if endpoint is not None and endpoint.host.version == version:
                return endpoint
        return None


class ProbeSection(Section):
    main_port: Annotated[int, Field(ge=1, le=65535, strict=True)] | None = None  # overrides the inventory's
    timeout: float = Field(default=1.0, gt=0, le=60)  # seconds to wait for the replies of one stage
    packets: int = Field(default=3, ge=1, le=100, strict=True)  # packets sent per stage
    # Initiations are retransmitted with backoff until one is answered (probe/wireguard/attempts.py): the gap
    # grows from a few round trips of the relay up to `handshake_timeout` seconds, `handshake_attempts` at most.
    # Seven reach 20% loss each way with a per-path failure chance of 0.36**7, under 0.1%.
    handshake_timeout: float = Field(default=1.0, gt=0, le=60)
    handshake_attempts: int = Field(default=7, ge=1, le=20, strict=True)
    # pcaps and dissections of failed probes; validate_default so the default, too, is relative to the config
    evidence_dir: Path = Field(default=Path("evidence"), validate_default=True)

    # Bounds on evidence (see probe/evidence.py): one path's pcap keeps its first packets up to this size...
    evidence_path_max_bytes: int = Field(default=1 << 20, ge=1024, strict=True)
    # ...and what wgprobe keeps in evidence_dir, in all and by age, is pruned oldest first.
    evidence_max_bytes: int = Field(default=256 << 20, ge=1 << 20, strict=True)
    evidence_max_age_hours: float = Field(default=168.0, gt=0)

    _resolve_evidence_dir = field_validator("evidence_dir")(resolve_path)

    @model_validator(mode="after")
    def _one_path_fits_in_the_total(self) -> "ProbeSection":
        if self.evidence_path_max_bytes > self.evidence_max_bytes:
            raise ValueError(
                f"evidence_path_max_bytes ({self.evidence_path_max_bytes}) is larger than evidence_max_bytes "
                f"({self.evidence_max_bytes}): one path's evidence would be removed as soon as it is written"
            )
        return self


class ProbeConfig(Section):
    """What probing needs: the agent, its keys, the relays, the checks beyond them and the probe's settings.

    `probe server`, `sweep`, `servers` and `verify` validate a file through this model alone when it has none of the
    service's tables (`load_probe_config`): defining the agent's whole model (probe/agent_config.py) with the [mqtt]
    and [http] tables it shares with the aggregator, and building its validator, cost 17 M instructions of start-up
    (2% of `probe server`).
    """

    agent: AgentSection
    identities: tuple[Identity, ...]
    inventory: InventorySection
    checks: ChecksSection
    # A dict, validated, rather than ProbeSection(): a default instance would skip the path resolution above, and
    # would build that section's own validator besides this model's (start-up time: one config per run).
    probe: ProbeSection = Field(default_factory=dict, validate_default=True)

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("identities")
    @classmethod
    def _at_least_one(cls, identities: tuple[Identity, ...]) -> tuple[Identity, ...]:
        # Not Field(min_length=1): pydantic would also report an empty list when an entry fails to validate.
        if not identities:
            raise ValueError("at least one [[identities]] table is needed")
        return identities

    @model_validator(mode="after")
    def _identities_are_distinct(self) -> Self:
        # One key has one session per relay (DESIGN.md), and a relay routes each tunnel address to one key.
        for attr in ("private_key_file", "ipv4", "ipv6"):
            values = [getattr(identity, attr) for identity in self.identities]
            seen = [v for v in values if v is not None]
            duplicate = next((v for v in seen if seen.count(v) > 1), None)
            if duplicate is not None:
                raise ValueError(f"two identities share {attr} {duplicate}; each needs its own")
        return self

    @property
    def path(self) -> Path | None:
        """The file this config was loaded from."""
        return self._path


# A file with any other table (the agent's [schedule], [mqtt], [http], [spool], or a mistake) is validated whole.
_PROBE_TABLES = frozenset(ProbeConfig.model_fields)


def read_private_key(path: Path) -> bytes:
    """The 32 bytes of a base64 WireGuard private key file, refusing files others can read.

    No message shows any of the file's content, not even the byte that is wrong: it is a secret even when malformed.
    """
    check_secret_file(path, "key file", "a private key")
    try:
        content = read_regular_file(path, max_bytes=_KEY_FILE_MAX_BYTES)
        return decode_base64_key(content, "private")
    except InputError as e:
        raise ConfigError(f"key file {path}: {e}") from None
    except InvalidKeyError as e:
        raise ConfigError(f"key file {path}: {e}; expected one line as printed by `wg genkey`") from None


def load_probe_config(path: Path) -> ProbeConfig:
    """As `load_config` (probe/agent_config.py), for the commands that only probe: a file with only ProbeConfig's
    tables is validated as a ProbeConfig; anything else as the whole AgentConfig, so a mistake in [mqtt] is refused
    here too, and an unknown table is told every table there is."""
    data = read_toml(path)
    if not _PROBE_TABLES.issuperset(data):  # a service table, or a key no model knows: refused naming them all
        from probe.agent_config import AgentConfig

        return with_keys(validate_data(AgentConfig, data, path), path)
    return with_keys(validate_data(ProbeConfig, data, path), path)


def with_keys(config: C, path: Path) -> C:
    """`config`, read from `path`, with its identities' private keys loaded."""
    keys: dict[bytes, int] = {}
    for index, identity in enumerate(config.identities):
        try:
            key = read_private_key(identity.private_key_file)
        except ConfigError as e:
            raise ConfigError(f"{path}: identities[{index}].private_key_file: {e}") from None
        if key in keys:
            raise ConfigError(
                f"{path}: identities[{index}] uses the same private key as identities[{keys[key]}]; "
                "each identity needs its own key"
            )
        keys[key] = index
        identity._private_key = key  # private attributes stay writable on frozen models, by design
    config._path = path
    return config


def find_config(explicit: Path | None) -> Path:
    """The config file to use: --config, else $WGPROBE_CONFIG, else ./agent.toml."""
    if explicit is not None:
        return _must_exist(explicit, "--config")
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return _must_exist(Path(from_env), f"${CONFIG_ENV}")
    local = Path.cwd() / DEFAULT_CONFIG
    if local.is_file():
        return local
    raise ConfigError(
        f"no agent config found; looked at: --config (not given), ${CONFIG_ENV} (not set), {local} (no such file). "
        f"Pass --config FILE or set {CONFIG_ENV}."
    )


def _must_exist(path: Path, origin: str) -> Path:
    # A config named explicitly must be that config: falling back to another file would probe with the wrong keys.
    if not path.exists():
        raise ConfigError(f"config file {path} (from {origin}) does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} (from {origin}) is not a file")
    return path.absolute()
