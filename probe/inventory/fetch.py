"""HTTP for inventories: one GET with an ETag, urllib's exceptions turned into InventoryError here and nowhere else.

urllib is imported inside `fetch` so that importing the inventory package (every CLI command does) costs nothing
for file sources: http.client, email and ssl add tens of milliseconds.
"""

from dataclasses import dataclass

from probe.inventory.model import InventoryError

# The full Mullvad app list is ~340 kB; anything past this is not a relay list and would only eat memory.
MAX_BODY = 32 * 1024 * 1024
USER_AGENT = "wgprobe-inventory/1"


@dataclass(frozen=True)
class FetchResult:
    status: int  # 200, or 304 when the server confirmed our ETag (body is then empty)
    body: bytes
    etag: str | None
    content_type: str


def fetch(url: str, *, etag: str | None, timeout: float) -> FetchResult:
    """GET `url`, conditional on `etag` when given."""
    # Imported here, not at the top: see the module docstring.
    import urllib.error
    import urllib.request

    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/toml;q=0.9, */*;q=0.1"}
    if etag is not None:
        headers["If-None-Match"] = etag
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the caller only passes http(s) URLs
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            body = response.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise InventoryError(f"{url}: response is larger than {MAX_BODY // (1024 * 1024)} MiB")
            return FetchResult(
                status=response.status,
                body=body,
                etag=response.headers.get("ETag"),
                content_type=response.headers.get("Content-Type", ""),
            )
    except urllib.error.HTTPError as e:
        # urllib raises for every non-2xx status, 304 included; the error holds an open response to close.
        with e:
            if e.code == 304:
                return FetchResult(status=304, body=b"", etag=e.headers.get("ETag") or etag, content_type="")
            raise InventoryError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise InventoryError(f"{url}: cannot fetch inventory: {e.reason}") from None
    except (TimeoutError, OSError) as e:  # a timeout while reading the body is not wrapped in URLError
        raise InventoryError(f"{url}: cannot fetch inventory: {e}") from None
