"""What every config file of wgprobe shares (agent.toml, aggregator.toml): reading the TOML within bounds,
validating it against a model with every problem named by key, paths relative to the file, and the names that end
up in MQTT topics and metric labels. The models themselves live in probe/config.py (the agent),
probe/service_config.py (the [mqtt] and [http] tables both services share) and probe/aggregator/config.py.
"""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationError, ValidationInfo

from probe.addresses import Endpoint
from probe.errors import ConfigError
from probe.inputs import InputError, check_nesting, read_regular_file
from probe.validation import describe_validation_error

# A config of a thousand identities is a few hundred kB.
CONFIG_MAX_BYTES = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A table of a config file: frozen, unknown keys refused, the schema built on first use (start-up time)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


def _endpoint(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic reports only the former as a validation error.
        raise ValueError("expected a string HOST:PORT")
    return Endpoint.parse(value)


EndpointField = Annotated[Endpoint, PlainValidator(_endpoint), PlainSerializer(str, return_type=str)]


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """A path relative to the config file's directory (passed as validation context by `validate_file`); without
    that context (a model built in code) paths stay as given."""
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    path = path.expanduser()
    return base / path if isinstance(base, Path) and not path.is_absolute() else path


def check_agent_name(name: str) -> str:
    """An agent's (or aggregator's) name: it names MQTT topics and metric labels, where '/', '+', '#' and spaces
    have meanings of their own."""
    if not _NAME.fullmatch(name):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def check_secret_file(path: Path, what: str, secret: str) -> None:
    """`path` is a regular file only its owner may read (a key or password file); ConfigError saying how to fix it
    otherwise. `what` names the file ("key file"), `secret` what it holds ("a private key")."""
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
            f"{what} {path} has mode {stat.S_IMODE(mode):04o}, which lets group or other users read {secret}; "
            f"run: chmod 600 {path}"
        )


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's TOML: bounded, a regular file, not nested absurdly; a ConfigError naming the file for
    every way it can be unreadable."""
    try:
        text = read_regular_file(path, max_bytes=CONFIG_MAX_BYTES).decode("utf-8")
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
    return validate_data(model, read_toml(path), path)


def validate_data(model: type[M], data: dict[str, Any], path: Path) -> M:
    """`data`, read from `path` by `read_toml`, validated as `model` (see `validate_file`)."""
    try:
        return model.model_validate(data, context={"base_dir": path.absolute().parent})
    except ValidationError as e:
        found = describe_validation_error(e, model=model)
        problems = [f"{where}: {message}" if where else message for where, message in found]
        if len(problems) == 1:
            raise ConfigError(f"{path}: {problems[0]}") from None
        raise ConfigError(f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems)) from None
