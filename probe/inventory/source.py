"""Where an inventory comes from (a file or an http(s) URL) and which format it is in.

The format is recognised from the content, so a user points `source` at whatever they have: a JSON object with
"wireguard" is Mullvad's app list, a JSON array is Mullvad's web list, TOML is our hand-written format.

Whatever the source, the input is bounded before it is parsed: a file must be a regular file of at most MAX_BODY
(the cap of a download), and the decoded data at most MAX_NESTING levels deep. A URL is shown, in messages and in
`Inventory.source`, without its user and password.
"""

import json
import os
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from probe.inputs import InputError, check_nesting, read_regular_file, redact_url
from probe.inventory.model import MAX_BODY, Inventory, InventoryError


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _decode(text: str, source: str, suffix: str) -> tuple[str, Any]:
    """("json" | "toml", decoded data); the suffix (.json/.toml) only decides which error to show."""
    kind, data = _parse(text, source, suffix)
    try:
        check_nesting(data)
    except InputError as e:
        raise InventoryError(f"{source}: {e}") from None
    return kind, data


def _parse(text: str, source: str, suffix: str) -> tuple[str, Any]:
    json_error = toml_error = ""
    if suffix != ".toml":
        try:
            return "json", json.loads(text)
        except RecursionError:
            raise InventoryError(f"{source}: nested too deeply to be an inventory") from None
        except ValueError as e:  # JSONDecodeError, and the 4300-digit limit on integers
            json_error = str(e)
    if suffix != ".json":
        try:
            return "toml", tomllib.loads(text)
        except RecursionError:
            raise InventoryError(f"{source}: nested too deeply to be an inventory") from None
        except ValueError as e:  # TOMLDecodeError, and the 4300-digit limit on integers
            toml_error = str(e)
    if not toml_error:
        raise InventoryError(f"{source}: not valid JSON: {json_error}")
    if not json_error:
        raise InventoryError(f"{source}: not valid TOML: {toml_error}")
    raise InventoryError(f"{source}: neither JSON ({json_error}) nor TOML ({toml_error})")


def parse_inventory(
    content: str | bytes, *, source: str, include_inactive: bool = False, suffix: str = ""
) -> Inventory:
    """An Inventory from a source's content, whatever the format; `source` names it in messages (a URL's user and
    password hidden)."""
    source = redact_url(source)
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")  # -sig: tolerate a BOM from editors that write one
        except UnicodeDecodeError as e:
            raise InventoryError(f"{source}: not UTF-8 text ({e})") from None
    kind, data = _decode(content, source, suffix.lower())
    if kind == "toml":
        from probe.inventory.fleet import parse_fleet_toml  # each format's loader only when a source uses it

        return parse_fleet_toml(data, source=source, include_inactive=include_inactive)
    if isinstance(data, list):
        from probe.inventory.mullvad import parse_web_list

        return parse_web_list(data, source=source, include_inactive=include_inactive)
    if isinstance(data, dict) and "wireguard" in data:
        from probe.inventory.mullvad import parse_app_list

        return parse_app_list(data, source=source, include_inactive=include_inactive)
    shape = "an object without a 'wireguard' key" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
    raise InventoryError(
        f"{source}: JSON of an unknown shape ({shape}); expected Mullvad's app relay list (an object with "
        "'wireguard'), Mullvad's web relay list (an array) or a TOML inventory"
    )


class InventorySource:
    """A file or URL that is loaded again on every `load()`, for agents that refresh their inventory.

    For a URL it keeps the last ETag, body and parse: the next request carries If-None-Match, and on 304 Not
    Modified the previous Inventory is returned as it is, with no download and no parse. State is only updated after
    a successful parse, so a broken list served under a new ETag is refused again on the next refresh rather than
    remembered.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, include_inactive: bool = False, timeout: float = 10.0
    ) -> None:
        self.location = os.fspath(location)
        if "://" in self.location and not is_url(self.location):
            scheme = self.location.split("://", 1)[0]
            raise InventoryError(f"{self.shown}: unsupported scheme {scheme!r}; use a file path or http(s) URL")
        self.include_inactive = include_inactive
        self.timeout = timeout
        self.etag: str | None = None
        self.body: bytes | None = None
        self.inventory: Inventory | None = None
        self.not_modified = False  # whether the last load() was answered by 304

    @property
    def is_url(self) -> bool:
        return is_url(self.location)

    @property
    def shown(self) -> str:
        """The location as messages and `Inventory.source` show it: without a URL's user and password."""
        return redact_url(self.location)

    def load(self) -> Inventory:
        if not self.is_url:
            return self._load_file(Path(self.location))
        etag = self.etag if self.inventory is not None else None
        from probe.inventory.fetch import fetch  # HTTP only for URLs (http.client, ssl, email: tens of ms)

        result = fetch(self.location, etag=etag, timeout=self.timeout)
        if result.status == 304:
            if self.inventory is None:
                raise InventoryError(f"{self.shown}: 304 Not Modified to an unconditional request")
            self.not_modified = True
            return self.inventory
        suffix = PurePosixPath(urlsplit(self.location).path).suffix
        if "json" in result.content_type:
            suffix = ".json"
        elif "toml" in result.content_type:
            suffix = ".toml"
        inventory = parse_inventory(
            result.body, source=self.shown, include_inactive=self.include_inactive, suffix=suffix
        )
        self.etag, self.body, self.inventory = result.etag, result.body, inventory
        self.not_modified = False
        return inventory

    def _load_file(self, path: Path) -> Inventory:
        try:
            content = read_regular_file(path, max_bytes=MAX_BODY)
        except InputError as e:
            raise InventoryError(f"{path}: cannot read inventory: {e}") from None
        inventory = parse_inventory(
            content, source=str(path), include_inactive=self.include_inactive, suffix=path.suffix
        )
        self.body, self.inventory = content, inventory
        return inventory


def load_inventory(
    location: str | os.PathLike[str], *, include_inactive: bool = False, timeout: float = 10.0
) -> Inventory:
    """Load an inventory once from a file path or an http(s) URL."""
    return InventorySource(location, include_inactive=include_inactive, timeout=timeout).load()
