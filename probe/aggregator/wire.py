"""Result messages read by a compiled decoder: msgspec structs that mirror the contract's pydantic models.

pydantic's `ResultMessage.model_validate_json` is the authority on what a result message is, and it costs ~100 µs
for a 12-path result: a third of the aggregator's CPU a result, and most of what keeps it from 5,000 a second on
one core. msgspec decodes and checks the same message into these structs in ~20 µs. The two must never disagree, so:

- The structs below are checked against the models when this module is imported (`check_mirror`): the same fields
  in the same order, the same types, bounds, defaults and the same refusal of unknown keys, and no validator on a
  model that the structs could not run. A field added to the contract fails the import, here, until it is added
  below too: the structs cannot fall behind.
- msgspec is the stricter reader: it refuses what pydantic's lax mode would coerce (1.0 or "1" for an int, 0/1
  for a bool, a number or a date alone for a time). What msgspec refuses goes to pydantic, which either refuses it
  with its own reason (counted and logged as before) or accepts it, and then it becomes these structs from the
  validated model (`from_model`). So what the aggregator accepts is exactly what the model accepts.
- Where both accept, they read the same values: tests/unit/test_wire.py holds the cases where JSON readers differ
  (surrogates, duplicate keys, big and out-of-range numbers, time formats) and compares the two on generated
  messages, mutated field by field. The one difference found: a time with more than 6 decimal places of a second,
  which msgspec rounds to the microsecond and pydantic truncates; `started_at` is therefore read as text held to at
  most 6 places (the form agents write), and anything else goes to pydantic.

Stage names and reasons come out as their string values (the store keeps these stage structs as they are, see
probe.aggregator.records.Stage); a path's and a result's reason as `Reason` members, as the models do. None of the
structs is tracked by the cyclic garbage collector (gc=False): they hold strings, numbers, None, enum members, tuples
of structs and a dict of strings, so no cycle can pass through them, and a store holds ~200,000 of them. They
are frozen: the store's records, its metrics blocks and its views share them.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Final, Literal, NamedTuple

import annotated_types
import msgspec
import msgspec.inspect
from msgspec import Meta, Struct
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from probe.messages import ResultMessage
from probe.results import SCHEMA_VERSION, PathResult, Reason, StageResult

# RFC 3339 with at most 6 decimal places of a second: the times msgspec and pydantic read alike (to the microsecond).
# ASCII digits and nothing after the end (`$` would let a final newline through, `\d` other scripts' digits): what
# the pattern passes is decided by it, not by what the time parser happens to refuse.
TIME_PATTERN: Final = (
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:?[0-9]{2})?\Z"
)

StageNameText = Literal["handshake", "tunnel", "forward", "egress", "mtu"]
ReasonText = Literal[
    "port_unreachable",
    "handshake_timeout",
    "cookie_failed",
    "socket_error",
    "tunnel_timeout",
    "forward_timeout",
    "forward_unreachable",
    "reply_invalid",
    "egress_timeout",
    "egress_mismatch",
    "mtu_blackhole",
    "mtu_too_big",
    "tunnel_unreachable",
    "egress_unreachable",
    "internal_error",
]
Count = Annotated[int, Meta(ge=0)]


class WireStage(Struct, kw_only=True, forbid_unknown_fields=True, gc=False, frozen=True):
    name: StageNameText
    ok: bool
    reason: ReasonText | None = None
    seconds: float
    loss: Annotated[float, Meta(ge=0.0, le=1.0)]
    sent: Count = 0
    received: Count = 0
    detail: str | None = None
    judged: bool = True
    rejected: Count = 0


class WirePath(Struct, kw_only=True, forbid_unknown_fields=True, gc=False, frozen=True):
    port: int
    family: Literal["ipv4", "ipv6"]
    ok: bool
    reason: Reason | None = None
    stages: tuple[WireStage, ...]
    entry: str
    identity: int = 0
    evidence: str | None = None
    rejected: Count = 0


class WireResult(Struct, kw_only=True, forbid_unknown_fields=True, gc=False, frozen=True):
    schema_version: int = SCHEMA_VERSION
    server: str
    agent: str
    ok: bool
    reason: Reason | None = None
    started_at: Annotated[str, Meta(pattern=TIME_PATTERN)]
    duration_seconds: float
    paths: tuple[WirePath, ...]
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    evidence: str | None = None
    evidence_error: str | None = None
    result_id: Annotated[str, Meta(min_length=1, max_length=64)]
    round: Count
    control_ok: bool
    request_id: Annotated[str, Meta(max_length=64)] | None = None


_DECODER: Final = msgspec.json.Decoder(WireResult)


class Read(NamedTuple):
    message: WireResult
    started_at: datetime  # the message's started_at, read as ResultMessage reads it


def read_result(payload: bytes | bytearray) -> Read | None:
    """The result message in `payload` if the compiled reader takes it; None when it does not, and then
    `ResultMessage` must decide (it refuses, with its reason, or accepts what msgspec is too strict for)."""
    try:
        message = _DECODER.decode(payload)
        return Read(message, msgspec.convert(message.started_at, datetime))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def from_model(message: ResultMessage) -> Read:
    """A result that pydantic accepted and msgspec did not (lax input), as these structs: no validation needed.
    Field for field by name (check_mirror holds the names equal); only the stages' enums become their values."""
    paths = tuple(WirePath(**{**dict(path), "stages": tuple(map(_stage, path.stages))}) for path in message.paths)
    wire = WireResult(**{**dict(message), "started_at": message.started_at.isoformat(), "paths": paths})
    return Read(wire, message.started_at)


def _stage(stage: StageResult) -> WireStage:
    return WireStage(
        **{**dict(stage), "name": stage.name.value, "reason": None if stage.reason is None else stage.reason.value}
    )


# -- the mirror check ------------------------------------------------------------------------------------------------


class MirrorError(ImportError):
    """The structs no longer read what the pydantic models read."""


def check_mirror(struct: type[Struct], model: type[BaseModel], nested: dict[type[BaseModel], type[Struct]]) -> None:
    """Raise MirrorError unless `struct` reads every field of `model` the way the model does; `nested` pairs the
    models inside it with their structs."""
    where = f"{struct.__name__} against {model.__name__}"
    config = model.model_config
    if config.get("extra") != "forbid" or not struct.__struct_config__.forbid_unknown_fields:
        raise MirrorError(f"{where}: both must refuse unknown keys")
    if config.get("allow_inf_nan", True) or config.get("strict") or config.get("populate_by_name"):
        raise MirrorError(f"{where}: model config this mirror does not know")
    found = model.__pydantic_decorators__
    if found.validators or found.field_validators or found.root_validators or found.model_validators:
        raise MirrorError(f"{where}: the model has validators the struct cannot run")
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    theirs = [(f.name, _shape_of_struct_field(f.type), _default_of_struct_field(f)) for f in info.fields]
    ours = []
    for name, field in model.model_fields.items():
        if field.alias is not None or field.validation_alias is not None:
            raise MirrorError(f"{where}: {name} has an alias")
        shape = _shape_of_annotation(field.annotation, field.metadata, nested)
        default: object = (
            ("factory", field.default_factory())  # type: ignore[call-arg]
            if field.default_factory is not None
            else ("required",)
            if field.default is PydanticUndefined
            else ("value", field.default)
        )
        ours.append((name, shape, default))
    for mine, yours in zip(ours, theirs, strict=False):
        if mine != yours:
            raise MirrorError(f"{where}: the model has {mine}, the struct {yours}")
    if len(ours) != len(theirs):
        raise MirrorError(f"{where}: the model has {len(ours)} fields, the struct {len(theirs)}")


def _bounds(metadata: list[Any]) -> tuple[Any, ...]:
    ge = le = min_length = max_length = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            ge = item.ge
        elif isinstance(item, annotated_types.Le):
            le = item.le
        elif isinstance(item, annotated_types.MinLen):
            min_length = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            max_length = item.max_length
        else:
            raise MirrorError(f"a constraint this mirror does not know: {item!r}")
    return (ge, le, min_length, max_length)


def _shape_of_annotation(
    annotation: Any, metadata: list[Any], nested: dict[type[BaseModel], type[Struct]]
) -> tuple[Any, ...]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    shape: tuple[Any, ...] | None = None
    if origin is typing.Annotated:
        shape = _shape_of_annotation(args[0], [*metadata, *annotation.__metadata__], nested)
    elif origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        shape = ("optional", _shape_of_annotation(inner, metadata, nested))
    elif origin is Literal:
        shape = ("one of", frozenset(args))
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        shape = ("tuple", _shape_of_annotation(args[0], [], nested), _bounds(metadata))
    elif origin is dict:
        shape = ("dict", tuple(_shape_of_annotation(arg, [], nested) for arg in args), _bounds(metadata))
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        shape = ("one of", frozenset(member.value for member in annotation))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        shape = ("struct", nested[annotation])
    elif annotation is datetime:
        shape = ("time",)
    elif annotation in (bool, int, float, str):
        shape = (annotation.__name__, _bounds(metadata))
    if shape is None:
        raise MirrorError(f"a type this mirror does not know: {annotation!r}")
    return shape


def _shape_of_struct_field(kind: msgspec.inspect.Type) -> tuple[Any, ...]:
    inspect = msgspec.inspect
    shape: tuple[Any, ...] | None = None
    lengths = (None, None, getattr(kind, "min_length", None), getattr(kind, "max_length", None))
    if isinstance(kind, inspect.UnionType) and len(kind.types) == 2:
        inner = [t for t in kind.types if not isinstance(t, inspect.NoneType)]
        shape = ("optional", _shape_of_struct_field(inner[0])) if len(inner) == 1 else None
    elif isinstance(kind, inspect.LiteralType):
        shape = ("one of", frozenset(kind.values))
    elif isinstance(kind, inspect.EnumType):
        shape = ("one of", frozenset(member.value for member in kind.cls))
    elif isinstance(kind, inspect.VarTupleType):
        shape = ("tuple", _shape_of_struct_field(kind.item_type), lengths)
    elif isinstance(kind, inspect.DictType):
        shape = ("dict", (_shape_of_struct_field(kind.key_type), _shape_of_struct_field(kind.value_type)), lengths)
    elif isinstance(kind, inspect.StructType):
        shape = ("struct", kind.cls)
    elif isinstance(kind, inspect.StrType):
        shape = ("time",) if kind.pattern == TIME_PATTERN else ("str", lengths) if kind.pattern is None else None
    elif isinstance(kind, inspect.IntType | inspect.FloatType) and not (kind.gt or kind.lt or kind.multiple_of):
        shape = ("int" if isinstance(kind, inspect.IntType) else "float", (kind.ge, kind.le, None, None))
    elif isinstance(kind, inspect.BoolType):
        shape = ("bool", lengths)
    if shape is None:
        raise MirrorError(f"a type this mirror does not know: {kind!r}")
    return shape


def _default_of_struct_field(field: msgspec.inspect.Field) -> tuple[Any, ...]:
    if field.required:
        return ("required",)
    if field.default_factory is not msgspec.NODEFAULT:
        return ("factory", field.default_factory())
    return ("value", field.default)


check_mirror(WireStage, StageResult, {})
check_mirror(WirePath, PathResult, {StageResult: WireStage})
check_mirror(WireResult, ResultMessage, {PathResult: WirePath, StageResult: WireStage})
