"""The aggregator's config file, whole:

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
    refresh_seconds = 300
    [health]
    quorum = "majority"                 # or a number of agents that must see a relay failing to call it down
    stale_after_intervals = 3           # results older than this many intervals are stale
    interval_seconds = 15               # the agents' [schedule] interval_seconds (an agent's status overrides)
    history = 50                        # health changes kept per relay

`[mqtt]`, `[http]` and `[inventory]` are the agent's tables (probe/service_config.py, probe/config.py): the same keys,
the same meaning. Paths are relative to the config file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator, PrivateAttr

from probe.config import InventorySection
from probe.configfile import Section, check_agent_name, validate_file
from probe.errors import ConfigError
from probe.service_config import MAX_INTERVAL_SECONDS, AggregatorHttpSection, MqttSection, load_mqtt_secrets

Quorum = int | Literal["majority"]


def _quorum(value: Any) -> Quorum:
    if value == "majority" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise ValueError('write "majority" or a number of agents (1 or more)')


class HealthSection(Section):
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


class AggregatorSection(Section):
    name: Annotated[str, AfterValidator(check_agent_name)]


class AggregatorConfig(Section):
    aggregator: AggregatorSection
    mqtt: MqttSection
    http: AggregatorHttpSection = Field(default_factory=AggregatorHttpSection)
    inventory: InventorySection
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
