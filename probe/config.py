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

Paths in the file are relative to the file's own directory, so a config travels with its keys. `find_config` looks
for the file: --config, then $WGPROBE_CONFIG, then ./agent.toml. Every error a user must fix is a ConfigError that
names the file, the key and the fix. IP addresses are strings: pydantic would read `ipv4 = 12` as 0.0.0.12.
"""

import os
import re
import stat
import tomllib
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from probe.addresses import Endpoint, IPv4Field, IPv6Field
from probe.errors import ConfigError
from probe.inputs import InputError, check_nesting, read_regular_file
from probe.validation import describe_validation_error
from probe.wireguard.constants import KEY_SIZE
from probe.wireguard.errors import InvalidKeyError
from probe.wireguard.keys import decode_base64_key

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "AgentConfig",
    "AgentSection",
    "ChecksSection",
    "Endpoint",
    "Identity",
    "InventorySection",
    "ProbeSection",
    "find_config",
    "load_config",
    "read_private_key",
]

CONFIG_ENV = "WGPROBE_CONFIG"
DEFAULT_CONFIG = "agent.toml"
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# A config of a thousand identities is a few hundred kB; a key file is one line.
_CONFIG_MAX_BYTES = 1 << 20
_KEY_FILE_MAX_BYTES = 4096


def _endpoint(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic reports only the former as a validation error.
        raise ValueError("expected a string HOST:PORT")
    return Endpoint.parse(value)


EndpointField = Annotated[Endpoint, PlainValidator(_endpoint), PlainSerializer(str, return_type=str)]


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    # load_config passes the config file's directory as validation context; without it (a model built in code)
    # paths stay as given.
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    path = path.expanduser()
    return base / path if isinstance(base, Path) and not path.is_absolute() else path


def check_agent_name(name: str) -> str:
    if not _AGENT_NAME.fullmatch(name):
        # It names MQTT topics and metric labels, where '/', '+', '#' and spaces have meanings of their own.
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class AgentSection(_Section):
    name: Annotated[str, AfterValidator(check_agent_name)]
    # Open probe sockets inside this network namespace (as `ip netns` names it): a prober host may keep its probing
    # in a namespace of its own, and the lab's agent configs use it so `probe server` works from the root namespace.
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Identity(_Section):
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


class InventorySection(_Section):
    source: str = Field(min_length=1)  # a path (made absolute by load_config) or an http(s) URL
    include_inactive: bool = False
    # How often a long-running agent reloads the source; a URL is fetched with If-None-Match, so this is cheap.
    refresh_interval: float = Field(default=300.0, ge=1.0)

    @field_validator("source")
    @classmethod
    def _resolve_source(cls, source: str, info: ValidationInfo) -> str:
        if source.startswith(("http://", "https://")):
            return source
        if "://" in source:
            raise ValueError("use a file path or an http:// or https:// URL")
        return str(resolve_path(Path(source), info))

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


class ChecksSection(_Section):
    forward_target: IPv4Field
    forward_target_v6: IPv6Field | None = None
    reflector: EndpointField | None = None  # no reflector: the egress check is not run
    reflector_v6: EndpointField | None = None  # for the IPv6 egress check when `reflector` is IPv4

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


class ProbeSection(_Section):
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


class AgentConfig(_Section):
    agent: AgentSection
    identities: tuple[Identity, ...]
    inventory: InventorySection
    checks: ChecksSection
    # A dict, validated, rather than ProbeSection(): a default instance would skip the path resolution above.
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
    def _identities_are_distinct(self) -> "AgentConfig":
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


def read_private_key(path: Path) -> bytes:
    """The 32 bytes of a base64 WireGuard private key file, refusing files others can read.

    No message shows any of the file's content, not even the byte that is wrong: it is a secret even when malformed.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"key file {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"key file {path} is not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}, which lets group or other users read a private "
            f"key; run: chmod 600 {path}"
        )
    try:
        content = read_regular_file(path, max_bytes=_KEY_FILE_MAX_BYTES)
        return decode_base64_key(content, "private")
    except InputError as e:
        raise ConfigError(f"key file {path}: {e}") from None
    except InvalidKeyError as e:
        raise ConfigError(f"key file {path}: {e}; expected one line as printed by `wg genkey`") from None


M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's TOML (agent or aggregator): bounded, a regular file, not nested absurdly; ConfigError
    naming the file for every way it can be unreadable."""
    try:
        text = read_regular_file(path, max_bytes=_CONFIG_MAX_BYTES).decode("utf-8")
        data = tomllib.loads(text)
        check_nesting(data)
    except InputError as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError, TOMLDecodeError, the 4300-digit limit on integers
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return data


def validate_file(model: type[M], path: Path) -> M:
    """`path` read and validated as `model`, relative paths resolved against the file's directory; every problem
    named by key, all of them in one ConfigError."""
    data = read_toml(path)
    try:
        return model.model_validate(data, context={"base_dir": path.absolute().parent})
    except ValidationError as e:
        found = describe_validation_error(e, model=model)
        problems = [f"{where}: {message}" if where else message for where, message in found]
        if len(problems) == 1:
            raise ConfigError(f"{path}: {problems[0]}") from None
        raise ConfigError(f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems)) from None


def load_config(path: Path) -> AgentConfig:
    """Read, validate and resolve an agent config, and load its identities' private keys."""
    config = validate_file(AgentConfig, path)
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
