"""The control channel of a running `probe sim up`: a UNIX socket in the fleet directory (mode 0600, in a directory
of mode 0700), one JSON object per line each way. `probe sim break/heal/status` are its clients.

    {"op": "break", "relay": "se-got-wg-002", "fault": "loss:20"}  -> {"ok": true, "relay": ..., "faults": [...]}
    {"op": "heal", "relay": "se-got-wg-002", "kind": "loss"}        (no "kind": every fault)
    {"op": "status"} or {"op": "status", "relay": NAME}             -> the fleet's (or the relay's) status
    {"op": "outside", "up": false}                                  -> the outside hosts down for everyone
    anything wrong                                                  -> {"ok": false, "error": "..."}

The server runs on the fleet's event loop and waits in the kernel like every other socket: nothing polls. A socket
path longer than a UNIX socket address allows (108 bytes, easily reached under pytest's tmp dirs) is reached through
/proc/self/fd/N/ of the directory, opened for the bind or connect only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from probe.errors import ConfigError, WgProbeError
from probe.sim.faults import SimFault, parse_kind
from probe.sim.fleet import SimFleet
from probe.sim.relay import SimRelay

CONTROL_SOCKET = "sim.sock"
MAX_LINE = 64 * 1024
MAX_RESPONSE = 16 * 1024 * 1024
_SUN_PATH_MAX = 100  # of the 108 bytes sun_path holds, with room to spare


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for bind/connect that reaches `path` whatever its length."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


Response = tuple[dict[str, Any], str | None]  # (the answer, a line to log when the fleet changed)


def handle(fleet: SimFleet, line: bytes) -> Response:
    """The response to one request line, and a line to log when it changed the fleet."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ConfigError("a request is a JSON object")
        op = request.get("op")
        action = _OPS.get(op) if isinstance(op, str) else None
        if action is None:
            raise ConfigError(f"op must be one of {', '.join(_OPS)}")
        return action(fleet, request)
    except ValueError:
        return {"ok": False, "error": "not a JSON request"}, None
    except WgProbeError as exc:  # bad names and kinds (ConfigError), a port that cannot be reopened (SimError)
        return {"ok": False, "error": str(exc)}, None
    except OSError as exc:
        return {"ok": False, "error": f"cannot change the relay's sockets: {exc.strerror or exc}"}, None


def _relay_name(request: dict[str, Any], *, required: bool) -> str | None:
    name = request.get("relay")
    if name is None and required:
        raise ConfigError(f"{request.get('op')} needs a relay")
    if name is not None and not isinstance(name, str):
        raise ConfigError("relay must be a string")
    return name


def _status(fleet: SimFleet, request: dict[str, Any]) -> Response:
    return {"ok": True, **fleet.status(_relay_name(request, required=False))}, None


def _break(fleet: SimFleet, request: dict[str, Any]) -> Response:
    name = _relay_name(request, required=True)
    fault = request.get("fault")
    if not isinstance(fault, str):
        raise ConfigError("break needs a fault, as nat or loss:20")
    return _changed(fleet.break_relay(name or "", SimFault.parse(fault)))


def _heal(fleet: SimFleet, request: dict[str, Any]) -> Response:
    name = _relay_name(request, required=True)
    kind = request.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ConfigError("kind must be a string")
    return _changed(fleet.heal_relay(name or "", parse_kind(kind) if kind else None))


def _outside(fleet: SimFleet, request: dict[str, Any]) -> Response:
    up = request.get("up")
    if not isinstance(up, bool):
        raise ConfigError("outside needs up: true or false")
    fleet.set_outside(up)
    state = "up" if up else "down"
    return {"ok": True, "outside": state}, f"outside hosts (forward target, reflector): {state}"


def _changed(relay: SimRelay) -> Response:
    faults = relay.faults.names()
    change = f"{relay.name}: faults now {', '.join(faults) or 'none'}"
    return {"ok": True, "relay": relay.name, "faults": faults}, change


_OPS: dict[str, Callable[[SimFleet, dict[str, Any]], Response]] = {
    "status": _status,
    "break": _break,
    "heal": _heal,
    "outside": _outside,
}


class ControlServer:
    def __init__(self, fleet: SimFleet, directory: Path, log: Callable[[str], None] | None = None) -> None:
        self.fleet = fleet
        self.path = directory / CONTROL_SOCKET
        self.log = log
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created by bind: mode 0600 from the start
        try:
            with unix_address(self.path) as address:
                sock.bind(address)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot create the control socket {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                response, change = handle(self.fleet, line)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
                if change and self.log:
                    self.log(change)
        except (ValueError, ConnectionError):  # a line over the limit, or the client went away
            pass
        finally:
            writer.close()


def running(directory: Path) -> bool:
    """Whether a simulated fleet answers on the directory's control socket (a stale socket file is not one)."""
    try:
        request(directory, {"op": "status"}, timeout=2.0)
    except ConfigError:
        return False
    return True


def request(directory: Path, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the fleet running in `directory`; its error, if any, as a ConfigError."""
    path = directory / CONTROL_SOCKET
    not_running = f"no simulated fleet is running in {directory}; start one with: probe sim up --dir {directory}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with unix_address(path) as address:
                sock.connect(address)
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_RESPONSE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (FileNotFoundError, ConnectionRefusedError):
            raise ConfigError(not_running) from None
        except OSError as exc:
            raise ConfigError(f"control socket {path}: {exc.strerror or exc}") from None
    try:
        response = json.loads(data)
    except ValueError:
        raise ConfigError(f"the simulated fleet in {directory} sent no valid answer") from None
    if not isinstance(response, dict):
        raise ConfigError(f"the simulated fleet in {directory} sent no valid answer")
    if not response.get("ok"):
        raise ConfigError(str(response.get("error", "request refused")))
    return response
