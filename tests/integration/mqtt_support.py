"""What the MQTT integration tests share: a recording sink around a real ResultStore, waiting without timed
assertions (generous hang-guards only), and tasks that are always cancelled and awaited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from probe.aggregator.intake import Ingested
from probe.aggregator.store import ResultStore
from probe.messages import AgentStatus

HANG_GUARD = 30.0  # seconds: only ever reached when something is broken


@dataclass
class Arrival:
    topic: str
    payload: bytes
    result_id: str | None


@dataclass
class Recorder:
    """A MessageSink that records every message in arrival order and hands it on to a real store."""

    store: ResultStore
    results: list[Arrival] = field(default_factory=list)
    statuses: list[tuple[str, bytes]] = field(default_factory=list)

    def ingest_result(self, payload: bytes | bytearray, topic: str) -> Ingested:
        try:
            result_id = json.loads(payload).get("result_id")
        except (ValueError, AttributeError):
            result_id = None
        self.results.append(Arrival(topic, bytes(payload), result_id))
        return self.store.ingest_result(payload, topic)

    def ingest_status(self, payload: bytes | bytearray, topic: str, *, live: bool = True) -> Ingested:
        self.statuses.append((topic, bytes(payload)))
        return self.store.ingest_status(payload, topic, live=live)

    def broker_connection(self, up: bool) -> int:
        return self.store.broker_connection(up)

    def result_ids(self) -> list[str]:
        return [a.result_id for a in self.results if a.result_id is not None]

    def first_arrivals(self) -> list[str]:
        seen: dict[str, None] = {}
        for result_id in self.result_ids():
            seen.setdefault(result_id, None)
        return list(seen)

    def duplicates(self) -> int:
        ids = self.result_ids()
        return len(ids) - len(set(ids))

    def last_status(self, agent: str) -> AgentStatus | None:
        for topic, payload in reversed(self.statuses):
            if topic.endswith(f"/{agent}/status"):
                return AgentStatus.model_validate_json(payload)
        return None


async def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = HANG_GUARD) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does (a hang-guard, not a timing claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened within {timeout:g} s: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """`work` as a task for the block's duration; cancelled and awaited at the end, its errors raised."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class LogLines:
    """A `log(level, event, **fields)` callable that keeps what it was given."""

    lines: list[tuple[int, str, dict[str, object]]] = field(default_factory=list)

    def __call__(self, level: int, event: str, **fields: object) -> None:
        self.lines.append((level, event, fields))

    def events(self, event: str) -> list[dict[str, object]]:
        return [fields for _, name, fields in self.lines if name == event]

    def errors(self) -> list[str]:
        return [name for level, name, _ in self.lines if level >= logging.ERROR]


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of the broker, to break a connection in ways a stopped broker cannot:
    `blackhole()` makes the current connections swallow what the client sends (publishes leave, no PUBACK comes
    back), as a half-dead link does; connections made afterwards pass normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.swallowed = 0  # bytes the black hole ate
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        for link in self._links:
            link.blackholed = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        link = _Link(self, writer, up_writer)
        self._links.append(link)
        await asyncio.gather(link.pump(reader, up_writer, upstream=True), link.pump(up_reader, writer, upstream=False))
        link.close()
        self._links.remove(link)


@dataclass
class _Link:
    proxy: Proxy
    client: asyncio.StreamWriter
    broker: asyncio.StreamWriter
    blackholed: bool = False

    async def pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, upstream: bool) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if upstream and self.blackholed:
                    self.proxy.swallowed += len(data)
                    continue
                sink.write(data)
                await sink.drain()
        self.close()

    def close(self) -> None:
        for writer in (self.client, self.broker):
            if not writer.is_closing():
                writer.close()
