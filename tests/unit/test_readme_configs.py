"""The README shows agent.toml and aggregator.toml "whole": every key each file takes appears in its block (a key
added to a config model and not to the README fails here), and each block is a config the model accepts."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from probe.agent_config import AgentConfig
from probe.aggregator.config import AggregatorConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def block(heading: str) -> dict[str, Any]:
    """The TOML block that follows `heading` in the README."""
    found = re.search(re.escape(heading) + r".*?```toml\n(.*?)```", README.read_text(), re.DOTALL)
    assert found is not None, f"no TOML block after {heading!r} in the README"
    return tomllib.loads(found.group(1))


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The config table a field holds (through `X | None` and `list[X]`), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, tuple, typing.Union, types.UnionType):
        for argument in typing.get_args(annotation):
            found = submodel(argument)
            if found is not None:
                return found
    return None


def missing(model: type[BaseModel], shown: dict[str, Any], where: str = "") -> list[str]:
    absent = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in shown:
            absent.append(where + key)
            continue
        table = submodel(field.annotation)
        if table is not None:
            value = shown[key]
            first = value[0] if isinstance(value, list) else value
            absent += missing(table, first, f"{where}{key}.")
    return absent


@pytest.mark.parametrize(
    ("heading", "model"),
    [("### Config (`agent.toml`)", AgentConfig), ("`aggregator.toml`, whole:", AggregatorConfig)],
)
def test_the_readme_shows_each_config_file_whole(heading: str, model: type[BaseModel]) -> None:
    shown = block(heading)
    assert missing(model, shown) == []
    # And what it shows is a config: the key files and passwords are not there, so only the shape is validated.
    model.model_validate(shown, context={"base_dir": README.parent})
