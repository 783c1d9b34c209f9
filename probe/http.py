"""HTTP serving: the one module that sets up aiohttp's server, for the agent's and the aggregator's endpoints.

    async with serving(app, config.http.listen, access_log=log) as bound:   # ConfigError if it cannot listen
        ...                                                                 # bound: the address and port in use
    await serve(app, config.http.listen)                                    # the same, until cancelled

Listening failures become ConfigError naming the `[http] listen` address (a port in use is an operator's fix, exit
2). Leaving the block (or cancelling `serve`) stops listening, lets requests in flight finish for up to
`shutdown_timeout` seconds, then cancels them. The access log is off unless a logger is given; then it is one line
per request, outside text (the path) escaped. Importing this module imports aiohttp: only the commands that serve
HTTP import it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import ip_address
from typing import NoReturn

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from probe.addresses import Endpoint
from probe.errors import ConfigError
from probe.term import clean

SHUTDOWN_TIMEOUT = 5.0  # seconds requests in flight get to finish when the server stops
_PATH_SHOWN = 200

_WHY = {
    errno.EADDRINUSE: "the address is already in use (another process listens there)",
    errno.EADDRNOTAVAIL: "that address is not one of this host's",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


class _OneLine(AbstractAccessLogger):
    """One log line per request: method, path (escaped, cut), status, bytes, milliseconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "http %s %s %d %d bytes %.1f ms",
            clean(request.method[:16]),
            clean(request.raw_path[:_PATH_SHOWN]),
            response.status,
            response.body_length,
            time * 1000,
        )


def first_line(text: str) -> str:
    return text.strip().partition("\n")[0].strip()


class _ClientFaults(logging.Filter):
    """aiohttp logs a request it could not parse (a port scanner, TLS spoken to plain HTTP) at ERROR with a traceback:
    the client's fault, made one line at INFO, the parser's words escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and (error.code or 400) < 500:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "bad request from %s: %s", (peer, clean(first_line(error.message)[:200]))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


server_log = logging.getLogger("wgprobe.http")  # aiohttp's own messages about connections and unparsable requests
server_log.addFilter(_ClientFaults())


def listen_error(listen: Endpoint, error: OSError, what: str = "[http] listen") -> ConfigError:
    why = _WHY.get(error.errno or 0) or clean(error.strerror or error)
    return ConfigError(f"{what} {listen}: cannot listen: {why}")


@asynccontextmanager
async def serving(
    app: web.Application,
    listen: Endpoint,
    *,
    access_log: logging.Logger | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    what: str = "[http] listen",
) -> AsyncIterator[Endpoint]:
    """Serve `app` on `listen` (port 0: a free port) inside the block; yields the address and port bound."""
    runner = web.AppRunner(
        app,
        handle_signals=False,  # signals belong to the process's task tree, not to the HTTP server
        access_log=access_log,
        access_log_class=_OneLine,
        logger=server_log,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, str(listen.host), listen.port)
        try:
            await site.start()
        except OSError as e:
            raise listen_error(listen, e, what) from None
        host, port = runner.addresses[0][:2]
        yield Endpoint(ip_address(host), int(port))
    finally:
        await runner.cleanup()


async def serve(
    app: web.Application,
    listen: Endpoint,
    *,
    ready: Callable[[Endpoint], None] | None = None,
    access_log: logging.Logger | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> NoReturn:
    """Serve until cancelled (a task in the service's TaskGroup); `ready` is told the address once listening."""
    async with serving(app, listen, access_log=access_log, shutdown_timeout=shutdown_timeout) as bound:
        if ready is not None:
            ready(bound)
        await asyncio.Future()  # never done: ends by cancellation, which runs the graceful shutdown above
    raise AssertionError("unreachable")
