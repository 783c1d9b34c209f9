"""The one formatter of pydantic errors, shared by the agent config and every inventory loader."""

from ipaddress import IPv4Address

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from probe.validation import describe_validation_error


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: IPv4Address
    port: int = 1


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    inner: _Inner
    items: list[_Inner] = []
    mirror: IPv4Address | None = None


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate(data)
    return caught.value


def test_locations_and_messages() -> None:
    error = _error({"inner": {"address": "1.2.3.400"}, "items": [{"address": "1.2.3.4"}, {"address": 5.5}]})
    assert describe_validation_error(error) == [
        ("name", "required but missing"),
        ("inner.address", "Input is not a valid IPv4 address (got '1.2.3.400')"),
        ("items[1].address", "Input is not a valid IPv4 address (got 5.5)"),
    ]


def test_unknown_keys_name_what_the_table_allows_when_given_the_model() -> None:
    error = _error({"name": "a", "inner": {"address": "1.2.3.4", "prot": 2}, "extra": 1})
    assert describe_validation_error(error, model=_Outer) == [
        ("inner.prot", "unknown key (did you mean 'port'?); allowed: address, port"),
        ("extra", "unknown key; allowed: name, inner, items, mirror"),
    ]
    assert describe_validation_error(error) == [("inner.prot", "unknown key"), ("extra", "unknown key")]


def test_fields_are_named_as_the_source_names_them_and_derived_fields_are_left_out() -> None:
    error = _error({"name": 5, "inner": {"address": "1.2.3.4"}, "mirror": "nope"})
    names = {"name": "hostname", "mirror": "egress"}
    assert describe_validation_error(error, source_names=names) == [
        ("hostname", "Input should be a valid string (got 5)"),
        ("egress", "Input is not a valid IPv4 address (got 'nope')"),
    ]
    assert describe_validation_error(error, source_names=names, derived={"mirror"}) == [
        ("hostname", "Input should be a valid string (got 5)")
    ]


def test_shown_values_are_short_escaped_and_hide_url_credentials() -> None:
    long = _error({"name": "a", "inner": {"address": "x" * 500}})
    (_where, message), *_ = describe_validation_error(long)
    assert message.endswith("...)") and len(message) < 120
    escaped = _error({"name": "a", "inner": {"address": "\x1b]0;owned\x07"}})
    assert "\\x1b]0;owned\\x07" in describe_validation_error(escaped)[0][1]
    assert "\x1b" not in describe_validation_error(escaped)[0][1]
    secret = _error({"name": "a", "inner": {"address": "https://bob:hunter2@example.net/x"}})
    message = describe_validation_error(secret)[0][1]
    assert "hunter2" not in message and "bob" not in message
    assert "https://***@example.net/x" in message


def test_a_list_or_table_is_not_quoted() -> None:
    deep: list[object] = []
    for _ in range(500):
        deep = [deep]
    error = _error({"name": deep, "inner": {"address": "1.2.3.4"}})
    assert describe_validation_error(error) == [("name", "Input should be a valid string")]
