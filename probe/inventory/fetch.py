"""HTTP for inventories: one GET with an ETag and one deadline, urllib's exceptions turned into ours here and nowhere
else.

- One deadline for the whole fetch (connect, TLS, headers, body): urllib's `timeout` bounds each socket operation, so
  a server that drips a byte a second would hold a fetch forever. Every blocking call on the connection is given the
  time left instead; CPython bounds each call (a connect, a handshake, one read) by its timeout as a whole. Name
  resolution is the system resolver's and keeps the resolver's own timeouts.
- Who is at fault: the network or the server failing (refused, name not found, timeout, TLS, HTTP 5xx, 408, 429)
  is `InventoryUnavailable`, "could not judge"; a URL the server says is wrong (other 4xx) or a body that is not an
  inventory is `InventoryError`, a config error.
- A user and password in the URL are sent as HTTP Basic authentication, not forwarded on a redirect, and never
  shown: every message names the URL through `redact_url`.

urllib is imported inside `fetch` so that importing the inventory package (every CLI command does) costs nothing
for file sources: http.client, email and ssl add tens of milliseconds.
"""

from __future__ import annotations

import base64
import io
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from probe.inputs import describe_size, redact_url
from probe.inventory.model import MAX_BODY, InventoryError, InventoryUnavailable

if TYPE_CHECKING:
    import http.client
    import urllib.request

# The full Mullvad app list is ~340 kB; anything past this is not a relay list and would only eat memory.
USER_AGENT = "wgprobe-inventory/1"
# The server's own trouble or a limit on us, not a fault of the URL: retrying later may work.
_UNAVAILABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class FetchResult:
    status: int  # 200, or 304 when the server confirmed our ETag (body is then empty)
    body: bytes
    etag: str | None
    content_type: str


class _Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds, self.clock = seconds, clock
        self.at = clock() + seconds

    def left(self) -> float:
        left = self.at - self.clock()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self.seconds:g} s")
        return left


class _DeadlineReader(io.RawIOBase):
    """The socket's raw reader, with the time left set as the timeout before every read."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock, self._deadline = sock, deadline
        self._raw = sock.makefile("rb", buffering=0)  # holds a reference: the fd stays open while we read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._deadline.left())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client sees of the connection: sends and reads that share the fetch's deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "r", *_args: object, **_kwargs: object) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"only binary reads are supported, not {mode!r}")
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:  # close, shutdown, fileno...
        return getattr(self._sock, name)


def _connect(deadline: _Deadline) -> Callable[..., socket.socket]:
    def create_connection(address: tuple[str, int], _timeout: object = None, source: Any = None) -> socket.socket:
        host, port = address
        error: OSError | None = None
        # As socket.create_connection, but every address tried gets only what is left of the deadline.
        for family, kind, proto, _name, target in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(deadline.left())
                if source:
                    sock.bind(source)
                sock.connect(target)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(f"{host} has no address")

    return create_connection


def _handlers(deadline: _Deadline) -> list[urllib.request.BaseHandler]:
    import http.client
    import urllib.request

    class Connection(http.client.HTTPConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = _connect(deadline)

        def connect(self) -> None:
            super().connect()
            self.sock = _DeadlineSocket(self.sock, deadline)  # duck-typed: http.client only sends and makes files

    class SecureConnection(http.client.HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = _connect(deadline)

        def connect(self) -> None:
            http.client.HTTPConnection.connect(self)  # TCP, and the proxy's CONNECT if any
            self.sock.settimeout(deadline.left())  # for the TLS handshake
            server_hostname = getattr(self, "_tunnel_host", None) or self.host  # the proxy's target, if any
            secure = self._context.wrap_socket(self.sock, server_hostname=server_hostname)  # type: ignore[attr-defined]
            self.sock = _DeadlineSocket(secure, deadline)

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Connection, req)

    class SecureHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(SecureConnection, req)  # the connection makes http.client's default TLS context

    return [Handler(), SecureHandler()]


def _request(url: str, etag: str | None) -> urllib.request.Request:
    import urllib.request

    parts = urlsplit(url)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/toml;q=0.9, */*;q=0.1"}
    if etag is not None:
        headers["If-None-Match"] = etag
    credentials = None
    if "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        credentials = f"{unquote(user)}:{unquote(password)}".encode()
        url = urlunsplit(parts._replace(netloc=host))
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the caller only passes http(s) URLs
    if credentials is not None:
        # Unredirected: a redirect to another host must not carry our password there.
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(credentials).decode("ascii"))
    return request


def _printable(text: str, limit: int = 100) -> str:
    """A reason phrase from a server, with control characters escaped: it ends up on terminals and in logs."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def fetch(url: str, *, etag: str | None, timeout: float, clock: Callable[[], float] = time.monotonic) -> FetchResult:
    """GET `url`, conditional on `etag` when given, all of it within `timeout` seconds."""
    # Imported here, not at the top: see the module docstring.
    import http.client
    import urllib.error
    import urllib.request

    shown = redact_url(url)
    deadline = _Deadline(timeout, clock)
    opener = urllib.request.build_opener(*_handlers(deadline))
    try:
        with opener.open(_request(url, etag), timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise InventoryError(f"{shown}: response is larger than {describe_size(MAX_BODY)}")
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
            message = f"{shown}: HTTP {e.code} {_printable(str(e.reason))}"
            if e.code >= 500 or e.code in _UNAVAILABLE_STATUSES:
                raise InventoryUnavailable(message) from None
            raise InventoryError(message) from None
    except urllib.error.URLError as e:  # wraps what connect and send raised: refused, name not found, TLS...
        raise InventoryUnavailable(f"{shown}: cannot fetch inventory: {_reason(e.reason, timeout)}") from None
    except (ValueError, http.client.InvalidURL) as e:  # a URL urllib cannot use (a bad port, a bad IPv6 literal)
        raise InventoryError(f"{shown}: {_reason(e, timeout)}") from None
    except (OSError, http.client.HTTPException) as e:  # a timeout, a reset or a broken response while reading
        raise InventoryUnavailable(f"{shown}: cannot fetch inventory: {_reason(e, timeout)}") from None


def _reason(error: object, timeout: float) -> str:
    if isinstance(error, TimeoutError):  # ours or the socket's: either way the deadline ran out
        return f"no complete answer within {timeout:g} s"
    if isinstance(error, OSError) and error.strerror:
        return redact_url(_printable(error.strerror))
    return redact_url(_printable(str(error) or type(error).__name__, limit=200))
