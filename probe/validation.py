"""pydantic validation errors as lines a person can act on, for agent configs and inventories alike.

    checks.reflector: no port: write HOST:PORT, e.g. 198.18.0.2:7777, or [V6ADDR]:PORT (got '198.18.0.2')
    checks.reflectr: unknown key (did you mean 'reflector'?); allowed: forward_target, ...

Fields are named as the source writes them (`pubkey` in Mullvad's web list, not `public_key`), and the value that
was refused is shown when it is a short scalar, with any URL credentials hidden: values are quoted with repr(), so
control characters are escaped, and cut at 60 characters.
"""

import typing
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from probe.inputs import redact_url

_SHOWN = 60


def show_value(value: Any) -> str:
    text = redact_url(repr(value))
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that validates the table at `loc`, to name its keys in "unknown key" errors."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _inner_model(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _location(loc: tuple[int | str, ...], source_names: Mapping[str, str]) -> str:
    parts = [source_names.get(p, p) if isinstance(p, str) and i == 0 else p for i, p in enumerate(loc)]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    import difflib  # here: only a config with a mistake needs it

    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1)
    message = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    return message + (f"; allowed: {', '.join(known)}" if known else "")


def describe_validation_error(
    error: ValidationError,
    *,
    model: type[BaseModel] | None = None,
    source_names: Mapping[str, str] | None = None,
    derived: Collection[str] = (),
) -> list[tuple[str, str]]:
    """(where, message) for each error: "identities[0].ipv4", "Input is not a valid IPv4 address (got 'x')".

    - `model`: the model that was validated; an unknown key then gets the keys its table allows, and a close match.
    - `source_names`: field -> the source's own name for it, for top-level fields ("public_key" -> "pubkey").
    - `derived`: fields the source did not write but were copied from another one (an egress address defaulting to
      the entry address); their errors only repeat the original field's, so they are left out.
    """
    found: list[tuple[str, str]] = []
    for detail in error.errors(include_url=False):
        loc = detail["loc"]
        if loc and str(loc[0]) in derived:
            continue
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["type"] == "missing":
            message = "required but missing"
        elif detail["type"] == "extra_forbidden":
            message = _unknown_key(str(loc[-1]), _model_at(model, loc[:-1]) if model is not None else None)
        elif isinstance(detail["input"], str | int | float | bool | None):
            message += f" (got {show_value(detail['input'])})"
        found.append((_location(loc, source_names or {}), message))
    return found
