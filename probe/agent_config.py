"""The whole agent.toml of the long-running agent (`probe agent`, `probe serve`): what probing needs (ProbeConfig,
probe/config.py, where the file is documented) and the service's tables. A module of its own so the commands that
only probe never define these models (start-up time)."""

from pathlib import Path

from pydantic import Field, field_validator

from probe.config import ProbeConfig, with_keys
from probe.configfile import Section, read_toml, resolve_path, validate_data
from probe.service_config import MAX_INTERVAL_SECONDS, HttpSection, MqttSection

__all__ = ["AgentConfig", "ScheduleSection", "SpoolSection", "load_config"]


class ScheduleSection(Section):
    """`[schedule]` of the long-running agent (agents/schedule.py)."""

    # Every relay's main port on both families is probed once per interval; the other paths rotate through it.
    interval_seconds: float = Field(default=15.0, ge=1.0, le=MAX_INTERVAL_SECONDS)
    concurrency: int = Field(default=64, ge=1, le=4096, strict=True)  # relays probed at once, at most


class SpoolSection(Section):
    """`[spool]`: where the agent keeps results the broker has not acknowledged yet (SQLite, agents/spool.py)."""

    path: Path = Field(default=Path("spool.sqlite"), validate_default=True)
    # Bounds for a long broker outage: past them the oldest results are dropped first, and counted.
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024, strict=True)
    max_age_hours: float = Field(default=24.0, gt=0, le=24 * 365)

    _resolve_path = field_validator("path")(resolve_path)


class AgentConfig(ProbeConfig):
    """The whole agent.toml: what probing needs and the long-running agent's tables."""

    schedule: ScheduleSection = Field(default_factory=dict, validate_default=True)
    mqtt: MqttSection | None = None  # required by `probe agent`; `probe server` and `probe serve` need none
    http: HttpSection = Field(default_factory=dict, validate_default=True)
    spool: SpoolSection = Field(default_factory=dict, validate_default=True)


def load_config(path: Path) -> AgentConfig:
    """Read, validate and resolve an agent config, and load its identities' private keys."""
    return with_keys(validate_data(AgentConfig, read_toml(path), path), path)
