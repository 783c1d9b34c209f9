"""The tables the long-running services share, `[mqtt]` and `[http]`: a contract between the agent's `agent.toml`
and the aggregator's `aggregator.toml`, the same keys with the same meaning (the aggregator's file is shown whole in
probe/aggregator/config.py, the agent's in probe/config.py).

    [mqtt]
    url = "mqtts://broker.example.net"  # mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (8883, TLS verified)
    username = "agent-se-got"           # optional
    password_file = "mqtt.password"     # optional; mode 0600: the password is never written in the config
    ca_file = "ca.pem"                  # optional, mqtts:// only: a private CA (default: the system's CAs)
    client_id = "wgprobe-agent-se-got"  # optional; default wgprobe-<name>
    [http]
    listen = "127.0.0.1:9108"           # /metrics (and the agent's /probe); loopback by default

Secrets come only from files, and a secret file others can read is refused (the same rule as key files). TLS is
verified whenever the URL says mqtts://; there is deliberately no switch to turn verification off: a private CA goes
in `ca_file`.
"""

from __future__ import annotations

import re
from ipaddress import IPv6Address
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    field_validator,
    model_validator,
)

from probe.addresses import Endpoint
from probe.configfile import EndpointField, Section, check_secret_file, resolve_path
from probe.errors import ConfigError
from probe.inputs import InputError, read_regular_file

MQTT_PORT = 1883
MQTTS_PORT = 8883
MAX_INTERVAL_SECONDS = 86400.0  # a probing schedule slower than daily is a mistake, in a config or a status
AGENT_HTTP_LISTEN = "127.0.0.1:9108"
# Another port than the agent's, so an agent and an aggregator on one host (the lab) do not collide by default.
AGGREGATOR_HTTP_LISTEN = "127.0.0.1:9109"
_MAX_SECRET_FILE = 4096
# Patterns, compiled on first use by `re` (and cached there): only a config with [mqtt] needs them, and compiling
# a pattern is ~0.25 ms of every start-up.
_CLIENT_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# A password in the URL would sit in a config file that is usually world-readable, and in every error that quotes
# the URL: MqttSection refuses it before the URL is parsed, with a message that does not repeat it.
_CREDENTIALS_IN_URL = "url holds credentials (USER:PASSWORD@); use username and password_file (url not shown here)"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*"


class BrokerUrl(NamedTuple):
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
        elif not re.fullmatch(_HOSTNAME, host):
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
    check_secret_file(path, what, "a secret")
    try:
        raw = read_regular_file(path, max_bytes=_MAX_SECRET_FILE)
    except InputError as e:
        raise ConfigError(f"{what} {path}: {e}; it should hold one line") from None
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
    if not re.fullmatch(_CLIENT_ID, client_id):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return client_id


class MqttSection(Section):
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


class HttpSection(Section):
    """`[http]`: where a service serves /metrics and its API. Loopback unless the operator says otherwise."""

    listen: EndpointField = Endpoint.parse(AGENT_HTTP_LISTEN)


class AggregatorHttpSection(HttpSection):
    listen: EndpointField = Endpoint.parse(AGGREGATOR_HTTP_LISTEN)
