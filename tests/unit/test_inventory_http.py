"""Inventories over HTTP, against a real http.server on the loopback: ETag reuse and error reporting."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from probe.inventory import InventoryError, InventorySource, InventoryUnavailable

DATA = Path(__file__).parent.parent / "data" / "inventory"
SAMPLE = (DATA / "mullvad-app-relays-sample.json").read_bytes()
FLEET = (DATA / "fleet.toml").read_bytes()


@dataclass
class Served:
    """What the server answers with next, and what it was asked."""

    body: bytes = SAMPLE
    etag: str | None = '"v1"'
    status: int = 200
    content_type: str = "application/json"
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        served = self.served
        served.requests.append({k.lower(): v for k, v in self.headers.items()})
        if served.status == 200 and served.etag is not None and self.headers.get("If-None-Match") == served.etag:
            self.send_response(304)
            self.send_header("ETag", served.etag)
            self.end_headers()
            return
        body = served.body if served.status == 200 else b"oops"
        self.send_response(served.status)
        self.send_header("Content-Type", served.content_type)
        self.send_header("Content-Length", str(len(body)))
        if served.etag is not None:
            self.send_header("ETag", served.etag)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, str]]:
    # A proxy from the environment would intercept loopback requests.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = Served()
    handler = type("Handler", (_Handler,), {"served": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/app/v1/relays"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_etag_is_sent_back_and_304_reuses_the_previous_parse(served: tuple[Served, str]) -> None:
    state, url = served
    source = InventorySource(url)
    first = source.load()
    assert len(first.relays) == 10
    assert first.source == url
    assert "if-none-match" not in state.requests[0]
    assert (source.etag, source.body, source.not_modified) == ('"v1"', SAMPLE, False)

    second = source.load()
    assert state.requests[1]["if-none-match"] == '"v1"'
    assert second is first
    assert source.not_modified

    state.body, state.etag, state.content_type = FLEET, '"v2"', "text/plain"
    third = source.load()
    assert state.requests[2]["if-none-match"] == '"v1"'
    assert third.names == ["lab-wg-001", "lab-wg-002"]
    assert (source.etag, source.not_modified) == ('"v2"', False)


def test_a_broken_body_is_refused_and_not_remembered(served: tuple[Served, str]) -> None:
    state, url = served
    source = InventorySource(url)
    good = source.load()
    state.body, state.etag = b'{"wireguard": {"relays": []}}', '"v2"'
    with pytest.raises(InventoryError, match="holds no WireGuard relays"):
        source.load()
    assert source.etag == '"v1"'
    state.body, state.etag = SAMPLE, '"v1"'  # the server goes back: our old ETag is valid again
    assert source.load() is good
    assert state.requests[-1]["if-none-match"] == '"v1"'


def test_no_etag_means_a_full_download_every_time(served: tuple[Served, str]) -> None:
    state, url = served
    state.etag = None
    source = InventorySource(url)
    first, second = source.load(), source.load()
    assert first is not second
    assert all("if-none-match" not in request for request in state.requests)


@pytest.mark.parametrize(
    ("status", "text", "error"),
    [(404, "HTTP 404 Not Found", InventoryError), (500, "HTTP 500 Internal Server Error", InventoryUnavailable)],
)
def test_http_error_names_url_and_status(
    served: tuple[Served, str], status: int, text: str, error: type[Exception]
) -> None:
    state, url = served
    state.status = status
    with pytest.raises(error) as caught:
        InventorySource(url).load()
    assert str(caught.value) == f"{url}: {text}"


def test_unreachable_server_is_unavailable() -> None:
    # Bind a port and close it again so nothing listens there.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()
    url = f"http://127.0.0.1:{port}/relays"
    with pytest.raises(InventoryUnavailable, match=rf"{url}: cannot fetch inventory: Connection refused"):
        InventorySource(url, timeout=2.0).load()


def test_labels_come_from_a_url_too_and_what_they_leave_out_is_said(served: tuple[Served, str], tmp_path: Path) -> None:
    """[inventory] labels as an http(s) URL (only the file branch had a test), and what is wrong with them: an entry
    skipped, and a hostname the inventory does not have (a typo leaves lab-wg-002 unlabelled)."""
    from probe.config import InventorySection
    from probe.inventory.configured import ConfiguredInventory

    state, url = served
    fleet = tmp_path / "fleet.toml"
    fleet.write_bytes(FLEET)
    state.body = b'{"lab-wg-001": {"kernel": "6.6"}, "lab-wg-02": {"kernel": "6.6"}, "lab-wg-003": ["x"]}'
    source = ConfiguredInventory(InventorySection(source=str(fleet), labels=url))
    inventory = source.load()
    relay = inventory.get("lab-wg-001")
    assert relay is not None and relay.labels["kernel"] == "6.6"
    assert source.skipped(inventory) == [
        ("labels_entry_skipped", 'lab-wg-003: must be a table of labels, e.g. {"kernel": "5.15"}'),
        ("labels_host_not_in_inventory", "labels for 1 host(s) not in the inventory: lab-wg-02"),
    ]
    state.body, state.etag = b'{"lab-wg-001": {"kernel": "6.6"}}', '"v2"'
    assert source.skipped(source.load()) == []  # mended: nothing more to say
