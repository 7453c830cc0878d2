"""Drive the official asyncio NoLag SDK from JSON lines: commands on stdin, events on stdout.

Run only by the official SDK's own virtualenv (``python -I official_driver.py``): that
``nolag`` is the package from the index, not this repository's. Protocol, one JSON
object per line:

- in:  ``{"id": 1, "cmd": "connect", "args": {"token": ..., "url": ..., "options": {...}}}``
- out: ``{"id": 1, "ok": true, "result": ...}`` or ``{"id": 1, "ok": false, "error": "..."}``
- out: events without ``id``: ``{"event": "presence:join", "actor": {...}}``, the SDK's
  lifecycle events, and ``{"event": "frame", "dir": "sent" | "recv", ...}`` for every
  WebSocket message (taken from the real socket, heartbeats included).

Every command is bounded by its ``timeout`` (default 10 s); end of stdin ends the driver.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any, Callable, Optional

import msgpack
import websockets

import nolag
from nolag import NoLag, NoLagOptions

EVENTS = ("connect", "disconnect", "reconnect", "error")
PRESENCE_EVENTS = ("presence:join", "presence:update", "presence:leave")
_out_lock = threading.Lock()


def emit(message: dict[str, Any]) -> None:
    """Write one JSON line to stdout."""
    line = json.dumps(message, default=repr, sort_keys=True)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def frame_event(direction: str, data: Any) -> dict[str, Any]:
    """Describe one WebSocket message: heartbeat, decoded MessagePack, or text."""
    event: dict[str, Any] = {"event": "frame", "dir": direction, "t": time.monotonic()}
    if isinstance(data, str):
        event["text"] = data
    elif not data:
        event["heartbeat"] = True
    else:
        try:
            event["frame"] = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            event["undecodable"] = repr(exc)
    return event


class TappedConnection:
    """The SDK's real websockets connection, reporting every message it sends or reads."""

    def __init__(self, ws: Any) -> None:
        """Wrap an open connection."""
        self._ws = ws

    async def send(self, data: Any) -> None:
        """Report, then send."""
        emit(frame_event("sent", data))
        await self._ws.send(data)

    def __aiter__(self) -> Any:
        """Iterate the messages as the SDK's receive loop does."""
        return self._messages()

    async def _messages(self) -> Any:
        """Yield each received message after reporting it; report the end of the socket."""
        try:
            async for message in self._ws:
                emit(frame_event("recv", message))
                yield message
        finally:
            emit({"event": "closed", "code": self._ws.close_code, "t": time.monotonic()})

    async def close(self, *args: Any, **kwargs: Any) -> None:
        """Close the socket."""
        await self._ws.close(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """Everything else is the real connection's."""
        return getattr(self._ws, name)


_connections: list[TappedConnection] = []
_real_connect = websockets.connect


async def _tapped_connect(*args: Any, **kwargs: Any) -> TappedConnection:
    """``websockets.connect`` as the SDK calls it, returning a tapped connection."""
    conn = TappedConnection(await _real_connect(*args, **kwargs))
    _connections.append(conn)
    return conn


websockets.connect = _tapped_connect  # the SDK looks it up on the module at each connect


def actor_json(actor: Any) -> dict[str, Any]:
    """An official ActorPresence as plain JSON."""
    actor_type = getattr(actor, "actor_type", None)
    return {
        "actor_token_id": actor.actor_token_id,
        "actor_type": getattr(actor_type, "value", actor_type),
        "presence": actor.presence,
        "joined_at": actor.joined_at,
    }


def presence_handler(name: str) -> Callable[[Any], None]:
    """A callback reporting one presence event of the SDK."""
    return lambda actor: emit({"event": name, "actor": actor_json(actor)})


def error_json(error: Any) -> dict[str, Any]:
    """An error event's exception as plain JSON (server errors keep name and code)."""
    return {
        "message": str(error),
        "type": type(error).__name__,
        "error": getattr(error, "error", None),
        "code": getattr(error, "code", None),
    }


class Driver:
    """One official client and the commands that steer it."""

    def __init__(self) -> None:
        """No client until ``connect``."""
        self.client: Optional[NoLag] = None

    def _listen(self, client: NoLag) -> None:
        """Forward the SDK's events to stdout."""
        for name in PRESENCE_EVENTS:
            client.on(name, presence_handler(name))
        client.on("connect", lambda *a: emit({"event": "connect"}))
        client.on("reconnect", lambda *a: emit({"event": "reconnect"}))
        client.on("disconnect", lambda *a: emit({"event": "disconnect", "reason": list(a)}))
        client.on("error", lambda e=None: emit({"event": "error", "error": error_json(e)}))

    def _need(self) -> NoLag:
        """The connected-or-once-connected client."""
        if self.client is None:
            raise RuntimeError("no client: send connect first")
        return self.client

    async def connect(self, token: str, url: str, options: Optional[dict[str, Any]] = None) -> Any:
        """Create the client with ``options`` (NoLagOptions fields) and connect."""
        client = NoLag(token, NoLagOptions(url=url, **(options or {})))
        self._listen(client)
        self.client = client
        await client.connect()
        return {
            "actor_id": client.actor_id,
            "project_id": client.project_id,
            "actor_type": getattr(client.actor_type, "value", client.actor_type),
            "protocol_version": client.protocol_version,
            "status": client.status.value,
        }

    async def set_presence(self, data: dict[str, Any], room: Optional[str] = None) -> Any:
        """``set_presence``, room scoped when ``room`` is given."""
        await self._need().set_presence(data, room_id=room)
        return None

    async def clear_presence(self) -> Any:
        """``clear_presence``."""
        await self._need().clear_presence()
        return None

    async def fetch_presence(self, room: Optional[str] = None) -> Any:
        """``fetch_presence``: the raw list the server answered."""
        return await self._need().fetch_presence(room_id=room)

    async def get_all_presence(self) -> Any:
        """The SDK's local presence map."""
        return [actor_json(a) for a in self._need().get_all_presence()]

    async def status(self) -> Any:
        """The connection status."""
        client = self._need()
        return {"status": client.status.value, "connected": client.connected}

    async def disconnect(self) -> Any:
        """``disconnect``, then wait until the socket's closing handshake is over."""
        client = self._need()
        client.disconnect()
        if not _connections:
            return {"status": client.status.value, "close_code": None}
        last = _connections[-1]
        await last.wait_closed()
        return {"status": client.status.value, "close_code": last.close_code}


async def run() -> None:
    """Read commands until stdin ends or ``exit``; answer each within its timeout."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Optional[str]] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read_stdin, name="driver-stdin", daemon=True).start()
    driver = Driver()
    emit({"event": "ready", "version": nolag.__version__, "file": nolag.__file__})
    while True:
        line = await commands.get()
        if line is None:
            break
        if not line.strip():
            continue
        request = json.loads(line)
        cmd, ident = request.get("cmd"), request.get("id")
        if cmd == "exit":
            emit({"id": ident, "ok": True, "result": None})
            break
        handler = getattr(driver, str(cmd), None) if not str(cmd).startswith("_") else None
        if handler is None:
            emit({"id": ident, "ok": False, "error": f"unknown command {cmd!r}"})
            continue
        try:
            result = await asyncio.wait_for(
                handler(**request.get("args", {})), request.get("timeout", 10.0)
            )
        except asyncio.TimeoutError:
            emit({"id": ident, "ok": False, "error": "timeout", "type": "TimeoutError"})
        except Exception as exc:
            emit({"id": ident, "ok": False, "error": str(exc), "type": type(exc).__name__})
        else:
            emit({"id": ident, "ok": True, "result": result})
    if driver.client is not None and driver.client.connected:
        driver.client.disconnect()
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    asyncio.run(run())
