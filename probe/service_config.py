"""The tables the long-running services share ([mqtt], [http]) and the aggregator's config file.

`[mqtt]` and `[http]` are a contract between the agent's `agent.toml` and the aggregator's `aggregator.toml`: the
same keys, the same meaning. The aggregator's file, whole:

    [aggregator]
    name = "agg-1"                      # names its MQTT client: aggregators side by side need distinct names
    [mqtt]
    url = "mqtts://broker.example.net"  # mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (8883, TLS verified)
    username = "agg-1"                  # optional
    password_file = "mqtt.password"     # optional; mode 0600: the password is never written in this file
    ca_file = "ca.pem"                  # optional, mqtts:// only: a private CA (default: the system's CAs)
    client_id = "wgprobe-agg-1"         # optional; default wgprobe-<name>
    [http]
    listen = "127.0.0.1:9109"           # /metrics, the API and the status page; loopback by default
    [inventory]
    source = "relays.json"              # as in agent.toml: a path or an http(s) URL
    include_inactive = false
    labels = "labels.json"              # optional: {hostname: {label: value}} from configuration management
    [health]
    quorum = "majority"                 # or a number of agents that must see a relay failing to call it down
    stale_after_intervals = 3           # results older than this many intervals are stale
    interval_seconds = 15               # the agents' [schedule] interval_seconds (an agent's status overrides)
    history = 50                        # health changes kept per relay

Paths are relative to the config file's directory, as in agent.toml. Secrets come only from files, and a secret
file others can read is refused (the same rule as key files). TLS is verified whenever the URL says mqtts://; there
is deliberately no switch to turn verification off: a private CA goes in `ca_file`.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from probe.addresses import Endpoint
from probe.config import EndpointField, InventorySection, check_agent_name, resolve_path, validate_file
from probe.errors import ConfigError

MQTT_PORT = 1883
MQTTS_PORT = 8883
MAX_INTERVAL_SECONDS = 86400.0  # a probing schedule slower than daily is a mistake, in a config or a status
AGENT_HTTP_LISTEN = "127.0.0.1:9108"
# Another port than the agent's, so an agent and an aggregator on one host (the lab) do not collide by default.
AGGREGATOR_HTTP_LISTEN = "127.0.0.1:9109"
_MAX_SECRET_FILE = 4096
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A password in the URL would sit in a config file that is usually world-readable, and in every error that quotes
# the URL: MqttSection refuses it before the URL is parsed, with a message that does not repeat it.
_CREDENTIALS_IN_URL = "url holds credentials (USER:PASSWORD@); use username and password_file (url not shown here)"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class BrokerUrl:
    """Where the MQTT broker is: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)."""

    scheme: Literal["mqtt", "mqtts"]
    host: str  # a hostname or an IP address, without brackets
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        if "://" not in text:
            raise ValueError("write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as e:  # a port that is not a number or out of range
            raise ValueError(f"not a valid URL: {e}") from None
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"unsupported scheme {parts.scheme!r}; use mqtt:// or mqtts:// (TLS)")
        if "@" in parts.netloc:
            raise ValueError(_CREDENTIALS_IN_URL)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("only mqtt(s)://HOST[:PORT]: no path, query or fragment")
        host = parts.hostname or ""
        if not host:
            raise ValueError("no host: write mqtt://HOST[:PORT]")
        if "[" in parts.netloc:
            try:
                IPv6Address(host)
            except ValueError:
                raise ValueError(f"[{host}] is not an IPv6 address; brackets are for IPv6 only") from None
        elif not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a hostname or IP address")
        scheme: Literal["mqtt", "mqtts"] = "mqtts" if parts.scheme == "mqtts" else "mqtt"
        default = MQTTS_PORT if scheme == "mqtts" else MQTT_PORT
        return cls(scheme=scheme, host=host, port=default if port is None else port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _broker_url(value: Any) -> BrokerUrl:
    if isinstance(value, BrokerUrl):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    return BrokerUrl.parse(value)


BrokerUrlField = Annotated[BrokerUrl, PlainValidator(_broker_url), PlainSerializer(str, return_type=str)]


def read_secret_file(path: Path, what: str) -> str:
    """The text of a secret file (one line; a trailing newline is not part of it), refusing files others can read.

    No message here quotes the file's content: it is a secret even when malformed.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path} has mode {stat.S_IMODE(mode):04o}, which lets group or other users read a secret; "
            f"run: chmod 600 {path}"
        )
    try:
        with path.open("rb") as file:
            raw = file.read(_MAX_SECRET_FILE + 1)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from None
    if len(raw) > _MAX_SECRET_FILE:
        raise ConfigError(f"{what} {path} is larger than {_MAX_SECRET_FILE} bytes; it should hold one line")
    try:
        text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{what} {path} is empty")
    if "\n" in text:
        raise ConfigError(f"{what} {path} holds more than one line")
    return text


def check_ca_file(path: Path) -> None:
    """Refuse a CA file that is missing or holds no PEM certificate, at load time rather than at first connect."""
    try:
        with path.open("rb") as file:
            head = file.read(1024 * 1024)
    except FileNotFoundError:
        raise ConfigError(f"CA file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"CA file {path}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError(f"CA file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")


def _check_client_id(client_id: str) -> str:
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return client_id


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class MqttSection(_Section):
    """`[mqtt]`: how a service reaches the broker. The password is read by `load_mqtt_secrets`, never a field."""

    url: BrokerUrlField
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: Path | None = None
    ca_file: Path | None = None
    # A persistent session is keyed by the client id, so it must be stable across restarts and unique per process.
    client_id: Annotated[str, AfterValidator(_check_client_id)] | None = None

    _password: str | None = PrivateAttr(default=None)

    _resolve_files = field_validator("password_file", "ca_file")(resolve_path)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_in_url(cls, data: Any) -> Any:
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and "@" in url.partition("://")[2].partition("/")[0]:
            raise ValueError(_CREDENTIALS_IN_URL)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MqttSection:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not; the broker needs both")
        if self.ca_file is not None and not self.url.tls:
            raise ValueError(f"ca_file is for TLS: write the url as mqtts://{str(self.url).split('://', 1)[1]}")
        return self

    @property
    def password(self) -> str | None:
        return self._password

    def client_id_for(self, name: str) -> str:
        """The configured client id, else one derived from the service's name."""
        return self.client_id or f"wgprobe-{name}"


def load_mqtt_secrets(mqtt: MqttSection) -> None:
    """Read the password file and check the CA file; ConfigError naming the key on failure."""
    if mqtt.password_file is not None:
        try:
            mqtt._password = read_secret_file(mqtt.password_file, "password file")
        except ConfigError as e:
            raise ConfigError(f"mqtt.password_file: {e}") from None
    if mqtt.ca_file is not None:
        try:
            check_ca_file(mqtt.ca_file)
        except ConfigError as e:
            raise ConfigError(f"mqtt.ca_file: {e}") from None


class HttpSection(_Section):
    """`[http]`: where a service serves /metrics and its API. Loopback unless the operator says otherwise."""

    listen: EndpointField = Endpoint.parse(AGENT_HTTP_LISTEN)


class AggregatorHttpSection(HttpSection):
    listen: EndpointField = Endpoint.parse(AGGREGATOR_HTTP_LISTEN)


Quorum = int | Literal["majority"]


def _quorum(value: Any) -> Quorum:
    if value == "majority" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise ValueError('write "majority" or a number of agents (1 or more)')


class HealthSection(_Section):
    """`[health]`: how the aggregator turns many agents' results into one state per relay."""

    # "majority": more than half of the agents eligible to judge a relay (fresh data, control check held).
    quorum: Annotated[Quorum, PlainValidator(_quorum)] = "majority"
    stale_after_intervals: float = Field(default=3.0, ge=1, le=1000)
    # The agents' [schedule] interval_seconds; an agent whose status says its interval is judged by that instead.
    interval_seconds: float = Field(default=15.0, gt=0, le=MAX_INTERVAL_SECONDS)
    history: int = Field(default=50, ge=1, le=10_000, strict=True)  # health changes kept per relay

    def stale_after(self, interval_seconds: float | None = None) -> float:
        """Seconds after which a result taken on that schedule (default: this section's) is stale."""
        return self.stale_after_intervals * (interval_seconds or self.interval_seconds)


class AggregatorSection(_Section):
    name: Annotated[str, AfterValidator(check_agent_name)]


class AggregatorInventorySection(InventorySection):
    # Labels (kernel, os, site...) keyed by hostname, merged over the inventory's own: public relay lists carry no
    # kernel or OS, which is what the 2020-04-27 post-mortem needed an hour to find.
    labels: str | None = Field(default=None, min_length=1)

    @field_validator("labels")
    @classmethod
    def _resolve_labels(cls, labels: str | None, info: ValidationInfo) -> str | None:
        if labels is None or labels.startswith(("http://", "https://")):
            return labels
        if "://" in labels:
            raise ValueError("use a file path or an http:// or https:// URL")
        return str(resolve_path(Path(labels), info))


class AggregatorConfig(_Section):
    aggregator: AggregatorSection
    mqtt: MqttSection
    http: AggregatorHttpSection = Field(default_factory=AggregatorHttpSection)
    inventory: AggregatorInventorySection
    health: HealthSection = Field(default_factory=HealthSection)

    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path | None:
        return self._path


def load_aggregator_config(path: Path) -> AggregatorConfig:
    """Read, validate and resolve an aggregator config, and read its MQTT password file."""
    config = validate_file(AggregatorConfig, path)
    try:
        load_mqtt_secrets(config.mqtt)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    config._path = path
    return config
